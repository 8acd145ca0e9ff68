"""The megatron backend for real: megatron-core on CPUs (gloo), the tiny Llama built locally, no mocks.

In this process (one rank, tensor parallel 1): the layouts' round trip, the megatron model's logits,
log-probabilities and gradients against transformers', the Hugging Face export, DPO's reference.
Under torchrun (4 short trainer runs, ~20 s each, mostly start-up): tensor parallel 2 against the
torch backend (same data, same weights), its checkpoint in transformers, exact resume, and data
parallel 2 (tensor parallel 1).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.test_trainer import (
    DPO_ROWS, SFT_ROWS, assert_answers_the_facts, final_checkpoint, load_weights, make_job, run_trainer,
    status,
)

SFT = dict(steps=40, learning_rate=4e-3, warmup_steps=5, batch_size=4, checkpoint_every=20, keep_checkpoints=2)


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_gqa(tiny, tmp_path_factory) -> Path:
    """A random variant: grouped-query attention (4 heads, 2 KV heads), untied LM head, llama3 RoPE scaling."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-gqa")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, initializer_range=0.2, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_rank():
    """torch.distributed with one gloo rank in this process (megatron needs a process group)."""
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if created:
        dist.destroy_process_group()


def backend_for(model: Path, **hyperparameters):
    import torch

    from llama_stack_scalarlm.registry.schema import Hyperparameters, TrainingJob
    from llama_stack_scalarlm.trainer.megatron_backend import MegatronBackend

    job = TrainingJob(job_id="in-process", base_model="tiny", base_model_path=str(model), dataset_sha256="0" * 64,
                      trainer_version="test", hyperparameters=Hyperparameters(backend="megatron", **hyperparameters))
    backend = MegatronBackend()
    backend.setup(job, model, torch.device("cpu"))
    return backend


def packed_batch(model: Path, tmp_path: Path, rows: list[dict] = SFT_ROWS, method: str = "sft"):
    """Two rows: three sequences packed in one, one sequence plus its padding segment in the other."""
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.trainer.data import collate, load_examples

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = AutoTokenizer.from_pretrained(model)
    examples = load_examples(data, tokenizer, method, 512)
    if method == "dpo":
        return collate([[examples[0], examples[1]], [examples[2]]], tokenizer.pad_token_id)
    return collate([[examples[0], examples[1], examples[2]], [examples[3]]], tokenizer.pad_token_id)


def merge_tensor_parallel(shards: list[dict], model) -> dict:
    """Tensor-parallel slices of megatron parameters → the parameters of one rank (TP=1), written
    independently of the backend: concatenate along each parameter's partition dimension, except
    ``linear_fc1``, whose slices are [gate_r; up_r] each."""
    import torch

    merged = {}
    for name, param in model.named_parameters():
        parts = [s[name] for s in shards]
        if not getattr(param, "tensor_model_parallel", False):
            assert all(torch.equal(p, parts[0]) for p in parts), name  # replicated: identical on every rank
            merged[name] = parts[0]
        elif name.endswith("linear_fc1.weight"):
            halves = [p.chunk(2, dim=0) for p in parts]
            merged[name] = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
        else:
            merged[name] = torch.cat(parts, dim=param.partition_dim)
    return merged


# ------------------------------------------------------------------------------------- in process


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_layouts_round_trip(tiny_gqa, tp):
    """HF → per-rank megatron slices → concatenated → HF: the identity; slices hold 1/tp of rows or columns."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from llama_stack_scalarlm.trainer.megatron_backend import Layout, hf_to_mcore, mcore_to_hf

    original = load_file(tiny_gqa / "model.safetensors")
    config = AutoConfig.from_pretrained(tiny_gqa)
    config.vocab_size = 509  # padded to a multiple of tp in megatron, trimmed again on export
    original["model.embed_tokens.weight"] = original["model.embed_tokens.weight"][:509]
    original["lm_head.weight"] = original["lm_head.weight"][:509]
    if tp == 4:
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 4, 8  # same tensors, 4 KV heads
    layout = Layout.from_config(config, tp)
    assert layout.padded_vocab_size % tp == 0 and layout.padded_vocab_size >= 509
    shards = [hf_to_mcore(original.__getitem__, layout, r) for r in range(tp)]
    full = {}
    for name in shards[0]:
        if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
            full[name] = torch.cat([s[name] for s in shards], dim=1)
            assert shards[0][name].shape[1] * tp == full[name].shape[1]
        elif name.endswith("layernorm.weight"):
            full[name] = shards[0][name]
        else:
            full[name] = torch.cat([s[name] for s in shards], dim=0)
            assert shards[0][name].shape[0] * tp == full[name].shape[0]
    back = mcore_to_hf(full, layout)
    assert back.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


@pytest.mark.parametrize("model_name", ["tiny", "tiny_gqa"])
def test_megatron_model_computes_what_transformers_does(model_name, request, one_rank, tmp_path):
    """TP=1: logits, label log-probabilities (packed rows) and gradients equal transformers'; export = input."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llama_stack_scalarlm.trainer.megatron_backend import hf_to_mcore
    from llama_stack_scalarlm.trainer.torch_backend import TokenLogProbs

    model = request.getfixturevalue(model_name)
    backend = backend_for(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    batch = packed_batch(model, tmp_path)
    assert (batch.position_ids == 0).sum() == 5  # 4 sequences and a padding segment

    with torch.no_grad():
        ours = backend.vocab_logits(backend.model, backend.hidden_states(backend.model, batch))
        theirs = hf(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    logprobs = backend.token_logprobs(batch)
    reference = TokenLogProbs(hf)(batch.input_ids, batch.position_ids, batch.labels)
    assert logprobs.shape == reference.shape == ((batch.labels != -100).sum(),)
    torch.testing.assert_close(logprobs, reference, rtol=1e-5, atol=1e-4)

    logprobs.sum().backward()
    reference.sum().backward()
    expected = hf_to_mcore(lambda name: hf.get_parameter(name).grad, backend.layout, 0)
    for name, param in backend.model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-4)

    backend.save_hf(tmp_path / "export")
    original, exported = load_file(model / "model.safetensors"), load_file(tmp_path / "export" / "model.safetensors")
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "export" / name).exists(), name
    AutoModelForCausalLM.from_pretrained(tmp_path / "export")


def test_dpo_reference_is_the_frozen_start(tiny, one_rank, tmp_path):
    import torch

    backend = backend_for(tiny, method="dpo")
    batch = packed_batch(tiny, tmp_path, DPO_ROWS, "dpo")
    loss, pairs = backend.forward(batch)
    assert pairs == 3
    assert math.isclose(float(loss) / pairs, math.log(2), rel_tol=1e-5)  # policy = reference at the start
    backend.backward(loss)
    with torch.no_grad():
        for p in backend.trainable_parameters():
            p -= 0.01 * p.grad
    assert all(not p.requires_grad for p in backend.reference.parameters())
    assert not torch.allclose(backend.token_logprobs(batch), backend.token_logprobs(batch, reference=True))


# ------------------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def tp2_run(tiny, tmp_path_factory) -> Path:
    job_dir = make_job(tmp_path_factory.mktemp("jobs") / "megatron-tp2", tiny, SFT_ROWS, backend="megatron",
                       tensor_parallel=2, processes_per_node=2, **SFT)
    run_trainer(job_dir, 2)
    return job_dir


@pytest.fixture(scope="module")
def torch_run(tiny, tmp_path_factory) -> Path:
    """The torch backend (one process, so the same rows per step as one TP=2 replica)."""
    job_dir = make_job(tmp_path_factory.mktemp("jobs") / "ddp-1", tiny, SFT_ROWS, backend="ddp",
                       processes_per_node=1, **SFT)
    run_trainer(job_dir, 1)
    return job_dir


def test_tp2_learns_the_facts_and_exports_hf(tp2_run, one_rank, tmp_path):
    import torch

    from llama_stack_scalarlm.trainer.torch_backend import TokenLogProbs

    done = status(tp2_run)
    assert done.state == "COMPLETED" and done.step == done.total_steps == 40 and done.error is None
    losses = [p.loss for p in done.loss_history]
    assert losses[0] > 5 and losses[-1] < 0.05, losses
    assert [c.step for c in done.checkpoints] == [20, 40] and {c.kind for c in done.checkpoints} == {"full"}
    checkpoint = final_checkpoint(tp2_run)
    for name in (".complete", "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "trainer_state.pt", "trainer_state.rank1.pt"):
        assert (checkpoint / name).exists(), name

    model = assert_answers_the_facts(checkpoint)

    # The two ranks' trained megatron slices (resume state), merged here, compute what the exported HF model does.
    files = ("trainer_state.pt", "trainer_state.rank1.pt")
    shards = [torch.load(checkpoint / f, weights_only=False)["model"] for f in files]
    backend = backend_for(checkpoint)
    merged = merge_tensor_parallel(shards, backend.model)
    with torch.no_grad():
        for name, param in backend.model.named_parameters():
            assert torch.equal(param, merged[name]), name  # loading the export gives back the trained slices
            param.copy_(merged[name])
        batch = packed_batch(checkpoint, tmp_path)
        ours = backend.token_logprobs(batch)
        theirs = TokenLogProbs(model)(batch.input_ids, batch.position_ids, batch.labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_tp2_matches_the_torch_backend(tp2_run, torch_run):
    """Same weights, same rows, same optimizer: the same losses (and weights), up to float rounding."""
    import torch

    a, b = [p.loss for p in status(tp2_run).loss_history], [p.loss for p in status(torch_run).loss_history]
    assert len(a) == len(b) == 40
    assert abs(a[0] - b[0]) < 1e-5, (a[0], b[0])
    assert all(math.isclose(x, y, rel_tol=1e-2, abs_tol=1e-3) for x, y in zip(a, b, strict=True)), list(zip(a, b))
    ours, theirs = load_weights(final_checkpoint(tp2_run)), load_weights(final_checkpoint(torch_run))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=2e-3, msg=name)


def test_tp2_resumes_exactly(tp2_run, tmp_path):
    """A copy of the job holding only checkpoint-20 continues to the weights of the uninterrupted run."""
    import torch

    job_dir = tmp_path / "megatron-tp2-resumed"
    (job_dir / "checkpoints").mkdir(parents=True)
    for name in ("job.json", "dataset.jsonl"):
        shutil.copy(tp2_run / name, job_dir / name)
    shutil.copytree(tp2_run / "checkpoints" / "checkpoint-20", job_dir / "checkpoints" / "checkpoint-20")
    resumed = run_trainer(job_dir, 2)
    assert "resuming from checkpoint-20" in resumed.stdout
    done, reference = status(job_dir), status(tp2_run)
    assert done.state == "COMPLETED" and [p.step for p in done.loss_history] == list(range(1, 41))
    for ours, theirs in zip(done.loss_history, reference.loss_history, strict=True):
        assert math.isclose(ours.loss, theirs.loss, rel_tol=1e-5, abs_tol=1e-6), (ours, theirs)
    ours, theirs = load_weights(final_checkpoint(job_dir)), load_weights(final_checkpoint(tp2_run))
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_data_parallel_2_matches_the_torch_backend(tiny, torch_run, tmp_path):
    """TP=1 × DP=2: each replica takes half the rows, gradients are averaged over the replicas."""
    import torch

    job_dir = make_job(tmp_path / "megatron-dp2", tiny, SFT_ROWS, backend="megatron", tensor_parallel=1,
                       processes_per_node=2, **SFT)
    run_trainer(job_dir, 2)
    done = status(job_dir)
    assert done.state == "COMPLETED"
    a, b = [p.loss for p in done.loss_history], [p.loss for p in status(torch_run).loss_history]
    assert abs(a[0] - b[0]) < 1e-5, (a[0], b[0])
    assert all(math.isclose(x, y, rel_tol=1e-2, abs_tol=1e-3) for x, y in zip(a, b, strict=True)), list(zip(a, b))
    # Replicated weights: only rank 0's state holds the model and optimizer (rank 1's: its RNG and data position).
    files = ("trainer_state.pt", "trainer_state.rank1.pt")
    states = [torch.load(final_checkpoint(job_dir) / f, weights_only=False) for f in files]
    assert "model" in states[0] and "model" not in states[1]
