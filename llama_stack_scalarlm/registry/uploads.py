"""Content-addressed uploads: chunked, resumable, hashed while streaming, stored once per content.

``blobs/<sha256>`` holds finished uploads; ``partial/<upload_id>`` grows chunk by chunk. A client
that knows its file's sha256 asks first, and when the bytes are already here it sends nothing.
An upload no byte has reached for ``ttl_s`` is abandoned: it is removed when the next one begins,
and its client, if it ever comes back, starts again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

from llama_stack_api import ConflictError
from pydantic import BaseModel, Field

from ..errors import InvalidFieldError
from ..paths import safe_join
from .files import fsync_path, read_model, write_atomic, write_model

_SHA256 = re.compile(r"[0-9a-f]{64}")  # fullmatch: "$" would accept a trailing newline
_BLOCK = 8 << 20  # bytes hashed and written per hand-off to a thread


class UploadConflictError(ConflictError):
    """An append at the wrong offset (409): the client resumes from where the upload stands."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


class UploadSession(BaseModel):
    upload_id: str
    size: int = Field(..., ge=1)
    offset: int = 0
    sha256: str | None = Field(None, description="set once the content is stored")
    expected_sha256: str | None = None
    complete: bool = False
    storing: bool = Field(False, description="a PUT is still storing bytes (one cut off, too): the offset "
                                             "moves until it is done; resume after")


class UploadStore:
    def __init__(self, root: Path, max_bytes: int, ttl_s: float = 7 * 24 * 3600):
        self.root = root
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._hashers: dict[str, hashlib._Hash] = {}
        self._appending: dict[str, asyncio.Lock] = {}  # one append at a time per upload

    def blob(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256 or ""):
            raise InvalidFieldError("sha256", f"{sha256!r} is not a lowercase hex sha256")
        return safe_join(self.root / "blobs", sha256, field="sha256")

    def has(self, sha256: str) -> bool:
        return self.blob(sha256).exists()

    def begin(self, size: int, sha256: str | None = None) -> UploadSession:
        if size > self.max_bytes:
            raise InvalidFieldError("size", f"{size} bytes is more than the upload limit of {self.max_bytes}")
        self._expire_abandoned()
        if sha256 is not None and self.has(sha256):
            return UploadSession(upload_id="", size=size, offset=size, sha256=sha256, complete=True)
        if sha256 is not None and (broken := self._partial_for(sha256, size)) is not None:
            return broken  # the same content was cut off earlier: resume where it stands
        session = UploadSession(upload_id=secrets.token_hex(12), size=size, expected_sha256=sha256)
        (self.root / "partial").mkdir(parents=True, exist_ok=True)
        self._partial(session.upload_id).touch()
        write_model(self._meta(session.upload_id), session)
        self._hashers[session.upload_id] = hashlib.sha256()
        return session

    def session(self, upload_id: str) -> UploadSession:
        """The upload as it stands; its offset is the bytes on disk (so a PUT cut off midway resumes
        exactly where its bytes end, and the metadata is written once, at ``begin``). A finished
        upload's record is kept (until ``ttl_s``), so a retried finish or status gets its sha256."""
        path = self._meta(upload_id)
        if not path.exists():
            raise KeyError(upload_id)
        session = read_model(path, UploadSession)
        if session.complete:
            return session
        session.offset = self._partial(upload_id).stat().st_size
        session.storing = upload_id in self._appending and self._appending[upload_id].locked()
        return session

    async def append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes]) -> UploadSession:
        """Append bytes at ``offset`` (which must be where the upload stands: resume from there).
        Each block of a few MiB is written by one thread and hashed by another while the next block
        arrives; a block is on disk and in the hash before the next one starts, so the two agree, and
        a block whose write fails midway (a full disk) is taken back from both.
        A second append to the same upload waits for the first (a client retrying while its cut-off
        PUT is still being stored) and then needs the offset that one left."""
        async with self._appending.setdefault(upload_id, asyncio.Lock()):
            return await self._append(upload_id, offset, chunks)

    async def _append(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes]) -> UploadSession:
        session = self.session(upload_id)
        if session.complete:
            raise UploadConflictError(f"upload_id: finished already, stored as sha256 {session.sha256}")
        if offset != session.offset:
            raise UploadConflictError(f"offset: {offset} given, the upload stands at {session.offset}")
        path = self._partial(upload_id)
        hasher = self._hasher(session)
        agreed = (session.offset, hasher.copy())  # where the bytes on disk and the hash last agreed
        try:
            with open(path, "ab") as handle:
                def write(parts: list[bytes]) -> None:
                    for part in parts:
                        handle.write(part)
                    handle.flush()

                def update(parts: list[bytes]) -> None:
                    for part in parts:
                        hasher.update(part)

                storing: asyncio.Future | None = None  # the block in the threads; one at a time keeps them in order
                pending: list[bytes] = []
                buffered = 0

                async def settle() -> None:
                    nonlocal agreed
                    if storing is not None:
                        await storing
                        agreed = (session.offset, hasher.copy())

                async def hand_off() -> None:
                    nonlocal storing, pending, buffered
                    await settle()
                    block, pending, session.offset, buffered = pending, [], session.offset + buffered, 0
                    storing = asyncio.gather(asyncio.to_thread(write, block), asyncio.to_thread(update, block))

                try:
                    async for chunk in chunks:
                        if session.offset + buffered + len(chunk) > session.size:
                            raise InvalidFieldError("size", f"more bytes than the declared {session.size}")
                        pending.append(chunk)
                        buffered += len(chunk)
                        if buffered >= _BLOCK:
                            await hand_off()
                finally:  # also when the client went away midway: every byte received lands, in order
                    if pending:
                        await hand_off()
                    await settle()
        except BaseException:
            # A block that failed midway (a full disk) is partly on disk and wholly in the hash: go
            # back to where the two agreed, so a resume from the bytes on disk stores what was sent.
            os.truncate(path, agreed[0])
            self._hashers[upload_id] = agreed[1]
            raise
        return session

    async def finish(self, upload_id: str) -> UploadSession:
        """Store the upload as ``blobs/<sha256>``. It waits for an append still storing bytes, so it
        never hashes or moves a file that is still growing; the hashing (after a restart) and the
        fsyncs run in a thread, off the event loop, since they take seconds for a large file."""
        async with self._appending.setdefault(upload_id, asyncio.Lock()):
            session = self.session(upload_id)
            if session.complete:  # a retry that waited for the finish that stored it
                return session
            if session.offset != session.size:
                raise InvalidFieldError("size", f"{session.offset} of {session.size} bytes received")
            digest = (await asyncio.to_thread(self._hasher, session)).hexdigest()
            if session.expected_sha256 and digest != session.expected_sha256:
                raise InvalidFieldError("sha256", f"content hashes to {digest}, not {session.expected_sha256}")
            await asyncio.to_thread(self._store, self._partial(upload_id), self.blob(digest))
            done = session.model_copy(update={"sha256": digest, "complete": True, "storing": False})
            write_model(self._meta(upload_id), done)
            self._hashers.pop(upload_id, None)
            self._appending.pop(upload_id, None)
        return done

    @staticmethod
    def _store(partial: Path, blob: Path) -> None:
        """Move finished bytes to their blob; a blob's name promises its content, even after a crash."""
        blob.parent.mkdir(parents=True, exist_ok=True)
        if blob.exists():
            partial.unlink()
            return
        fsync_path(partial)
        os.replace(partial, blob)
        fsync_path(blob.parent)

    def put_bytes(self, data: bytes) -> str:
        """Store small content (e.g. rows read from a Llama Stack dataset) directly; returns its sha256.
        The content is synced before it gets its name and the name after, as ``finish`` does."""
        digest = hashlib.sha256(data).hexdigest()
        blob = self.blob(digest)
        if not blob.exists():
            write_atomic(blob, data)
            fsync_path(blob.parent)
        return digest

    def _expire_abandoned(self) -> None:
        cutoff = time.time() - self.ttl_s
        for meta in (self.root / "partial").glob("*.json"):
            upload_id = meta.stem
            if (lock := self._appending.get(upload_id)) is not None and lock.locked():
                continue
            partial = self._partial(upload_id)  # gone once finished: the record alone is left
            try:
                if max(meta.stat().st_mtime, partial.stat().st_mtime if partial.exists() else 0) > cutoff:
                    continue
            except FileNotFoundError:  # removed meanwhile
                continue
            self._partial(upload_id).unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            self._hashers.pop(upload_id, None)
            self._appending.pop(upload_id, None)

    def _partial_for(self, sha256: str, size: int) -> UploadSession | None:
        for meta in (self.root / "partial").glob("*.json"):
            session = read_model(meta, UploadSession)
            if not session.complete and session.expected_sha256 == sha256 and session.size == size:
                return self.session(session.upload_id)
        return None

    def _hasher(self, session: UploadSession) -> hashlib._Hash:
        """The running hash; after a server restart, rebuilt from the bytes already received."""
        if session.upload_id not in self._hashers:
            hasher = hashlib.sha256()
            with open(self._partial(session.upload_id), "rb") as handle:
                while block := handle.read(1 << 20):
                    hasher.update(block)
            self._hashers[session.upload_id] = hasher
        return self._hashers[session.upload_id]

    def _partial(self, upload_id: str) -> Path:
        return safe_join(self.root / "partial", upload_id, field="upload_id")

    def _meta(self, upload_id: str) -> Path:
        return safe_join(self.root / "partial", f"{upload_id}.json", field="upload_id")

