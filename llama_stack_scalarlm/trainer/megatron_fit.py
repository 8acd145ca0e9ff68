"""Whether megatron-core's GPT layers compute a Hugging Face model exactly at a tensor-parallel size,
read from the model's config alone. Free of torch: the server refuses a model the megatron backend
cannot split when the job is submitted, and the trainer checks the same before building anything.
"""

from __future__ import annotations

from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
"""Decoder-only models with Llama's exact architecture (pre-RMSNorm, RoPE, GQA, SwiGLU, no biases)."""

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def megatron_problems(config: Any, tp: int, max_seq_len: int | None = None) -> list[tuple[str, str]]:
    """(field, problem) for each reason megatron cannot train ``config`` (a transformers config or
    its config.json as attributes) with ``tp`` tensor-parallel ranks; empty when it can."""
    problems = []
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(("backend", f"model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"))
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(("backend", f"hidden_act {config.hidden_act!r} (megatron SwiGLU needs silu)"))
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            problems.append(("backend", f"{flag}=True"))
    for extra in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, extra, None):
            problems.append(("backend", f"{extra} is set"))
    window = getattr(config, "sliding_window", None)
    if window is not None and (max_seq_len is None or window < max_seq_len):
        problems.append(("max_seq_len", f"sliding_window={window} shorter than the sequences"))
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in SUPPORTED_ROPE_TYPES:
        problems.append(("backend", f"rope_type {rope['rope_type']!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"))
    if rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) != 1.0:
        problems.append(("backend", "partial rotary embeddings are not supported"))
    heads = config.num_attention_heads
    groups = getattr(config, "num_key_value_heads", None) or heads
    for what, n in (("num_attention_heads", heads), ("num_key_value_heads", groups),
                    ("intermediate_size", config.intermediate_size)):
        if n % tp:
            problems.append(("tensor_parallel", f"{what}={n} is not divisible by tensor_parallel={tp}"))
    return problems
