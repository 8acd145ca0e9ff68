"""Where models live, whether they are complete, and what their bytes are. No torch here: the server
lists and hashes models with it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from ..paths import safe_join
from ..registry.files import read_model, write_model

READY_MARK = ".scalarlm-ready"
_HASHES = ".scalarlm-sha256.json"


class _FileHash(BaseModel):
    size: int
    mtime_ns: int
    sha256: str


class _HashCache(BaseModel):
    files: dict[str, _FileHash] = {}


class ModelStore:
    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        return safe_join(self.root, name, field="model")

    def is_ready(self, name: str) -> bool:
        return (self.path(name) / READY_MARK).exists()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / READY_MARK).exists())

    def content_hash(self, name: str) -> str:
        """sha256 over every file of the model (weights, config, tokenizer, ...; not our dotfiles), by
        relative path. Each file's hash is cached in the model directory under its size and mtime, so
        a large model is read once, and a file rewritten later is read again."""
        root = self.path(name)
        cache_path = root / _HASHES
        try:
            cached = read_model(cache_path, _HashCache).files
        except (OSError, ValueError):
            cached = {}
        files = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            stat = path.stat()
            known = cached.get(relative)
            if known is None or (known.size, known.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                known = _FileHash(size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=_sha256(path))
            files[relative] = known
        if files != cached:
            try:
                write_model(cache_path, _HashCache(files=files))
            except OSError:  # a read-only store: hashed again next time
                pass
        digest = hashlib.sha256()
        for relative, known in files.items():
            digest.update(f"{relative}\0{known.sha256}\n".encode())
        return digest.hexdigest()

    def build(self, name: str, builder: Callable[[Path], None]) -> Path:
        """Run ``builder(tmpdir)`` once across processes and publish its output atomically as ``name``."""
        target = self.path(name)
        with self._lock(name):
            if self.is_ready(name):
                return target
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
            try:
                builder(staging)
                (staging / READY_MARK).touch()
                if target.exists():
                    shutil.rmtree(target)
                os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()
