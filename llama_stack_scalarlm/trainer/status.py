"""The trainer's side of ``status.json``: state changes at once, progress at most every few seconds.

Writes go through :func:`registry.files.write_model` (atomic, fsynced) from rank 0. The registry
writes the same file (``slurm_job_id``, ``created``, ``log_tail``, a cancel): when the file changed
since our last write, those fields are taken over from it first, and CANCELLED stays CANCELLED.
Progress writes are throttled so that rewriting a long loss history never costs more than ~2% of
the time.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..registry.files import read_model, write_model
from ..registry.schema import CheckpointInfo, JobStatus, LossPoint

MIN_INTERVAL_S = 2.0


class StatusWriter:
    def __init__(self, path: Path, job_id: str, total_steps: int, enabled: bool):
        self.path, self.enabled = path, enabled
        self.status = JobStatus(job_id=job_id, created=time.time(), total_steps=total_steps)
        self._seen_mtime: int | None = None
        self._last_write = 0.0
        self._interval = MIN_INTERVAL_S
        self._first_step_written = False

    def _merge_registry_fields(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._seen_mtime:
            return
        try:
            disk = read_model(self.path, JobStatus)
        except (OSError, ValueError):
            return
        self.status.slurm_job_id = disk.slurm_job_id or self.status.slurm_job_id
        self.status.created = disk.created or self.status.created
        self.status.log_tail = disk.log_tail
        if disk.state == "CANCELLED":
            self.status.state = "CANCELLED"

    def write(self) -> None:
        if not self.enabled:
            return
        started = time.monotonic()
        self._merge_registry_fields()
        self.status.updated = time.time()
        write_model(self.path, self.status)
        self._seen_mtime = self.path.stat().st_mtime_ns
        self._last_write = time.monotonic()
        self._interval = max(MIN_INTERVAL_S, 50 * (self._last_write - started))

    def _set_state(self, state: str, error: str | None) -> None:
        if self.enabled:
            self._merge_registry_fields()
        if self.status.state != "CANCELLED":  # a cancel by the registry is final
            self.status.state, self.status.error = state, error  # type: ignore[assignment]

    def training(self, step: int, history: list[LossPoint], checkpoints: list[CheckpointInfo]) -> None:
        self._set_state("TRAINING", None)
        self.status.step, self.status.loss_history, self.status.checkpoints = step, history, checkpoints
        self.write()

    def progress(self, step: int, point: LossPoint) -> bool:
        """Record a step; return whether the file was written (the caller logs on the same beat)."""
        self.status.step = step
        self.status.loss_history.append(point)
        if not self.enabled or (
            self._first_step_written and time.monotonic() - self._last_write < self._interval
        ):
            return False
        self._first_step_written = True  # the first step of a run shows at once: the job is visibly alive
        self.write()
        return True

    def checkpointed(self, checkpoints: list[CheckpointInfo]) -> None:
        self.status.checkpoints = checkpoints
        self.write()

    def finished(self, state: str, error: str | None = None) -> None:
        """COMPLETED, or QUEUED with a "preempted" error (requeue me)."""
        self._set_state(state, error)
        self.write()
