"""vLLM's CPU LoRA ops, one matrix product per adapter instead of one per token.

vLLM on CPU applies adapters with PyTorch ops that gather each token's adapter matrices
(``weights[indices]``: a rank × hidden copy per token, per layer, per module) before a batched
product. On SmolLM2 with a rank-16 adapter on every module that made a LoRA job's requests ~20×
slower than the base model's (64 greedy answers of 16 tokens: 112 s on the adapter, 5 s on the
base; 4 s on the adapter with these ops). Tokens share a handful of adapters at most
(``engine.max_loras``), so these ops group the tokens by adapter and multiply each group by its
adapter's matrix once: the same products, equal up to float rounding (tests/test_cpu_lora.py).
Index -1 (a token with no adapter) selects the last slot, as vLLM's own ops do, which the worker
never fills (see ``engine.adapters``). ``install``, a vLLM general plugin (pyproject.toml), swaps
them into vLLM's CPU punica wrapper in every process vLLM starts.
"""

from __future__ import annotations

import torch


def _grouped(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row i: ``inputs[i] @ weights[indices[i]].T``, one product per distinct index."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    if indices.shape[0] != inputs.shape[0]:
        raise ValueError(f"{inputs.shape[0]} tokens, {indices.shape[0]} adapter indices")
    inputs = inputs.to(dtype)
    slots = indices.unique()
    if slots.numel() == 1:
        return inputs @ weights[slots[0]].to(dtype).T
    out = inputs.new_empty(inputs.shape[0], weights.shape[1])
    for slot in slots.tolist():
        rows = (indices == slot).nonzero().squeeze(1)
        out[rows] = inputs[rows] @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = _grouped(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :width] += outputs[:limit, :width]
    else:
        output_tensor[:, :width] = outputs[:limit, :width]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def _per_token(seq_lens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(indices, seq_lens)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling: float):
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _per_token(seq_len_tensor, lora_indices_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs: bool = False):
    bgmv_expand(inputs, lora_b_weights, output_tensor, _per_token(seq_len_tensor, lora_indices_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                      batches, max_seq_length, token_nums, slice_offset: int, slice_size: int,
                      add_inputs: bool = False):
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, _per_token(seq_len_tensor, lora_indices_tensor),
                      slice_offset, slice_size, add_inputs)


OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def install() -> None:
    """Point vLLM's CPU punica wrapper at these ops (it imported vLLM's by name); on CPU only."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper import punica_cpu

    for name in OPS:
        setattr(punica_cpu, name, globals()[name])
