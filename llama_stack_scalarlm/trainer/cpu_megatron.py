"""What megatron-core needs to run a forward and backward pass on CPUs (gloo), applied only without a GPU.

megatron-core 0.19 assumes CUDA in a few places on the path the megatron backend uses
(``GPTModel`` with the local layer spec, tensor parallelism over ``torch.distributed``):

1. ``DotProductAttention`` borrows its attention-score buffer from ``parallel_state``'s
   ``GlobalMemoryBuffer``, which allocates on ``torch.cuda.current_device()``. :func:`install`
   replaces the buffer object with :class:`CpuMemoryBuffer` (same interface, CPU allocation) after
   ``initialize_model_parallel`` created it. Module state, not a patched function.
2. ``DotProductAttention`` runs its dropout under ``get_cuda_rng_tracker().fork()``, which swaps
   CUDA generator states. :func:`install` creates the tracker through megatron's public
   ``initialize_rng_tracker(inference_rng_tracker=True)``, whose ``fork()`` is a no-op: dropout (0
   for Llama models) draws from the CPU generator, which the loop seeds per rank.
3. ``RotaryEmbedding.forward`` moves its frequencies to ``torch.cuda.current_device()``. Not
   patched: the backend computes the rotary angles itself from the rows' ``position_ids`` (it must
   anyway: packed rows restart their positions, which megatron's ``arange``-based RoPE ignores).
4. Megatron's ``DistributedDataParallel`` and its distributed/FP32 optimizers allocate their
   buffers with ``device='cuda'``. Not used at all: the backend trains with torch's AdamW (the base
   class's optimizer) and averages gradients over the data-parallel group with plain
   ``torch.distributed.all_reduce`` (on GPUs too, so both devices run the same code).

The fused kernels megatron would pick (masked softmax, RoPE, SwiGLU, gradient-accumulation fusion)
are turned off in the ``TransformerConfig`` the backend builds; they need Apex/TransformerEngine.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def quiet():
    """megatron-core warns at import that Apex/TransformerEngine are missing (expected: the local
    spec needs neither), about deprecated config defaults, and logs that ``GPTModel`` is deprecated
    (in favour of ``HybridModel``); keep those out of every rank's log."""
    gpt_logger = logging.getLogger("megatron.core.models.gpt.gpt_model")
    level = gpt_logger.level
    gpt_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine|absl|TransformerEngine).*")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\..*")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"megatron\..*")
            yield
    finally:
        gpt_logger.setLevel(level)


def _global_memory_buffer_class() -> type:
    from megatron.core.utils import GlobalMemoryBuffer

    class CpuMemoryBuffer(GlobalMemoryBuffer):
        """megatron's ``GlobalMemoryBuffer``, allocating on the CPU."""

        def get_tensor(self, tensor_shape: Any, dtype: torch.dtype, name: str,
                       mem_alloc_context: Callable | None = None) -> torch.Tensor:
            required = math.prod(tensor_shape)
            buffer = self.buffer.get((name, dtype))
            if buffer is None or buffer.numel() < required:
                buffer = self.buffer[(name, dtype)] = torch.empty(required, dtype=dtype, requires_grad=False)
            return buffer[:required].view(*tensor_shape)

    return CpuMemoryBuffer


def install() -> None:
    """Apply accommodations 1 and 2, after ``initialize_model_parallel``. Idempotent; a no-op with CUDA."""
    if torch.cuda.is_available():
        return
    from megatron.core import parallel_state, tensor_parallel

    parallel_state._GLOBAL_MEMORY_BUFFER = _global_memory_buffer_class()()  # a fresh, empty buffer
    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
