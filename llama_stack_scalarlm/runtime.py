"""What one server process holds, shared by every ScalarLM provider in it: the queue, the worker
supervisor (dev mode), and the list of models it serves. Validation of limits lives here so the
OpenAI path and the bulk path refuse the same things the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from .config import ScalarLMConfig
from .engine.pool import FullFinetune
from .errors import InvalidFieldError, UnknownModelError
from .queue.schema import GenerationRequest
from .queue.service import QueueService
from .queue.store import RequestStore
from .registry.jobs import JobRegistry

log = logging.getLogger(__name__)

LATEST = "latest"
_PENDING_S = 5.0
_MODELS_TTL_S = 1.0

_runtimes: dict[Path, ServerRuntime] = {}


class ServerRuntime:
    def __init__(self, config: ScalarLMConfig):
        self.config = config
        self.queue = QueueService(
            RequestStore(config.queue_path, fsync=config.queue_fsync),
            lease_s=config.lease_timeout_s,
            result_ttl_s=config.limits.result_ttl_s,
        )
        self.supervisor = None
        self.jobs = JobRegistry(config.jobs_dir)
        # (when scanned, trained models, full fine-tunes that may want an engine)
        self._job_scan: tuple[float, dict[str, tuple[float, str]], list[FullFinetune]] = (0.0, {}, [])
        self._full: dict[str, str | None] = {}  # job id -> base model of a full fine-tune, None for LoRA
        self._stop = threading.Event()

    @classmethod
    def get(cls, config: ScalarLMConfig) -> ServerRuntime:
        """One runtime per state dir and process: the inference and bulk providers share it."""
        if config.state_dir not in _runtimes:
            _runtimes[config.state_dir] = cls(config)
        return _runtimes[config.state_dir]

    def start_workers(self) -> None:
        if self.supervisor is None and self.config.workers > 0:
            from .engine.supervisor import WorkerSupervisor

            self.supervisor = WorkerSupervisor(self.config, self.queue.store, self.full_finetunes)
            self.supervisor.start()

    @cached_property
    def training(self):
        """Training jobs (SLURM, registry); started on first use, with the loop that submits jobs
        recorded while SLURM was down."""
        from .training import TrainingService

        service = TrainingService(self.config)
        threading.Thread(target=self._submit_pending, args=(service,), name="scalarlm-pending", daemon=True).start()
        return service

    def stop(self) -> None:
        self._stop.set()
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None

    def trained_models(self) -> dict[str, tuple[float, str]]:
        """Jobs with a complete checkpoint: job id -> (time of the newest, kind). Cached for a second."""
        return self._scan_jobs()[0]

    def full_finetunes(self) -> list[FullFinetune]:
        """Full fine-tunes that have a checkpoint to serve or are queued or training: the candidates
        for an engine of their own (see ``engine.pool``)."""
        return self._scan_jobs()[1]

    def _scan_jobs(self) -> tuple[dict[str, tuple[float, str]], list[FullFinetune]]:
        stamp, trained, full = self._job_scan
        if time.monotonic() - stamp > _MODELS_TTL_S:
            trained, full = {}, []
            for job_id in self.jobs.job_ids():
                base = self._base_of_full(job_id)
                # A full fine-tune's status is read anyway, and it lists the checkpoints: one scan per job.
                status = None if base is None else self.jobs.status(job_id)
                checkpoints = self.jobs.checkpoints(job_id) if status is None else status.checkpoints
                if checkpoints:
                    trained[job_id] = (Path(checkpoints[-1].path).stat().st_mtime, checkpoints[-1].kind)
                if status is None:
                    continue
                training = status.state in ("QUEUED", "TRAINING")
                if training or checkpoints:
                    full.append(FullFinetune(job_id, base, status.created, status.updated, training, bool(checkpoints)))
            self._job_scan = (time.monotonic(), trained, full)
        return trained, full

    def _base_of_full(self, job_id: str) -> str | None:
        if job_id not in self._full:
            job = self.jobs.job(job_id)
            self._full[job_id] = job.base_model if job.hyperparameters.lora is None else None
        return self._full[job_id]

    def served_models(self) -> list[str]:
        return [*self.config.models, *self.trained_models()]

    def resolve_model(self, model: str, provider_id: str = "scalarlm") -> str:
        """The engine's name for ``model`` (which may carry the stack's ``provider_id/`` prefix);
        ``latest`` is the most recently trained model."""
        name = model.removeprefix(f"{provider_id}/")
        if name == LATEST:
            trained = self.trained_models()
            if not trained:
                raise UnknownModelError(model)
            return max(trained, key=lambda job: trained[job][0])
        if name not in self.config.models and name not in self.trained_models():
            raise UnknownModelError(model)
        return name

    def _submit_pending(self, service) -> None:
        while not self._stop.wait(_PENDING_S):
            try:
                if sent := service.submit_pending():
                    log.info("submitted %d job(s) recorded while SLURM was down", sent)
            except Exception:
                log.exception("submitting pending jobs failed")

    def submit(self, requests: Sequence[GenerationRequest]) -> list[int]:
        limits = self.config.limits
        for request in requests:
            if request.n > limits.max_n:
                raise InvalidFieldError("n", f"{request.n} is more than the limit of {limits.max_n}")
            if (request.temperature or 0) > limits.max_temperature:
                raise InvalidFieldError("temperature", f"{request.temperature} is above {limits.max_temperature}")
            if request.max_tokens is not None and request.max_tokens >= self.config.max_model_len:
                raise InvalidFieldError(
                    "max_tokens", f"{request.max_tokens} does not fit the context of {self.config.max_model_len}"
                )
            size = len(request.prompt or "") + sum(len(str(m.get("content") or "")) for m in request.messages or [])
            if size > limits.max_prompt_chars:
                field = "messages" if request.kind == "chat" else "prompt"
                raise InvalidFieldError(field, f"{size} characters is more than the limit of {limits.max_prompt_chars}")
        return self.queue.submit(requests)
