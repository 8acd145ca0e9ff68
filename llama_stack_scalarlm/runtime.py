"""What one server process shares between its ScalarLM providers: the queue, the model catalogue,
the worker supervisor (dev mode), training, and who may call (tokens, the worker credential).
A holder, not a place for logic: each part lives in the module named for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from .auth.tokens import TokenStore
from .auth.worker import ensure_worker_credential
from .config import ScalarLMConfig
from .models.catalogue import ModelCatalogue
from .queue.admission import check_requests
from .queue.schema import WorkRequest
from .queue.service import QueuePolicy, QueueService
from .queue.store import BULK, RequestStore
from .registry.jobs import JobRegistry

_runtimes: dict[Path, ServerRuntime] = {}


class ServerRuntime:
    def __init__(self, config: ScalarLMConfig):
        self.config = config
        self.catalogue = ModelCatalogue(config.models, JobRegistry(config.jobs_dir))
        self.queue = QueueService(
            RequestStore(config.queue_path, fsync=config.queue_fsync),
            QueuePolicy(lease_s=config.lease_timeout_s, progress_s=config.progress_timeout_s,
                        max_attempts=config.max_attempts, result_ttl_s=config.limits.result_ttl_s,
                        unserved_s=config.limits.unserved_s),
            served=lambda: set(self.catalogue.served_models()),
        )
        self.tokens = TokenStore(config.state_dir)
        self.worker_credential = ensure_worker_credential(config.state_dir)
        self.supervisor = None
        self._gate = None  # the safety gate's task (start_loop_tasks)

    @classmethod
    def get(cls, config: ScalarLMConfig) -> ServerRuntime:
        """One runtime per state dir and process: every ScalarLM provider in the server shares it."""
        if config.state_dir not in _runtimes:
            _runtimes[config.state_dir] = cls(config)
        return _runtimes[config.state_dir]

    def start_workers(self) -> None:
        if self.supervisor is None and self.config.workers > 0:
            from .engine.supervisor import WorkerSupervisor

            self.supervisor = WorkerSupervisor(self.config, self.queue, self.catalogue.full_finetunes)
            self.supervisor.start()

    @cached_property
    def training(self):
        """Training jobs (SLURM, registry), started on first use."""
        from .training import TrainingService

        service = TrainingService(self.config)
        service.start_background()
        return service

    @cached_property
    def benchmarks(self):
        """AILuminate runs: started, resumed and looked up by id."""
        from .safety.benchmark import BenchmarkRuns

        return BenchmarkRuns(self, self.config.state_dir / "safety" / "runs",
                             self.config.ailuminate_dir or self.config.state_dir / "ailuminate")

    def start_loop_tasks(self) -> None:
        """The runtime's tasks that live on the server's event loop: the safety gate, and the
        AILuminate runs a stopped server left unfinished. The stack also lists models while it
        initializes, in a loop of its own that it then closes, so they are (re)started on whichever
        loop calls this and holds none alive."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate.done() or self._gate.get_loop() is not loop:
            from .safety.gate import SafetyGateService

            self._gate = loop.create_task(SafetyGateService(self).run_forever())
            self.benchmarks.resume_interrupted()

    def submit(self, requests: Sequence[WorkRequest], owner: str, priority: int = BULK) -> list[str]:
        check_requests(requests, self.config.limits, self.config.max_model_len)
        return self.queue.submit(requests, owner, priority)

    def stop(self) -> None:
        if self._gate is not None and not self._gate.get_loop().is_closed():
            self._gate.cancel()
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        if "training" in self.__dict__:
            self.training.stop_background()
        self.catalogue.close()
        self.queue.close()
