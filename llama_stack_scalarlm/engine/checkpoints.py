"""Hot pickup: which trained checkpoints a worker should serve, read from the registry.

A worker for base model B serves, beside B, every LoRA job trained on B (newest complete
checkpoint of each). A worker started for a full fine-tune job serves that job and reloads its
weights as newer checkpoints appear. What is read of a job here (its base model, whether it is a
LoRA) is part of its id and never changes, so each job.json is read once.
"""

from __future__ import annotations

from ..registry.jobs import JobRegistry
from ..registry.schema import CheckpointInfo, TrainingJob


class CheckpointWatcher:
    def __init__(self, registry: JobRegistry):
        self.registry = registry
        self._jobs: dict[str, TrainingJob] = {}

    def adapters_for(self, base_model: str) -> dict[str, CheckpointInfo]:
        """Newest LoRA checkpoint of every job trained on ``base_model``."""
        newest = {}
        for job_id in self.registry.job_ids():
            job = self._job(job_id)
            if job.base_model != base_model or job.kind != "lora":
                continue
            if (checkpoint := self.registry.latest_checkpoint(job_id)) is not None:
                newest[job_id] = checkpoint
        return newest

    def latest(self, job_id: str) -> CheckpointInfo | None:
        return self.registry.latest_checkpoint(job_id)

    def _job(self, job_id: str) -> TrainingJob:
        if job_id not in self._jobs:
            self._jobs[job_id] = self.registry.job(job_id)
        return self._jobs[job_id]
