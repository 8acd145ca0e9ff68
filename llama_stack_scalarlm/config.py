"""One typed configuration for every ScalarLM process: server providers, engine workers, CLI.

Values come, in rising priority, from the defaults below, ``SCALARLM_*`` environment variables
(nested keys joined by ``__``, e.g. ``SCALARLM_ENGINE__KV_CACHE_GIB=2``), and a run config's
provider ``config:`` block. Workers started by the server receive the server's resolved config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

ENV_PREFIX = "SCALARLM_"


class EngineSettings(BaseModel):
    """Settings of the vLLM engine each worker runs."""

    kv_cache_gib: int = Field(1, ge=1, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE), whole GiB")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="fraction of GPU memory vLLM may use")
    max_num_seqs: int = Field(64, ge=1, description="sequences one engine runs at once: the capacity a worker leases")
    lease_ahead: int = Field(
        64, ge=0, description="requests a worker holds beyond max_num_seqs, waiting in vLLM for the next free slot"
    )
    enforce_eager: bool = Field(True, description="skip torch.compile (on CPU compile costs ~90 s per start)")
    dtype: str = Field("auto", description="weights dtype passed to vLLM")
    device: str = Field("auto", description="'cpu', 'cuda' or 'auto' (cuda when torch sees a GPU)")
    tensor_parallel_size: int = Field(1, ge=1)
    seed: int = 0
    full_finetune_engines: int = Field(
        2, ge=1, description="engines serving full fine-tunes at once, the spare included (dev mode)"
    )
    spare_engine: Literal["never", "after_first", "always"] = Field(
        "after_first",
        description="keep an engine standing by for the next full fine-tune (dev mode): on the newest full "
        "fine-tune's base model once there is one, or from the start on the first served model",
    )
    max_loras: int = Field(3, ge=0, description="LoRA adapters a worker holds loaded at once; every LoRA job is served, "
                                                 "the least recently used adapter unloaded when another is asked for")
    max_lora_rank: int = Field(64, ge=1)
    default_max_tokens: int | None = Field(
        None, ge=1, description="tokens a reply runs to when its request sets no max_tokens (nor "
        "max_completion_tokens): none = the rest of the context, as OpenAI does; a slow CPU machine whose clients "
        "time out may want a bound (a cut reply ends with finish_reason 'length'). A request's own bound is kept",
    )
    tool_parser: str = Field(
        "hermes", description="vLLM tool parser for a model whose own chat template renders tools (hermes: Qwen, "
        "Hermes; llama3_json: Llama 3.x); one whose template has none gets the shipped ChatML tool template and hermes",
    )


class Limits(BaseModel):
    """Bounds on what a client may ask, checked before anything is queued."""

    max_bulk_prompts: int = Field(100_000, ge=1, description="prompts in one bulk generate call")
    max_prompt_chars: int = Field(1_000_000, ge=1, description="characters in one prompt or message list")
    max_n: int = Field(16, ge=1, description="largest `n` (choices per request)")
    max_temperature: float = Field(10.0, gt=0)
    max_list: int = Field(1024, ge=1, description="items in a list a request carries: stop strings, a worker's models")
    max_request_bytes: int = Field(256 * 2**20, ge=1024, description="a JSON request body (413 beyond it)")
    max_dataset_line_bytes: int = Field(16 * 2**20, ge=1024, description="one line of a training dataset")
    max_dataset_rows: int = Field(1_000_000, ge=1, description="rows read from a Llama Stack dataset for training")
    max_upload_bytes: int = Field(10 * 2**30, ge=1, description="largest dataset upload")
    upload_ttl_s: float = Field(7 * 24 * 3600, gt=0, description="an upload no byte reached for this long is removed")
    result_ttl_s: float = Field(24 * 3600, gt=0, description="how long results nobody acknowledged are kept")
    unserved_s: float = Field(900, gt=0, description="queued requests for a model no engine asked for in this long fail")
    request_timeout_s: float = Field(600, gt=0, description="how long a waiting client call waits for its result")


class ScalarLMConfig(BaseModel):
    state_dir: Path = Field(Path("~/.scalarlm"), description="root of all shared state (queue, models); may be on NFS")
    default_model: str = Field("SmolLM2-135M-Instruct", description="model served when a worker names none")
    served_models: list[str] = Field(default_factory=list, description="models workers serve; empty = default only")
    max_model_len: int = Field(2048, ge=16, description="context length (prompt + completion) of served models")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: Limits = Field(default_factory=Limits)
    workers: int = Field(1, ge=0, description="engine workers the server starts and restarts itself (dev mode)")
    server_url: str | None = Field(None, description="URL workers use to reach the server; None = discover own port")
    lease_timeout_s: float = Field(30.0, gt=0, description="a lease not renewed for this long goes back to the queue")
    progress_timeout_s: float = Field(
        120.0, gt=0, description="a worker whose engine makes no step for this long loses its leases (a hung engine)"
    )
    max_attempts: int = Field(3, ge=1, description="leases of one request before it fails instead of being retried")
    ailuminate_dir: Path | None = Field(None, description="MLCommons' AILuminate prompt sets and reference standard, "
                                        "under their official file names; None = <state_dir>/ailuminate")
    queue_fsync: bool = Field(False, description="fsync every commit (survives power loss, not only crashes)")

    @property
    def models(self) -> list[str]:
        return self.served_models or [self.default_model]

    @property
    def queue_path(self) -> Path:
        return self.state_dir / "queue" / "requests.sqlite"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.state_dir / "uploads"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None) -> ScalarLMConfig:
        """Defaults < SCALARLM_* environment < ``overrides`` (a run config's provider block)."""
        merged: dict[str, Any] = {}
        for key, raw in os.environ.items():
            if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG_JSON":
                continue
            path = key[len(ENV_PREFIX):].lower().split("__")
            node = merged
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = _parse_env_value(raw)
        if blob := os.environ.get(ENV_PREFIX + "CONFIG_JSON"):
            _deep_update(merged, json.loads(blob))
        _deep_update(merged, {k: v for k, v in (overrides or {}).items() if v is not None})
        config = cls.model_validate(merged)
        config.state_dir = config.state_dir.expanduser().resolve()
        return config

    def to_env(self) -> dict[str, str]:
        """The environment that hands this exact config to a child process."""
        return {ENV_PREFIX + "CONFIG_JSON": self.model_dump_json()}


def _parse_env_value(raw: str) -> Any:
    if raw.startswith(("[", "{")):
        return json.loads(raw)
    return raw


def _deep_update(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
