"""What the server serves: the configured base models and every trained job with a complete
checkpoint, what ``latest`` and ``guard`` are, and which full fine-tunes may want an engine of their own.

The registry is scanned in a thread of its own once a second; requests read the last scan and
never touch the shared filesystem on the server's event loop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.pool import FullFinetune
from ..errors import UnknownModelError
from ..registry.jobs import JobRegistry

log = logging.getLogger(__name__)

LATEST = "latest"
GUARD = "guard"
_SCAN_S = 1.0


@dataclass(frozen=True)
class _Scan:
    trained: dict[str, tuple[float, str]] = field(default_factory=dict)  # job id -> (newest checkpoint's time, kind)
    full: list[FullFinetune] = field(default_factory=list)
    latest: str | None = None
    guard: str | None = None


class ModelCatalogue:
    def __init__(self, base_models: list[str], registry: JobRegistry):
        self.base_models = base_models
        self.registry = registry
        self._bases: dict[str, str | None] = {}  # job id -> base model of a full fine-tune, None for LoRA
        self._scan = self._scan_jobs()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._rescan, name="scalarlm-catalogue", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def trained_models(self) -> dict[str, tuple[float, str]]:
        """Jobs with a complete checkpoint: job id -> (time of the newest, kind)."""
        return self._scan.trained

    def latest(self) -> str | None:
        """What ``latest`` is now (``JobRegistry.latest_of``)."""
        return self._scan.latest

    def aliases(self) -> dict[str, str]:
        """``latest`` (the newest trained model) and ``guard`` (the newest trained guard), where there is one."""
        return {name: job for name, job in ((LATEST, self._scan.latest), (GUARD, self._scan.guard)) if job}

    def full_finetunes(self) -> list[FullFinetune]:
        """Full fine-tunes that have a checkpoint to serve or are queued or training: the candidates
        for an engine of their own (see ``engine.pool``)."""
        return self._scan.full

    def served_models(self) -> list[str]:
        return [*self.base_models, *self._scan.trained]

    def resolve(self, model: str, provider_id: str = "scalarlm", field: str = "model") -> str:
        """The engine's name for ``model`` (which may carry the stack's ``provider_id/`` prefix);
        ``latest`` and ``guard`` are the most recently trained model and guard (:meth:`aliases`).
        ``field``: where the request named it (the 404 says so)."""
        name = model.removeprefix(f"{provider_id}/")
        if name in (LATEST, GUARD):
            if (job := self.aliases().get(name)) is None:
                raise UnknownModelError(model, field)
            return job
        if name not in self.base_models and name not in self._scan.trained:
            raise UnknownModelError(model, field)
        return name

    def refresh(self) -> None:
        """Scan now (a caller that just changed the registry and must see it at once)."""
        self._scan = self._scan_jobs()

    def _rescan(self) -> None:
        while not self._stop.wait(_SCAN_S):
            try:
                self.refresh()
            except Exception:
                log.exception("scanning the job registry failed")

    def _scan_jobs(self) -> _Scan:
        scan = _Scan()
        for job_id in self.registry.job_ids():
            base = self._base_of_full(job_id)
            # A full fine-tune's status is read anyway, and it lists the checkpoints: one scan per job.
            status = None if base is None else self.registry.status(job_id)
            checkpoints = self.registry.checkpoints(job_id) if status is None else status.checkpoints
            if checkpoints:
                try:
                    scan.trained[job_id] = (Path(checkpoints[-1].path).stat().st_mtime, checkpoints[-1].kind)
                except FileNotFoundError:  # pruned by the trainer just now: the next scan sees the newer one
                    continue
            if status is None:
                continue
            training = status.state in ("QUEUED", "TRAINING")
            if training or checkpoints:
                scan.full.append(FullFinetune(job_id, base, status.created, status.updated, training, bool(checkpoints)))
        newest = {job_id: t for job_id, (t, _) in scan.trained.items()}
        return _Scan(scan.trained, scan.full, self.registry.latest_of(newest), self.registry.latest_of(newest, GUARD))

    def _base_of_full(self, job_id: str) -> str | None:
        if job_id not in self._bases:
            job = self.registry.job(job_id)
            self._bases[job_id] = job.base_model if job.kind == "full" else None
        return self._bases[job_id]
