"""Our grouped CPU LoRA ops give what vLLM's per-token ones give, for every op vLLM's CPU punica
wrapper calls, on batches that mix adapters and tokens with none (index -1)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
vllm_ops = pytest.importorskip("vllm.lora.ops.torch_ops")

from llama_stack_scalarlm.engine import cpu_lora  # noqa: E402

SLOTS, RANK, HIDDEN, OUT = 4, 8, 32, 48


@pytest.fixture(params=["one adapter", "mixed", "with no adapter"])
def indices(request):
    generator = torch.Generator().manual_seed(0)
    if request.param == "one adapter":
        return torch.full((12,), 2)
    mixed = torch.randint(0, SLOTS - 1, (12,), generator=generator)
    if request.param == "with no adapter":
        mixed[::3] = -1
    return mixed


def test_shrink_and_expand_match_vllm(indices):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(len(indices), HIDDEN, generator=generator)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=generator)
    shrunk = {}
    for ops in (vllm_ops, cpu_lora):
        y = torch.zeros(len(indices), RANK)
        ops.bgmv_shrink(x, a, y, indices, 0.5)
        shrunk[ops] = y
    torch.testing.assert_close(shrunk[cpu_lora], shrunk[vllm_ops])
    for add in (True, False):
        out = {}
        for ops in (vllm_ops, cpu_lora):
            z = torch.ones(len(indices), OUT + 2)
            ops.bgmv_expand(shrunk[vllm_ops], b, z, indices, add)
            sliced = torch.ones(len(indices), OUT + 8)
            ops.bgmv_expand_slice(shrunk[vllm_ops], b, sliced, indices, 4, OUT, add)
            out[ops] = (z, sliced)
        for ours, theirs in zip(out[cpu_lora], out[vllm_ops], strict=True):
            torch.testing.assert_close(ours, theirs)


def test_prefill_ops_match_vllm():
    """sgmv: one adapter index per sequence, expanded to its tokens."""
    generator = torch.Generator().manual_seed(2)
    seq_lens, per_seq = torch.tensor([3, 5, 4]), torch.tensor([1, -1, 1])
    tokens = int(seq_lens.sum())
    x = torch.randn(tokens, HIDDEN, generator=generator)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=generator)
    meta = (torch.cumsum(seq_lens, 0) - seq_lens, seq_lens, per_seq, 3, 5, tokens)
    results = {}
    for ops in (vllm_ops, cpu_lora):
        y = torch.zeros(tokens, RANK)
        ops.sgmv_shrink(x, a, y, *meta, 2.0)
        z = torch.zeros(tokens, OUT)
        ops.sgmv_expand(y, b, z, *meta, True)
        s = torch.zeros(tokens, OUT + 4)
        ops.sgmv_expand_slice(y, b, s, *meta, 2, OUT, False)
        results[ops] = (y, z, s)
    for ours, theirs in zip(results[cpu_lora], results[vllm_ops], strict=True):
        torch.testing.assert_close(ours, theirs)


def test_install_reaches_the_punica_wrapper():
    from vllm.lora.punica_wrapper import punica_cpu

    cpu_lora.install()
    assert all(getattr(punica_cpu, name) is getattr(cpu_lora, name) for name in cpu_lora.OPS)
