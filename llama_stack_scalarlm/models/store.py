"""Where models live and whether they are complete. No torch here: the server lists models with it."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..paths import safe_join

READY_MARK = ".scalarlm-ready"


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
