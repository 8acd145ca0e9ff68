"""What one server process holds, shared by every ScalarLM provider in it: the queue, the worker
supervisor (dev mode), and the list of models it serves. Validation of limits lives here so the
OpenAI path and the bulk path refuse the same things the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .config import ScalarLMConfig
from .errors import InvalidFieldError, UnknownModelError
from .queue.schema import GenerationRequest
from .queue.service import QueueService
from .queue.store import RequestStore

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

    @classmethod
    def get(cls, config: ScalarLMConfig) -> ServerRuntime:
        """One runtime per state dir and process: the inference and bulk providers share it."""
        if config.state_dir not in _runtimes:
            _runtimes[config.state_dir] = cls(config)
        return _runtimes[config.state_dir]

    def start_workers(self) -> None:
        if self.supervisor is None and self.config.workers > 0:
            from .engine.supervisor import WorkerSupervisor

            self.supervisor = WorkerSupervisor(self.config, self.queue.store)
            self.supervisor.start()

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None

    def served_models(self) -> list[str]:
        return list(self.config.models)

    def resolve_model(self, model: str, provider_id: str = "scalarlm") -> str:
        """The engine's name for ``model``, which may carry the stack's ``provider_id/`` prefix."""
        name = model.removeprefix(f"{provider_id}/")
        if name not in self.served_models():
            raise UnknownModelError(model)
        return name

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
