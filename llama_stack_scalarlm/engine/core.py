"""The engine core: one vLLM ``AsyncLLM`` for one model, turning queued requests into results.

Prompts are rendered and tokenized here, where the model's tokenizer is, so the context check
(prompt + max_tokens within ``max_model_len``) happens before vLLM sees the request and comes
back to the client as a 400 naming the field.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..config import ScalarLMConfig
from ..queue.schema import (
    Choice,
    GenerationRequest,
    GenerationResult,
    OpenAIRequest,
    RequestError,
    TokenLogprobs,
    WorkItem,
)
from .adapters import AdapterSlots, AdapterUnavailable
from .openai_layer import EmitChunks, OpenAILayer

log = logging.getLogger(__name__)

_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "stop", "seed", "n", "logprobs")


def configure_vllm_environment(config: ScalarLMConfig) -> None:
    """vLLM reads these at import: set them before ``import vllm``."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(config.state_dir / "cache" / "vllm"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.engine.kv_cache_gib))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if _on_cpu(config):
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        # Run the model inside vLLM's engine-core process rather than in a third process of its own:
        # an engine starts ~7 s sooner on CPU and serves no slower (see README, "Engine processes").
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _on_cpu(config: ScalarLMConfig) -> bool:
    if config.engine.device != "auto":
        return config.engine.device == "cpu"
    import torch

    return not torch.cuda.is_available()


class EngineCore:
    def __init__(self, config: ScalarLMConfig, model_name: str, model_path: Path, serve_adapters: bool = True,
                 standby: bool = False):
        """A ``standby`` engine (a full fine-tune's, before its first checkpoint) holds the base weights
        at ``model_path`` and serves nothing until ``reload_weights`` brings the job's weights."""
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.config = config
        self.model_name = model_name
        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.defaults = _generation_defaults(model_path)
        self.standby = standby
        self.max_adapters = config.engine.max_loras if serve_adapters else 0
        lora = {}
        if self.max_adapters:
            # One LoRA slot more than adapters held: vLLM on CPU applies the last slot's adapter to
            # base requests when every slot is full (vLLM PRs #48421, #49656).
            lora = dict(enable_lora=True, max_loras=self.max_adapters + 1, max_cpu_loras=self.max_adapters + 1,
                        max_lora_rank=config.engine.max_lora_rank)
        # On CPU a prompt is prefilled whole, in one step: vLLM rewinds the seeded generator of a
        # part-prefilled request by an offset that a CPU generator does not have, and the engine
        # dies on the first seeded request split across steps (vllm-rbln PR #1025 has the details).
        whole_prefills = dict(enable_chunked_prefill=False, max_num_batched_tokens=max(config.max_model_len, 2048)) \
            if _on_cpu(config) else {}
        args = AsyncEngineArgs(
            **lora,
            **whole_prefills,
            model=str(model_path),
            served_model_name=model_name,
            max_model_len=config.max_model_len,
            max_num_seqs=config.engine.max_num_seqs,
            enforce_eager=config.engine.enforce_eager,
            dtype=config.engine.dtype,
            seed=config.engine.seed,
            tensor_parallel_size=config.engine.tensor_parallel_size,
            gpu_memory_utilization=config.engine.gpu_memory_utilization,
            disable_log_stats=True,
            # Constrained JSON (response_format, forced tool calls) without free whitespace: fewer
            # tokens, and no model can spin in blank space between two of its tokens.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
            distributed_executor_backend="uni" if _in_process_model(config) else None,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self._steps = _count_steps(self.engine)
        self.openai = OpenAILayer(self.engine, model_name, model_path, config.engine.tool_parser,
                                  config.engine.default_max_tokens)
        self.adapters = AdapterSlots(self.engine, self.max_adapters, self.openai.serve_adapter)

    @property
    def steps(self) -> int:
        """Engine steps so far: it stands still only when the engine is idle or hung."""
        return self._steps()

    @property
    def capacity(self) -> int:
        return self.config.engine.max_num_seqs

    def served_models(self) -> list[str]:
        return [] if self.standby else [self.model_name, *self.adapters.served()]

    async def sync_adapters(self, newest: dict) -> None:
        """Serve every LoRA job's newest checkpoint under the job's id (loaded when asked for)."""
        await self.adapters.sync(newest)

    async def reload_weights(self, path: Path) -> None:
        """Swap in a full fine-tune's newer checkpoint: in-flight requests finish first, no restart."""
        await self.engine.pause_generation(mode="wait", clear_cache=True)
        try:
            await self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
            await self.engine.reset_prefix_cache()
        finally:
            await self.engine.resume_generation()
        self.model_path = path
        self.standby = False
        log.info("%s now serves weights from %s", self.model_name, path)

    def shutdown(self) -> None:
        self.engine.shutdown()

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.kind == "chat":
            rendered = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return self.tokenizer(request.prompt)["input_ids"]

    def check(self, request: GenerationRequest, prompt_len: int) -> RequestError | None:
        limit = self.config.max_model_len
        field = "messages" if request.kind == "chat" else "prompt"
        if prompt_len == 0:
            return RequestError(field=field, message=f"{field}: empty: there is nothing to continue from")
        if prompt_len >= limit:
            return RequestError(field=field, message=f"{field}: {prompt_len} tokens, the model's context is {limit}")
        if request.max_tokens is not None and prompt_len + request.max_tokens > limit:
            return RequestError(
                field="max_tokens",
                message=f"max_tokens: {request.max_tokens} + {prompt_len} prompt tokens exceeds the context ({limit})",
            )
        return None

    def sampling_params(self, request: GenerationRequest, prompt_len: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=request.n,
            temperature=self.defaults.get("temperature", 1.0) if request.temperature is None else request.temperature,
            top_p=self.defaults.get("top_p", 1.0) if request.top_p is None else request.top_p,
            max_tokens=request.max_tokens or min(self.config.max_model_len - prompt_len,
                                                 self.config.engine.default_max_tokens or self.config.max_model_len),
            stop=request.stop or None,
            seed=request.seed,
            logprobs=request.logprobs,
            ignore_eos=request.ignore_eos,
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output at the end: bulk requests do not stream
        )

    async def run(self, item: WorkItem, emit: EmitChunks) -> GenerationResult:
        """Generate ``item``; for a streaming OpenAI call ``emit(chunks)`` is called as text arrives.
        A trained adapter's request first waits for its adapter to be loaded."""
        if item.request.model == self.model_name:
            return await self._run(item, emit)
        try:
            async with self.adapters.use(item.request.model):
                return await self._run(item, emit)
        except AdapterUnavailable as exc:
            return GenerationResult(error=RequestError(status=503, field="model", message=f"model: {exc}"))

    async def _run(self, item: WorkItem, emit: EmitChunks) -> GenerationResult:
        if isinstance(item.request, OpenAIRequest):
            return await self.openai.run(item.request, str(item.id), emit)
        return await self._generate(item)

    async def _generate(self, item: WorkItem) -> GenerationResult:
        """A bulk request: the lean path (our own rendering and sampling, no OpenAI objects per token)."""
        from vllm.inputs import tokens_input

        request = item.request
        try:
            ids = self.prompt_ids(request)
        except Exception as exc:  # a chat template rejecting the messages is the client's error
            return GenerationResult(error=RequestError(field="messages", message=f"messages: {exc}"))
        if error := self.check(request, len(ids)):
            return GenerationResult(prompt_tokens=len(ids), error=error)
        try:
            params = self.sampling_params(request, len(ids))
        except Exception as exc:  # vLLM's own checks of the parameters, e.g. n > 1 with greedy sampling
            return GenerationResult(prompt_tokens=len(ids), error=RequestError(field=_field_of(exc), message=str(exc)))
        lora = self.adapters.get(request.model)
        prompt = tokens_input(ids)  # already rendered: vLLM takes it on the spot, with no hop to its tokenizer thread
        final = None
        async for final in self.engine.generate(prompt, params, request_id=str(item.id), lora_request=lora):
            pass
        choices = [
            Choice(index=c.index, text=c.text, finish_reason=_finish(c.finish_reason) or "stop",
                   completion_tokens=len(c.token_ids), logprobs=_logprobs(c, request.logprobs) if request.logprobs is not None else None)
            for c in sorted(final.outputs, key=lambda c: c.index)
        ]
        return GenerationResult(choices=choices, prompt_tokens=len(ids))


def _logprobs(output, k: int) -> TokenLogprobs:
    """vLLM's per-token {token id: Logprob} maps (the sampled token and the top k) in the compact shape."""
    sampled = [lp[t].logprob for t, lp in zip(output.token_ids, output.logprobs, strict=True)]
    top = [sorted(((t, v.logprob) for t, v in lp.items() if v.rank <= k), key=lambda p: -p[1])
           for lp in output.logprobs]
    return TokenLogprobs(token_ids=list(output.token_ids), logprobs=sampled, top=top)


def _count_steps(engine) -> Callable[[], int]:
    """A counter of the engine's steps, the worker's proof of progress for its leases: it wraps
    the call by which vLLM's front end takes each step's outputs from the engine core (one call per
    step, nothing per token). vLLM's stat-logger interface would give the same signal, but turning
    stats on costs ~5% of CPU throughput (per-token statistics and Prometheus metrics)."""
    client = engine.engine_core
    take = client.get_output_async  # AttributeError here, at start, if vLLM's interface moved
    steps = [0]

    async def counted():
        outputs = await take()
        steps[0] += 1
        return outputs

    client.get_output_async = counted
    return lambda: steps[0]


def _in_process_model(config: ScalarLMConfig) -> bool:
    """vLLM's CPU platform keeps a one-process executor only while this variable is 0."""
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" and config.engine.tensor_parallel_size == 1


def _generation_defaults(model_path: Path) -> dict:
    """Sampling defaults the model ships (as vLLM's server applies them) for requests that set none."""
    path = model_path / "generation_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _field_of(exc: ValueError) -> str:
    """The request field a vLLM validation message is about (its messages start with the name)."""
    words = str(exc).replace(",", " ").split()
    return next((w for w in words if w in _SAMPLING_FIELDS), "request")


def _finish(reason: str | None):
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"
