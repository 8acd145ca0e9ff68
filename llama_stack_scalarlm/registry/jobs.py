"""Job ids and job directories on the shared filesystem.

A job's id is the hash of what determines its trained weights: the dataset's bytes (by their
sha256), the trainer code version, the base model (its name, which is what serves the result, and
its bytes), the hyperparameters other than the run settings (``schema.RUN_SETTINGS``) and, for a
job trained from another, the parent's id.
Submitting the same job twice finds the same directory and trains once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..paths import safe_join
from .checkpoints import checkpoint_infos
from .files import read_model, write_atomic, write_model
from .schema import CheckpointInfo, Hyperparameters, JobStatus, Promotion, TrainingJob

JOB_PREFIX = "job-"
_LOCK = ".launch.lock"
_LAUNCHING = ".launching"


def job_id_for(dataset_sha256: str, trainer_version: str, base_model: str, base_model_sha256: str,
               hyperparameters: Hyperparameters, parent_job_id: str | None = None) -> str:
    """A job trained from another hashes its parent's id, which hashes the parent's own lineage."""
    lineage = {"parent": parent_job_id} if parent_job_id else {}
    canonical = json.dumps(
        {
            "dataset": dataset_sha256,
            "trainer": trainer_version,
            "base_model": base_model,
            "base_model_sha256": base_model_sha256,
            "hyperparameters": hyperparameters.weight_settings(),
            **lineage,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return JOB_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:24]


class JobRegistry:
    def __init__(self, root: Path):
        self.root = root

    def dir(self, job_id: str) -> Path:
        return safe_join(self.root, job_id, field="job_uuid")

    def exists(self, job_id: str) -> bool:
        return (self.dir(job_id) / "job.json").exists()

    def create(self, job: TrainingJob, dataset: Path) -> bool:
        """Publish the job directory atomically; False when the same job already exists."""
        target = self.dir(job.job_id)
        if target.exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{job.job_id}.", dir=self.root))
        try:
            _link_or_copy(dataset, staging / "dataset.jsonl")
            write_model(staging / "job.json", job)
            now = time.time()
            total = job.hyperparameters.steps
            write_model(staging / "status.json", JobStatus(job_id=job.job_id, total_steps=total, created=now, updated=now))
            (staging / "checkpoints").mkdir()
            try:
                os.rename(staging, target)
            except OSError:  # somebody else published the same job first
                return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def add_alias(self, alias: str, job_id: str) -> None:
        """A caller-chosen name (Llama Stack's ``job_uuid``) for a job (``TrainingService.submit``
        checks that it names no other job)."""
        if alias != job_id:
            write_atomic(safe_join(self.root / "aliases", alias, field="job_uuid"), job_id.encode())

    def resolve(self, name: str) -> str | None:
        """The job id for a job id or an alias; None when neither exists."""
        if self.exists(name):
            return name
        alias = safe_join(self.root / "aliases", name, field="job_uuid")
        return alias.read_text() if alias.exists() else None

    def job(self, job_id: str) -> TrainingJob:
        return read_model(self.dir(job_id) / "job.json", TrainingJob)

    def write_job(self, job: TrainingJob) -> None:
        """Replace a job's configuration (a stopped job launched with other run settings)."""
        write_model(self.dir(job.job_id) / "job.json", job)

    def recorded_status(self, job_id: str) -> JobStatus:
        """status.json as written, without listing the checkpoints."""
        return read_model(self.dir(job_id) / "status.json", JobStatus)

    def status(self, job_id: str) -> JobStatus:
        status = self.recorded_status(job_id)
        status.checkpoints = self.checkpoints(job_id)
        status.promotion = self.promotion(job_id)
        return status

    def promotion(self, job_id: str) -> Promotion | None:
        path = self.dir(job_id) / "promotion.json"
        return read_model(path, Promotion) if path.exists() else None

    def record_promotion(self, job_id: str, promotion: Promotion) -> None:
        write_model(self.dir(job_id) / "promotion.json", promotion)

    def latest_of(self, newest: dict[str, float], purpose: str = "model") -> str | None:
        """``latest`` (``guard`` for purpose guard), the one rule for training and serving: of the
        jobs with a checkpoint (job id -> its newest checkpoint's time) trained for ``purpose``, the
        newest that no safety gate holds back (a job that asked for the gate is a candidate once promoted)."""
        candidates = {job_id: t for job_id, t in newest.items() if self._candidate(job_id, purpose)}
        return max(candidates, key=candidates.get) if candidates else None

    def _candidate(self, job_id: str, purpose: str) -> bool:
        hyperparameters = self.job(job_id).hyperparameters
        if hyperparameters.purpose != purpose:
            return False
        if hyperparameters.safety_gate is None:
            return True
        promotion = self.promotion(job_id)
        return promotion is not None and promotion.state == "promoted"

    def update_status(self, job_id: str, **changes) -> JobStatus:
        status = self.recorded_status(job_id).model_copy(update={**changes, "updated": time.time()})
        write_model(self.dir(job_id) / "status.json", status)
        return status

    @contextmanager
    def launch_lock(self, job_id: str, blocking: bool = True) -> Iterator[bool]:
        """Exclusive across threads, processes and (where the filesystem supports flock) hosts: yields
        False at once instead of waiting when ``blocking`` is False and another holder has it."""
        with open(self.dir(job_id) / _LOCK, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    def launching_since(self, job_id: str) -> float | None:
        """When an sbatch of this job whose outcome is unknown began (None: there is none)."""
        try:
            return (self.dir(job_id) / _LAUNCHING).stat().st_mtime
        except FileNotFoundError:
            return None

    def mark_launching(self, job_id: str) -> None:
        (self.dir(job_id) / _LAUNCHING).touch()

    def clear_launching(self, job_id: str) -> None:
        (self.dir(job_id) / _LAUNCHING).unlink(missing_ok=True)

    def job_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name.startswith(JOB_PREFIX) and (p / "job.json").exists())

    def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first."""
        return checkpoint_infos(self.dir(job_id) / "checkpoints")

    def newest_trained(self) -> str | None:
        """``latest``: of the jobs ``latest_of`` admits, the one whose newest complete checkpoint was written last."""
        newest = {}
        for job_id in self.job_ids():
            if (checkpoint := self.latest_checkpoint(job_id)) is not None:
                try:
                    newest[job_id] = Path(checkpoint.path).stat().st_mtime
                except FileNotFoundError:  # pruned just now: a newer one exists
                    continue
        return self.latest_of(newest)

    def latest_checkpoint(self, job_id: str) -> CheckpointInfo | None:
        checkpoints = self.checkpoints(job_id)
        return checkpoints[-1] if checkpoints else None

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        log = self.dir(job_id) / "slurm.log"
        if not log.exists():
            return ""
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - 64 * 1024))
            return b"\n".join(handle.read().splitlines()[-lines:]).decode(errors="replace")

    def read_log(self, job_id: str, offset: int = 0, limit: int = 1 << 20) -> tuple[int, str]:
        """Log text from byte ``offset`` (for ``logs -f``): (next offset, text)."""
        log = self.dir(job_id) / "slurm.log"
        if not log.exists():
            return offset, ""
        with open(log, "rb") as handle:
            handle.seek(offset)
            data = handle.read(limit)
        return offset + len(data), data.decode(errors="replace")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
