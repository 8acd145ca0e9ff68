"""Durable request store: one SQLite file in WAL mode, owned by the server process.

Every method is one short transaction, so a request is on disk before its id is returned, a
lease is on disk before the worker sees it, and a result before the worker's post is answered.
Queued rows live only on disk (memory does not grow with the queue); the partial indexes keep
leasing O(batch) however deep the queue is.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .schema import GenerationRequest, GenerationResult, QueueStats, RequestStatus, WorkItem

QUEUED, LEASED, DONE = 0, 1, 2
_STATE_NAMES = {QUEUED: "queued", LEASED: "leased", DONE: "done"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    payload TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    created REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS queued_by_model ON requests(model, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS leased_by_worker ON requests(worker, lease_expires) WHERE state = 1;
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
_SQL_VARS = 900  # stay under SQLite's bound on host parameters per statement


class RequestStore:
    def __init__(self, path: Path, fsync: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute("PRAGMA cache_size=-8192")  # 8 MiB page cache, whatever the queue depth
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Store requests durably; returns their ids in order."""
        now = time.time()
        rows = [(r.model, r.model_dump_json(exclude_defaults=True), now) for r in requests]
        with self._lock, self._transaction():
            # One writer inside BEGIN IMMEDIATE: AUTOINCREMENT ids of this batch are consecutive.
            self._db.executemany("INSERT INTO requests (model, payload, created) VALUES (?, ?, ?)", rows)
            last = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'requests'").fetchone()[0]
        first = last - len(rows) + 1
        return list(range(first, first + len(rows)))

    def lease(self, worker: str, models: Sequence[str], capacity: int, lease_s: float) -> list[WorkItem]:
        """Hand up to ``capacity`` queued requests for ``models`` to ``worker``, oldest first."""
        if capacity <= 0 or not models:
            return []
        now = time.time()
        marks = ",".join("?" * len(models))
        with self._lock, self._transaction():
            rows = self._db.execute(
                f"UPDATE requests SET state = 1, worker = ?, lease_expires = ?, attempts = attempts + 1 "
                f"WHERE id IN (SELECT id FROM requests WHERE state = 0 AND model IN ({marks}) "
                f"ORDER BY id LIMIT ?) RETURNING id, payload",
                (worker, now + lease_s, *models, capacity),
            ).fetchall()
        rows.sort()
        return [WorkItem(id=i, request=GenerationRequest.model_validate_json(p)) for i, p in rows]

    def renew(self, worker: str, lease_s: float) -> int:
        """Extend every lease ``worker`` holds; returns how many it holds."""
        with self._lock:
            return self._db.execute(
                "UPDATE requests SET lease_expires = ? WHERE state = 1 AND worker = ?", (time.time() + lease_s, worker)
            ).rowcount

    def release_expired(self) -> int:
        """Return to the queue every lease whose worker stopped renewing it (crashed, killed, lost)."""
        with self._lock:
            return self._db.execute(
                "UPDATE requests SET state = 0, worker = NULL, lease_expires = NULL "
                "WHERE state = 1 AND lease_expires < ?",
                (time.time(),),
            ).rowcount

    def release_worker(self, worker: str) -> int:
        """Return a worker's leases at once, when it is known to be gone."""
        with self._lock:
            return self._db.execute(
                "UPDATE requests SET state = 0, worker = NULL, lease_expires = NULL WHERE state = 1 AND worker = ?",
                (worker,),
            ).rowcount

    def active_models(self) -> set[str]:
        """Models with requests queued or running: engines in use, or wanted."""
        with self._lock:
            queued = self._db.execute(_QUEUED_MODELS).fetchall()
            leased = self._db.execute("SELECT DISTINCT model FROM requests WHERE state = 1").fetchall()
        return {model for (model,) in queued + leased}

    def complete(self, results: Iterable[tuple[int, GenerationResult]]) -> list[int]:
        """Record final results; the first result for a request wins. Returns the ids recorded."""
        now = time.time()
        recorded = []
        with self._lock, self._transaction():
            for request_id, result in results:
                cur = self._db.execute(
                    "UPDATE requests SET state = 2, result = ?, finished = ?, worker = NULL, lease_expires = NULL "
                    "WHERE id = ? AND state < 2",
                    (result.model_dump_json(), now, request_id),
                )
                if cur.rowcount:
                    recorded.append(request_id)
        return recorded

    def status(self, ids: Sequence[int], consume: bool = False) -> list[RequestStatus]:
        """States and results of ``ids``, in order; ``consume`` deletes the finished ones it returns."""
        found: dict[int, tuple[int, str | None]] = {}
        with self._lock, self._transaction():
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for i, state, result in self._db.execute(
                    f"SELECT id, state, result FROM requests WHERE id IN ({marks})", chunk
                ):
                    found[i] = (state, result)
                if consume:
                    self._db.execute(f"DELETE FROM requests WHERE state = 2 AND id IN ({marks})", chunk)
        out = []
        for i in ids:
            if i not in found:
                out.append(RequestStatus(id=i, state="unknown"))
                continue
            state, result = found[i]
            out.append(
                RequestStatus(
                    id=i,
                    state=_STATE_NAMES[state],
                    result=GenerationResult.model_validate_json(result) if result else None,
                )
            )
        return out

    def purge_results(self, older_than_s: float) -> int:
        """Delete results nobody fetched within their time to live."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM requests WHERE state = 2 AND finished < ?", (time.time() - older_than_s,)
            ).rowcount

    def stats(self) -> QueueStats:
        with self._lock:
            counts = dict(self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall())
        return QueueStats(queued=counts.get(QUEUED, 0), leased=counts.get(LEASED, 0), done=counts.get(DONE, 0))

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


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _SQL_VARS):
        yield ids[start : start + _SQL_VARS]
