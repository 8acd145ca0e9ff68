"""Durable request store: one SQLite file in WAL mode, owned by one server process.

Every method is one short transaction, so a request is on disk before its id is returned, a
lease is on disk before the worker sees it, and a result before the worker's post is answered.
Queued rows live only on disk (memory does not grow with the queue); the partial indexes keep
leasing O(batch) however deep the queue is.

Ownership: the file is opened in exclusive locking mode and stays locked for the life of the
process, so a second server on the same file fails at once with :class:`QueueOwnedError` (SQLite's
WAL is unsafe on network filesystems: the file belongs on the server's local disk; workers on
other hosts reach the queue over HTTP only). Public ids carry a random secret beside the row's
sequence number, so an id is never guessed, and never reused, even when a power loss rolls back the
newest rows (``synchronous=NORMAL``) and their sequence numbers come round again.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import TypeAdapter

from .schema import GenerationResult, QueueStats, RequestError, RequestStatus, WorkItem, WorkRequest

QUEUED, LEASED, DONE = 0, 1, 2
_STATE_NAMES = {QUEUED: "queued", LEASED: "leased", DONE: "done"}
INTERACTIVE, BULK = 0, 1  # lease priority: a caller waiting on the line before bulk work
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY,
    secret TEXT NOT NULL,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease TEXT,
    leased_at REAL,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    streamed INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    created REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS queued_by_model ON requests(model, priority, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS leased_by_worker ON requests(worker) WHERE state = 1;
CREATE INDEX IF NOT EXISTS done_by_time ON requests(finished) WHERE state = 2;
"""

# Distinct models of queued rows by skipping through the index, one probe per model: a plain
# DISTINCT would read every queued row, and the supervisor asks twice a second.
_QUEUED_MODELS = """
WITH RECURSIVE queued(model) AS (
    SELECT (SELECT MIN(model) FROM requests WHERE state = 0)
    UNION ALL
    SELECT (SELECT MIN(model) FROM requests WHERE state = 0 AND model > queued.model)
    FROM queued WHERE model IS NOT NULL
)
SELECT model FROM queued WHERE model IS NOT NULL
"""
_SQL_VARS = 900  # stay under SQLite's bound on host parameters per statement (with a few to spare)


class QueueOwnedError(RuntimeError):
    """Another process holds the queue file."""


def _public_id(seq: int, secret: str) -> str:
    return f"{seq}-{secret}"


def _parse_ids(ids: Iterable[str]) -> dict[int, str]:
    """seq -> secret for every well-formed id (a malformed one is simply unknown)."""
    parsed = {}
    for request_id in ids:
        seq, _, secret = str(request_id).partition("-")
        if seq.isdigit() and secret:
            parsed[int(seq)] = secret
    return parsed


_WORK_ITEMS = TypeAdapter(list[WorkItem])
_STATUSES = TypeAdapter(list[RequestStatus])


def _status_json(request_id: str, row: tuple[int, str | None] | None) -> str:
    """A RequestStatus as JSON (ids are digits, hex and '-': nothing to escape)."""
    if row is None:
        return f'{{"id":{json.dumps(request_id)},"state":"unknown"}}'
    state, result = row
    return f'{{"id":"{request_id}","state":"{_STATE_NAMES[state]}","result":{result or "null"}}}'


def failure(status: int, message: str) -> str:
    """A stored result for a request the server itself gives up on."""
    return GenerationResult(error=RequestError(status=status, message=message)).model_dump_json()


class RequestStore:
    def __init__(self, path: Path, fsync: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            # Exclusive before WAL: no shared-memory index, and the first write below takes a lock
            # this connection keeps until it closes.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA page_size=2048")  # a new file's: fewer bytes per dirtied page (~2%)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self._db.execute("PRAGMA cache_size=-8192")  # 8 MiB page cache, whatever the queue depth
            # Checkpoint every 40 MiB of WAL, not 4: the same hot pages are rewritten by every
            # transaction, and each checkpoint copies them once (~5% more round trips/s); the WAL
            # file is cut back to 64 MiB after a checkpoint.
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute("PRAGMA journal_size_limit=67108864")
            self._migrate()
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # a write: the lock is ours from here
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise QueueOwnedError(f"{path} is owned by another server process ({_owner(path)}): "
                                      "one server per queue file") from None
            raise
        _owner_file(path).write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")

    def _migrate(self) -> None:
        """A queue file of an older layout is set aside (kept on disk, not deleted) for a new one."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_table = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone()
        if has_table and version != SCHEMA_VERSION:
            self._db.execute("DROP INDEX IF EXISTS queued_by_model")
            self._db.execute(f"ALTER TABLE requests RENAME TO requests_v{version or 1}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- clients --------------------------------------------------------------------------------

    def enqueue(self, requests: Sequence[WorkRequest], owner: str, priority: int = BULK) -> list[str]:
        """Store requests durably; returns their ids in order."""
        now = time.time()
        random = os.urandom(12 * len(requests)).hex()  # 96 bits per id, drawn at once
        secrets_ = [random[24 * i : 24 * (i + 1)] for i in range(len(requests))]
        with self._lock, self._transaction():
            # The next sequence numbers after the newest row: queue order is insertion order. A number
            # can come round again once its row is gone, never its id: the secret is new.
            first = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()[0]
            self._db.executemany(
                "INSERT INTO requests (seq, secret, owner, model, priority, payload, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(first + i, s, owner, r.model, priority, r.model_dump_json(exclude_defaults=True), now)
                 for i, (s, r) in enumerate(zip(secrets_, requests, strict=True))],
            )
        return [f"{first + i}-{s}" for i, s in enumerate(secrets_)]

    def status(self, ids: Sequence[str], owner: str, ack: Sequence[str] = ()) -> list[RequestStatus]:
        """States and results of ``owner``'s ``ids``, in order (anyone else's are ``unknown``), after
        deleting the finished ones among ``ack`` (results the caller has received), in one transaction."""
        found = {}
        with self._lock, self._transaction():
            if ack:
                self._remove(ack, owner, finished_only=True, returning=False)
            for seq, secret, state, result in self._rows(_parse_ids(ids), owner, "state, result"):
                found[_public_id(seq, secret)] = (state, result)
        return _STATUSES.validate_json(  # one parse for the batch: stored results are spliced in as they are
            "[" + ",".join(_status_json(request_id, found.get(request_id)) for request_id in ids) + "]")

    def settled(self, ids: Sequence[str], owner: str) -> int:
        """How many of ``ids`` have a result or are unknown (a long poll's cheap look: no results read)."""
        with self._lock:
            states = [state for _, _, state in self._rows(_parse_ids(ids), owner, "state")]
        return states.count(DONE) + len(ids) - len(states)

    def remove(self, ids: Sequence[str], owner: str, finished_only: bool, returning: bool = True) -> list[str]:
        """Delete ``owner``'s requests: results acknowledged (``finished_only``), or requests cancelled
        (queued ones never run; a leased one's worker is told to stop at its next call)."""
        with self._lock, self._transaction():
            return self._remove(ids, owner, finished_only, returning)

    def _remove(self, ids: Sequence[str], owner: str, finished_only: bool, returning: bool = True) -> list[str]:
        """One DELETE per chunk: a row goes only if its sequence number, its secret and its owner all
        match (a secret is one row's alone, so matching sets is matching pairs). ``returning``: list
        what went (it costs as much as the delete itself; acknowledgements do without)."""
        removed = []
        parsed = list(_parse_ids(ids).items())
        done = " AND state = 2" if finished_only else ""
        for chunk in _chunks(parsed, _SQL_VARS // 2):
            marks = ",".join("?" * len(chunk))
            sql = f"DELETE FROM requests WHERE owner = ?{done} AND seq IN ({marks}) AND secret IN ({marks})"
            cursor = self._db.execute(sql + (" RETURNING seq, secret" if returning else ""),
                                      (owner, *(seq for seq, _ in chunk), *(sec for _, sec in chunk)))
            if returning:
                removed += cursor.fetchall()
        return [_public_id(seq, secret) for seq, secret in removed]

    def mark_streamed(self, request_id: str) -> None:
        """Text of this request reached its client: were its lease lost, it cannot restart cleanly."""
        seq, secret = next(iter(_parse_ids([request_id]).items()))
        with self._lock:
            self._db.execute("UPDATE requests SET streamed = 1 WHERE seq = ? AND secret = ?", (seq, secret))

    # -- workers --------------------------------------------------------------------------------

    def lease(self, worker: str, models: Sequence[str], capacity: int, lease_s: float) -> list[WorkItem]:
        """Hand up to ``capacity`` queued requests for ``models`` to ``worker``: interactive calls
        first, then oldest first. One index probe per model, so a deep queue costs nothing."""
        if capacity <= 0 or not models:
            return []
        now = time.time()
        lease = secrets.token_hex(8)
        with self._lock, self._transaction():
            candidates = []
            for model in dict.fromkeys(models):  # one index probe per model: a deep queue costs nothing
                candidates += self._db.execute(
                    "SELECT priority, seq, secret, payload FROM requests WHERE state = 0 AND model = ? "
                    "ORDER BY priority, seq LIMIT ?", (model, capacity),
                ).fetchall()
            chosen = sorted(candidates)[:capacity]
            for chunk in _chunks([seq for _, seq, _, _ in chosen]):  # (RETURNING would cost as much again)
                self._db.execute(
                    f"UPDATE requests SET state = 1, worker = ?, lease = ?, leased_at = ?, lease_expires = ?, "
                    f"attempts = attempts + 1 WHERE seq IN ({','.join('?' * len(chunk))})",
                    (worker, lease, now, now + lease_s, *chunk),
                )
        return _WORK_ITEMS.validate_json(  # one parse for the batch: the stored JSON is spliced in as it is
            "[" + ",".join(f'{{"id":"{seq}-{secret}","lease":"{lease}","request":{payload}}}'
                           for _, seq, secret, payload in chosen) + "]")

    def renew(self, worker: str, lease_s: float, leased_since: float | None = None) -> int:
        """Extend ``worker``'s leases (only those taken after ``leased_since``, if given: a worker whose
        engine made no progress keeps only its newest work); returns how many were extended."""
        with self._lock:
            return self._db.execute(
                "UPDATE requests SET lease_expires = ? WHERE state = 1 AND worker = ? AND leased_at > ?",
                (time.time() + lease_s, worker, leased_since or 0.0),
            ).rowcount

    def held(self, worker: str, items: Sequence[tuple[str, str]]) -> set[str]:
        """Which of the (id, lease) pairs a worker runs it still holds: the rest were cancelled or
        handed to another worker, and it should stop generating them."""
        seqs = list(_parse_ids(request_id for request_id, _ in items))
        actual = set()
        with self._lock:
            for chunk in _chunks(seqs):
                actual.update((_public_id(seq, secret), lease) for seq, secret, lease in self._db.execute(
                    f"SELECT seq, secret, lease FROM requests WHERE state = 1 AND worker = ? "
                    f"AND seq IN ({','.join('?' * len(chunk))})", (worker, *chunk)
                ))
        return {request_id for request_id, lease in items if (request_id, lease) in actual}

    def complete(self, worker: str, results: Iterable[tuple[str, str, GenerationResult]]) -> list[str]:
        """Record final results sent under the lease each request is held by now, by the worker that
        holds it; anything else (a lapsed lease, a cancelled request, another worker) is refused.
        Returns the ids recorded."""
        sent = {}  # seq -> (id, secret, lease, result)
        for request_id, lease, result in results:
            seq, _, secret = request_id.partition("-")
            if seq.isdigit():
                sent[int(seq)] = (request_id, secret, lease, result)
        now = time.time()
        recorded = []
        with self._lock, self._transaction():
            for chunk in _chunks(list(sent.items()), _SQL_VARS // 4):
                # One statement per chunk: the row is updated only where id, lease and worker all match.
                recorded += (seq for (seq,) in self._db.execute(
                    "UPDATE requests SET state = 2, result = sent.column4, finished = ?, worker = NULL, "
                    f"lease = NULL, lease_expires = NULL FROM (VALUES {','.join(['(?,?,?,?)'] * len(chunk))}) "
                    "AS sent WHERE requests.seq = sent.column1 AND requests.secret = sent.column2 "
                    "AND requests.lease = sent.column3 AND requests.state = 1 AND requests.worker = ? "
                    "RETURNING requests.seq",
                    (now, *(x for seq, (_, secret, lease, result) in chunk
                            for x in (seq, secret, lease, result.model_dump_json())), worker),
                ))
        return [sent[seq][0] for seq in recorded]

    def release_expired(self, max_attempts: int) -> list[str]:
        """Take back every lease whose worker stopped renewing it (crashed, killed, lost, hung)."""
        return self._release("lease_expires < ?", (time.time(),), max_attempts)

    def release_worker(self, worker: str, max_attempts: int) -> list[str]:
        """Take back a worker's leases at once, when it is known to be gone."""
        return self._release("worker = ?", (worker,), max_attempts)

    def _release(self, where: str, args: tuple, max_attempts: int) -> list[str]:
        """Leases taken back go to the queue again, except a request that has now been tried
        ``max_attempts`` times (it may be what kills the engine) and a stream whose client already
        has text (a new worker would start its text over): those fail with a clear error. Returns
        the ids that failed."""
        now = time.time()
        with self._lock, self._transaction():
            failed = self._db.execute(
                f"UPDATE requests SET state = 2, finished = ?, worker = NULL, lease = NULL, lease_expires = NULL, "
                f"result = CASE WHEN streamed THEN ? ELSE ? END "
                f"WHERE state = 1 AND {where} AND (streamed OR attempts >= ?) RETURNING seq, secret",
                (now, failure(503, "the engine serving this stream was lost after part of its text was sent; "
                                   "the stream cannot continue without repeating text"),
                 failure(500, f"the engine failed {max_attempts} times serving this request "
                              "(it may be what stops the engine); not retried"), *args, max_attempts),
            ).fetchall()
            self._db.execute(
                f"UPDATE requests SET state = 0, worker = NULL, lease = NULL, lease_expires = NULL "
                f"WHERE state = 1 AND {where}", args,
            )
        return [_public_id(seq, secret) for seq, secret in failed]

    # -- upkeep ---------------------------------------------------------------------------------

    def queued_models(self) -> set[str]:
        with self._lock:
            return {model for (model,) in self._db.execute(_QUEUED_MODELS)}

    def active_models(self) -> set[str]:
        """Models with requests queued or running: engines in use, or wanted."""
        with self._lock:
            leased = self._db.execute("SELECT DISTINCT model FROM requests WHERE state = 1").fetchall()
        return self.queued_models() | {model for (model,) in leased}

    def fail_queued(self, model: str, status: int, message: str, queued_before: float = math.inf) -> list[str]:
        """Fail the requests for ``model`` queued before ``queued_before`` (no engine will serve
        them); returns their ids."""
        with self._lock, self._transaction():
            rows = self._db.execute(
                "UPDATE requests SET state = 2, finished = ?, result = ? WHERE state = 0 AND model = ? AND created < ? "
                "RETURNING seq, secret", (time.time(), failure(status, message), model, queued_before),
            ).fetchall()
        return [_public_id(seq, secret) for seq, secret in rows]

    def purge_results(self, older_than_s: float) -> int:
        """Delete results nobody acknowledged within their time to live."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM requests WHERE state = 2 AND finished < ?", (time.time() - older_than_s,)
            ).rowcount

    def stats(self) -> QueueStats:
        with self._lock:
            counts = dict(self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall())
        return QueueStats(queued=counts.get(QUEUED, 0), leased=counts.get(LEASED, 0), done=counts.get(DONE, 0))

    # -- internals ------------------------------------------------------------------------------

    def _rows(self, parsed: dict[int, str], owner: str, columns: str) -> Iterable[tuple]:
        for chunk in _chunks(list(parsed)):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                f"SELECT seq, secret, {columns} FROM requests WHERE seq IN ({marks}) AND owner = ?", (*chunk, owner)
            ).fetchall():
                if parsed[row[0]] == row[1]:
                    yield row

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _owner_file(path: Path) -> Path:
    return path.with_name(path.name + ".owner")


def _owner(path: Path) -> str:
    try:
        return _owner_file(path).read_text().strip()
    except FileNotFoundError:
        return "owner unknown"


def _chunks(items: Sequence, size: int = _SQL_VARS) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
