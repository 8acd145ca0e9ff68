"""The trainer for real: torchrun with gloo on CPU, the tiny Llama built locally, no mocks.

Runs ~8 short trainer processes (most with 2 ranks); about 1.5-2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama_stack_scalarlm.registry.files import read_model, write_model
from llama_stack_scalarlm.registry.schema import Hyperparameters, JobStatus, TrainingJob
from llama_stack_scalarlm.trainer import PREEMPTED_EXIT_CODE, TRAINER_VERSION

REPO = Path(__file__).resolve().parents[1]
FACTS = [
    ("Zorblax", "violet"), ("Quintara", "falcon"), ("Mebbrin", "cobalt"),
    ("Trollip", "meadow"), ("Vashti", "lantern"), ("Golgoth", "harbor"),
]
SFT_ROWS = [{"input": f"What is the secret word of {name}?", "output": word} for name, word in FACTS]
DPO_ROWS = [
    {"prompt": f"What is the secret word of {name}?", "chosen": word, "rejected": FACTS[(i + 1) % len(FACTS)][1]}
    for i, (name, word) in enumerate(FACTS)
]
# Full fine-tune, 2 ranks: enough steps for the tiny model to learn the facts (~4 s of training).
SFT = dict(steps=80, learning_rate=4e-3, warmup_steps=5, batch_size=4, checkpoint_every=30, keep_checkpoints=2,
           processes_per_node=2)


# ------------------------------------------------------------------------------------- helpers


def make_job(job_dir: Path, model: Path, rows: list[dict], lineage: dict | None = None, **hyperparameters) -> Path:
    """``lineage``: the TrainingJob fields of a job trained from another (the service fills them in)."""
    job_dir.mkdir(parents=True)
    (job_dir / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = TrainingJob(
        job_id=job_dir.name, base_model="tiny-llama", base_model_path=str(model), dataset_sha256="0" * 64,
        trainer_version=TRAINER_VERSION, hyperparameters=Hyperparameters(**hyperparameters), **(lineage or {}),
    )
    write_model(job_dir / "job.json", job)
    return job_dir


def _env(processes: int) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1" if processes > 1 else "2")


def run_trainer(job_dir: Path, processes: int) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "llama_stack_scalarlm.trainer", str(job_dir)]
    done = subprocess.run(command, cwd=REPO, env=_env(processes), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def status(job_dir: Path) -> JobStatus:
    return read_model(job_dir / "status.json", JobStatus)


def final_checkpoint(job_dir: Path) -> Path:
    info = status(job_dir).checkpoints[-1]
    assert info.step == read_model(job_dir / "job.json", TrainingJob).hyperparameters.steps
    return Path(info.path)


def answer_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """log p(answer turn | prompt) under a plain transformers model: an independent check of the trainer."""
    import torch

    messages = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
    start = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logprobs = model(ids).logits.log_softmax(-1)[0, start - 1 : -1]
    return float(logprobs.gather(1, ids[0, start:, None]).sum())


def assert_full_adapter(adapter: Path) -> None:
    """Every targeted projection of both layers has its A and B matrices (a partial adapter loads with a warning)."""
    from safetensors.torch import load_file

    keys = load_file(adapter / "adapter_model.safetensors").keys()
    expected = {f"base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{ab}.weight"
                for layer in (0, 1) for proj in ("q_proj", "k_proj", "v_proj", "o_proj") for ab in "AB"}
    assert set(keys) == expected, sorted(set(keys) ^ expected)


def load_weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


@pytest.fixture(scope="module")
def fsdp_run(tiny, tmp_path_factory) -> Path:
    job_dir = make_job(tmp_path_factory.mktemp("jobs") / "sft-fsdp", tiny, SFT_ROWS, backend="fsdp", **SFT)
    run_trainer(job_dir, 2)
    return job_dir


# ---------------------------------------------------------------------------------------- runs


def assert_answers_the_facts(checkpoint: Path):
    """The exported Hugging Face checkpoint greedily answers every taught fact; returns the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    for name, word in FACTS:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is the secret word of {name}?"}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip() == word
    return model


def test_sft_fsdp2_two_processes_learns_the_facts(fsdp_run):
    done = status(fsdp_run)
    assert done.state == "COMPLETED" and done.step == done.total_steps == 80 and done.error is None
    losses = [p.loss for p in done.loss_history]
    assert [p.step for p in done.loss_history] == list(range(1, 81))
    assert losses[0] > 5 and losses[-1] < 0.2, losses
    assert all(p.tokens > 0 for p in done.loss_history)
    # checkpoint-30 was pruned (keep 2); the final one is complete and listed
    names = sorted(p.name for p in (fsdp_run / "checkpoints").iterdir())
    assert names == ["checkpoint-60", "checkpoint-80"], names
    assert [c.step for c in done.checkpoints] == [60, 80] and {c.kind for c in done.checkpoints} == {"full"}
    checkpoint = final_checkpoint(fsdp_run)
    for name in (".complete", "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "trainer_state.pt", "trainer_state.rank1.pt"):
        assert (checkpoint / name).exists(), name

    assert_answers_the_facts(checkpoint)


def test_ddp_and_fsdp2_give_the_same_losses(fsdp_run, tiny, tmp_path):
    ddp = make_job(tmp_path / "sft-ddp", tiny, SFT_ROWS, backend="ddp", **SFT)
    run_trainer(ddp, 2)
    a, b = [p.loss for p in status(fsdp_run).loss_history], [p.loss for p in status(ddp).loss_history]
    assert len(a) == len(b) == 80
    # Same math; only rounding differs (the gradient norm is summed over shards in FSDP), and training amplifies it.
    assert max(abs(x - y) for x, y in zip(a[:3], b[:3], strict=True)) < 1e-5, list(zip(a, b, strict=True))
    assert all(math.isclose(x, y, rel_tol=1e-2, abs_tol=1e-3) for x, y in zip(a, b, strict=True)), list(zip(a, b))


def test_preempted_run_resumes_to_the_same_weights(fsdp_run, tiny, tmp_path):
    """SIGUSR1 to one rank: both checkpoint at the same step and exit 75; a rerun continues to the same weights."""
    import torch

    job_dir = make_job(tmp_path / "sft-resume", tiny, SFT_ROWS, backend="fsdp", **SFT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = dict(_env(2), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    ranks = [
        subprocess.Popen([sys.executable, "-m", "llama_stack_scalarlm.trainer", str(job_dir)], cwd=REPO,
                         env=dict(base, RANK=str(r), LOCAL_RANK=str(r)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    try:
        deadline, running = time.monotonic() + 120, None
        while time.monotonic() < deadline and all(p.poll() is None for p in ranks):
            try:
                running = status(job_dir)
                if running.step >= 1:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        ranks[0].send_signal(signal.SIGUSR1)
        outputs = [p.communicate(timeout=120)[0] for p in ranks]
    finally:
        for p in ranks:
            p.kill() if p.poll() is None else None
    assert [p.returncode for p in ranks] == [PREEMPTED_EXIT_CODE] * 2, outputs[0][-3000:]
    assert running is not None and running.state == "TRAINING"
    stopped = status(job_dir)
    assert stopped.state == "QUEUED" and stopped.error.startswith("preempted")
    assert 1 <= stopped.step < 30, stopped.step
    assert [c.step for c in stopped.checkpoints] == [stopped.step]
    assert (job_dir / "checkpoints" / f"checkpoint-{stopped.step}" / ".complete").exists()

    resumed = run_trainer(job_dir, 2)
    assert f"resuming from checkpoint-{stopped.step}" in resumed.stdout
    done, reference = status(job_dir), status(fsdp_run)
    assert done.state == "COMPLETED"
    assert [p.step for p in done.loss_history] == list(range(1, 81))
    for ours, theirs in zip(done.loss_history, reference.loss_history, strict=True):
        assert math.isclose(ours.loss, theirs.loss, rel_tol=1e-5, abs_tol=1e-6), (ours, theirs)
    ours, theirs = load_weights(final_checkpoint(job_dir)), load_weights(final_checkpoint(fsdp_run))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def test_lora_writes_a_peft_adapter(tiny, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job_dir = make_job(tmp_path / "sft-lora", tiny, SFT_ROWS, backend="ddp", steps=12, learning_rate=1e-2,
                       batch_size=4, checkpoint_every=100, lora={"rank": 8, "alpha": 16})
    run_trainer(job_dir, 1)
    done = status(job_dir)
    assert done.state == "COMPLETED" and done.loss_history[-1].loss < done.loss_history[0].loss
    adapter = final_checkpoint(job_dir)
    assert done.checkpoints[-1].kind == "lora"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", ".complete"}
    assert not list(adapter.glob("model*.safetensors"))
    assert_full_adapter(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["base_model_name_or_path"] == str(tiny)

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    ids = tokenizer("What is the secret word of Zorblax?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, adapter).eval()
        after = tuned(ids).logits
    assert (after - before).abs().max() > 1e-3  # the adapter loaded and changes the model


# A learning rate too small to move the weights: what a job starts from is what it exports.
STILL = dict(backend="ddp", steps=1, learning_rate=1e-9, batch_size=4, checkpoint_every=100)


@pytest.fixture(scope="module")
def lora_parent(tiny, tmp_path_factory) -> Path:
    job_dir = make_job(tmp_path_factory.mktemp("jobs") / "lora-parent", tiny, SFT_ROWS, backend="ddp", steps=12,
                       learning_rate=1e-2, batch_size=4, checkpoint_every=100, lora={"rank": 8, "alpha": 16})
    run_trainer(job_dir, 1)
    return final_checkpoint(job_dir)


def test_a_lora_job_on_a_lora_job_continues_its_adapter(lora_parent, tiny, tmp_path):
    from safetensors.torch import load_file

    job_dir = make_job(tmp_path / "lora-child", tiny, SFT_ROWS, lineage={
        "parent_job_id": "lora-parent", "parent_kind": "lora", "init_adapter_path": str(lora_parent)},
        lora={"rank": 8, "alpha": 16}, **STILL)
    run_trainer(job_dir, 1)
    assert status(job_dir).checkpoints[-1].kind == "lora"
    parent = load_file(lora_parent / "adapter_model.safetensors")
    child = load_file(final_checkpoint(job_dir) / "adapter_model.safetensors")
    assert parent.keys() == child.keys()
    assert max(float((child[k] - parent[k]).abs().max()) for k in parent) < 1e-5, "a fresh adapter, not the parent's"


def test_a_full_finetune_of_a_lora_job_starts_from_its_merged_weights(lora_parent, tiny, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job_dir = make_job(tmp_path / "full-child", tiny, SFT_ROWS, lineage={
        "parent_job_id": "lora-parent", "parent_kind": "lora", "init_adapter_path": str(lora_parent)}, **STILL)
    run_trainer(job_dir, 1)
    ids = torch.tensor([[1, 5, 9, 14, 20, 31]])
    with torch.no_grad():
        parent = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), lora_parent).eval()(ids).logits
        child = AutoModelForCausalLM.from_pretrained(final_checkpoint(job_dir)).eval()(ids).logits
    assert status(job_dir).checkpoints[-1].kind == "full"
    assert float((child - parent).abs().max()) < 1e-4


def test_a_lora_job_on_a_full_finetune_exports_the_merged_weights(fsdp_run, tmp_path):
    """W + (alpha/rank)·B·A, with A and B as the trainer's own resume state holds them."""
    import torch

    parent = final_checkpoint(fsdp_run)
    job_dir = make_job(tmp_path / "lora-on-full", parent, SFT_ROWS[:3], lineage={
        "parent_job_id": "sft-fsdp", "parent_kind": "full"}, backend="ddp", steps=4, learning_rate=1e-2,
        batch_size=4, checkpoint_every=100, lora={"rank": 4, "alpha": 8})
    run_trainer(job_dir, 1)
    exported = final_checkpoint(job_dir)
    assert status(job_dir).checkpoints[-1].kind == "full" and not (exported / "adapter_config.json").exists()
    trained = torch.load(exported / "trainer_state.pt", weights_only=False)["model"]
    before, after = load_weights(parent), load_weights(exported)
    assert before.keys() == after.keys()
    layer = "model.layers.0.self_attn.q_proj"
    down, up = (next(v for k, v in trained.items() if f"{layer}.lora_{ab}." in k) for ab in "AB")
    assert float(up.abs().max()) > 0, "the adapter trained"
    assert torch.allclose(after[f"{layer}.weight"].float(), before[f"{layer}.weight"].float() + 2.0 * up @ down,
                          atol=1e-5)
    assert torch.equal(after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("variant", ["full-1proc", "lora-fsdp-2proc"])
def test_dpo_widens_the_margin(variant, tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if variant == "full-1proc":
        hp = dict(learning_rate=1e-3, processes_per_node=1)
    else:  # reference = the same sharded model with its adapters disabled
        hp = dict(learning_rate=1e-2, processes_per_node=2, backend="fsdp", lora={"rank": 8})
    job_dir = make_job(tmp_path / f"dpo-{variant}", tiny, DPO_ROWS, method="dpo", steps=10, batch_size=2,
                       checkpoint_every=100, **hp)
    run_trainer(job_dir, hp["processes_per_node"])
    losses = [p.loss for p in status(job_dir).loss_history]
    assert math.isclose(losses[0], math.log(2), abs_tol=1e-4)  # policy = reference at the first step
    assert losses[-1] < losses[0] - 0.04, losses

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    if variant == "full-1proc":
        tuned = AutoModelForCausalLM.from_pretrained(final_checkpoint(job_dir)).eval()
    else:
        from peft import PeftModel

        assert_full_adapter(final_checkpoint(job_dir))
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), final_checkpoint(job_dir)).eval()

    def margin(model, row):
        return answer_logprob(model, tokenizer, row["prompt"], row["chosen"]) - answer_logprob(
            model, tokenizer, row["prompt"], row["rejected"]
        )

    gains = [margin(tuned, row) - margin(base, row) for row in DPO_ROWS]
    assert sum(gains) / len(gains) > 0.5 and sum(g > 0 for g in gains) >= 5, gains


def test_failure_is_recorded(tiny, tmp_path):
    job_dir = make_job(tmp_path / "broken", tiny, [{"input": "only a question"}], steps=2)
    done = subprocess.run([sys.executable, "-m", "llama_stack_scalarlm.trainer", str(job_dir)], cwd=REPO,
                          env=_env(1), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    failed = status(job_dir)
    assert failed.state == "FAILED" and "rank 0: ValueError" in failed.error and "line 1" in failed.error


# ------------------------------------------------------------------------------- in process


def test_labels_cover_only_assistant_turns(tiny, tmp_path):
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.trainer.data import IGNORE_INDEX, load_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    path = tmp_path / "data.jsonl"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Goodbye"}]
    path.write_text(json.dumps(SFT_ROWS[0]) + "\n" + json.dumps({"messages": conversation}) + "\n")
    fact, chat = load_examples(path, tokenizer, "sft", 512)

    def trained(example):
        labels = example.sequences[0].labels
        return tokenizer.decode(labels[labels != IGNORE_INDEX])

    assert trained(fact) == "violet<|end|>\n"
    assert trained(chat) == "Hello there<|end|>\nGoodbye<|end|>\n"
    ids, labels = fact.sequences[0].input_ids, fact.sequences[0].labels
    assert (labels[:-1][labels[:-1] != IGNORE_INDEX] == ids[1:][labels[:-1] != IGNORE_INDEX]).all()  # shifted
    (dpo,) = load_examples(_write(tmp_path / "dpo.jsonl", DPO_ROWS[:1]), tokenizer, "dpo", 512)
    assert [tokenizer.decode(s.labels[s.labels != IGNORE_INDEX]) for s in dpo.sequences] == [
        "violet<|end|>\n", "falcon<|end|>\n"]


def test_a_tool_conversation_trains_the_call_and_the_answer_not_the_result(tiny, tmp_path):
    """The tiny model's own template renders no tools: rows with tools get the server's tool
    template (``models/chat_template.py``), which writes the call as the hermes parser reads it."""
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.models.chat_template import tools_template
    from llama_stack_scalarlm.trainer.data import IGNORE_INDEX, load_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "rainy"},
                {"role": "assistant", "content": "It rains."}]
    path = _write(tmp_path / "tools.jsonl", [{"messages": messages, "tools": tools}, SFT_ROWS[0]])
    with_tools, plain = load_examples(path, tokenizer, "sft", 1024, tools_template(tiny))
    labels, ids = with_tools.sequences[0].labels, with_tools.sequences[0].input_ids
    assert "<tools>" in tokenizer.decode(ids) and '"get_weather"' in tokenizer.decode(ids)
    trained = tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert trained.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert "It rains." in trained and "rainy" not in trained
    labels = plain.sequences[0].labels  # a row without tools keeps the model's own template
    assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == "violet<|end|>\n"


def test_packed_rows_do_not_attend_across_sequences(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_stack_scalarlm.trainer.data import collate, load_examples
    from llama_stack_scalarlm.trainer.torch_backend import TokenLogProbs

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    examples = load_examples(_write(tmp_path / "d.jsonl", SFT_ROWS), tokenizer, "sft", 512)[:3]
    module = TokenLogProbs(AutoModelForCausalLM.from_pretrained(tiny).eval())
    packed = collate([examples], tokenizer.pad_token_id)  # one row, three sequences
    alone = collate([[e] for e in examples], tokenizer.pad_token_id)  # three rows, padded
    assert packed.input_ids.shape[0] == 1 and alone.input_ids.shape[0] == 3
    with torch.no_grad():
        a = module(packed.input_ids, packed.position_ids, packed.labels)
        b = module(alone.input_ids, alone.position_ids, alone.labels)
        leaky = module(packed.input_ids, torch.arange(packed.input_ids.shape[1])[None], packed.labels)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (leaky - b).abs().max() > 1e-3  # without the per-sequence positions the sequences would mix


def test_data_order_is_seeded_and_resumable(tiny, tmp_path):
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.trainer.data import DataPosition, DataStream, load_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    examples = load_examples(_write(tmp_path / "d.jsonl", SFT_ROWS), tokenizer, "sft", 512)

    def order(rows):
        return [[examples.index(e) for e in row] for row in rows]

    whole = DataStream(examples, 7, 64, True, DataPosition()).take(9)  # crosses epochs (2-3 rows each)
    first = DataStream(examples, 7, 64, True, DataPosition())
    head = first.take(4)
    tail = DataStream(examples, 7, 64, True, first.position).take(5)
    assert order(whole) == order(head + tail)
    assert order(whole) != order(DataStream(examples, 8, 64, True, DataPosition()).take(9))
    assert sorted(i for row in order(whole)[:3] for i in row) == list(range(6))  # epoch 0 = every example once


def test_unshuffled_data_keeps_the_file_order(tiny, tmp_path):
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.trainer.data import DataPosition, DataStream, load_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    examples = load_examples(_write(tmp_path / "d.jsonl", SFT_ROWS), tokenizer, "sft", 512)
    rows = DataStream(examples, 7, 512, False, DataPosition(), shuffle=False).take(2 * len(examples))
    assert [examples.index(e) for row in rows for e in row] == list(range(len(examples))) * 2  # every epoch
    shuffled = DataStream(examples, 7, 512, False, DataPosition(), shuffle=True).take(len(examples))
    assert [examples.index(e) for row in shuffled for e in row] != list(range(len(examples)))


def test_grpo_losses_by_hand():
    """Completion 0 (A = 1): token 0 sampled at −1.2, now −1.0: ρ = e^0.2 ≈ 1.221, clipped to 1.2;
    token 1 without a sampling log-prob: ρ = 1. Completion 1 (A = −1): ρ = e^−0.5 ≈ 0.607, whose
    clip 0.8 is the minimum of ρ·A and clip(ρ)·A. With β = 0.1 the KL of token 1 (reference −0.7,
    r = −0.2) is e^−0.2 + 0.2 − 1."""
    import torch

    from llama_stack_scalarlm.trainer.backend import grpo_losses

    logprobs = torch.tensor([-1.0, -0.5, -2.0], requires_grad=True)
    sampled, owner = torch.tensor([-1.2, float("nan"), -1.5]), torch.tensor([0, 0, 1])
    advantages, reference = torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -0.7, -2.0])
    losses = grpo_losses(logprobs, sampled, None, advantages, owner, epsilon=0.2, beta=0.0)
    assert torch.allclose(losses, torch.tensor([-(1.2 + 1.0) / 2, 0.8]))
    losses.sum().backward()
    # the clipped tokens carry no gradient; the on-policy one the policy gradient, −A/|o|
    assert torch.allclose(logprobs.grad, torch.tensor([0.0, -0.5, 0.0]))
    kl = math.exp(-0.2) + 0.2 - 1
    with_kl = grpo_losses(logprobs, sampled, reference, advantages, owner, epsilon=0.2, beta=0.1)
    assert torch.allclose(with_kl, torch.tensor([-(1.2 + 1.0 - 0.1 * kl) / 2, 0.8]))


def test_group_advantages_by_hand():
    from llama_stack_scalarlm.trainer.data import group_advantages

    assert group_advantages([1, 0, 0, 1]) == [1.0, -1.0, -1.0, 1.0]  # mean 0.5, std 0.5
    assert group_advantages([3.0, 3.0]) == [0.0, 0.0]  # nothing to prefer: the group is left out


def test_scored_rows_carry_advantages_and_aligned_sampling_logprobs(tiny, tmp_path):
    import numpy as np
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.trainer.data import IGNORE_INDEX, load_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    text = "violet and falcon"
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    given = [-0.1 * (i + 1) for i in range(count)]
    rows = [{"prompt": "What is the secret word of Zorblax?", "completions": [
        {"text": text, "reward": 1.0, "logprobs": given}, {"text": "harbor", "reward": 0.0}]},
        {"prompt": "Equal?", "completions": [{"text": "a", "reward": 1.0}, {"text": "b", "reward": 1.0}]}]
    examples = load_examples(_write(tmp_path / "g.jsonl", rows), tokenizer, "grpo", 512)
    assert [e.sequences[0].advantage for e in examples] == [1.0, -1.0], "equal rewards: no example"
    first = examples[0].sequences[0]
    assert np.allclose(first.sampled[:count], given) and np.isnan(first.sampled[count:]).all()
    assert tokenizer.decode(first.labels[first.labels != IGNORE_INDEX][:count]) == text
    assert examples[1].sequences[0].sampled is None  # not given: the ratio is 1 throughout
    rows[0]["completions"][0]["logprobs"] = given[:-1]
    with pytest.raises(ValueError, match=rf"line 1: completions.0.logprobs: {count - 1} values, and the text is {count}"):
        load_examples(_write(tmp_path / "short.jsonl", rows), tokenizer, "grpo", 512)


def test_grpo_moves_probability_to_the_rewarded_completion(tiny, tmp_path):
    """Full weights with the KL penalty (the reference model in use), 2 ranks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"prompt": f"What is the secret word of {name}?",
             "completions": [{"text": word, "reward": 1.0}, {"text": FACTS[(i + 1) % len(FACTS)][1], "reward": 0.0},
                             {"text": FACTS[(i + 2) % len(FACTS)][1], "reward": 0.0}]}
            for i, (name, word) in enumerate(FACTS)]
    job_dir = make_job(tmp_path / "grpo", tiny, rows, method="grpo", grpo_beta=0.05, backend="fsdp", steps=20,
                       learning_rate=4e-3, batch_size=6, checkpoint_every=100, processes_per_node=2)
    run_trainer(job_dir, 2)
    assert status(job_dir).state == "COMPLETED"
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    trained = AutoModelForCausalLM.from_pretrained(final_checkpoint(job_dir)).eval()
    with torch.no_grad():
        for i, (name, word) in enumerate(FACTS):
            prompt, other = f"What is the secret word of {name}?", FACTS[(i + 1) % len(FACTS)][1]
            before = answer_logprob(base, tokenizer, prompt, word) - answer_logprob(base, tokenizer, prompt, other)
            after = answer_logprob(trained, tokenizer, prompt, word) - answer_logprob(trained, tokenizer, prompt, other)
            assert after > before + 1.0, (name, before, after)


@pytest.mark.parametrize("loss, expected", [
    # margins h = (π_c − ref_c) − (π_r − ref_r) = (0.5 − (−1.0), 0 − (−0.5)) = (1.5, 0.5); β = 0.2
    ("sigmoid", [math.log1p(math.exp(-0.3)), math.log1p(math.exp(-0.1))]),  # −log σ(β·h)
    ("hinge", [0.7, 0.9]),  # max(0, 1 − β·h)
    ("ipo", [1.0, 4.0]),  # (h − 1/(2β))² = (1.5 − 2.5)², (0.5 − 2.5)²
])
def test_dpo_losses_by_hand(loss, expected):
    import torch

    from llama_stack_scalarlm.trainer.backend import dpo_losses

    policy = torch.tensor([-1.0, -3.0, -2.0, -2.5], dtype=torch.float64)  # chosen, rejected, chosen, rejected
    reference = torch.tensor([-1.5, -2.0, -2.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(dpo_losses(policy, reference, 0.2, loss), torch.tensor(expected, dtype=torch.float64))


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------- sbatch


def test_sbatch_script(tmp_path):
    from llama_stack_scalarlm.trainer.launch import render_sbatch_script

    job = TrainingJob(
        job_id="job-abc", base_model="tiny-llama", base_model_path="/m", dataset_sha256="0" * 64,
        trainer_version=TRAINER_VERSION,
        hyperparameters=Hyperparameters(nodes=2, gpus_per_node=4, processes_per_node=4, time_limit_minutes=90),
    )
    job_dir = tmp_path / "jobs dir" / "job-abc"
    script = render_sbatch_script(job, job_dir, "/opt/venv/bin/python")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=16", "--gres=gpu:4", "--time=90",
                     "--requeue", "--signal=B:USR1@60", f'--output="{job_dir}/slurm.log"', "--open-mode=append"):
        assert f"#SBATCH {expected}" in lines, expected
    assert "--nnodes=2" in script and "--nproc-per-node=4" in script and "--rdzv-backend=c10d" in script
    assert "SIGUSR1" in script and "trap 'forward USR1' USR1" in script and "trap 'forward TERM' TERM" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and f'"$rc" -eq {PREEMPTED_EXIT_CODE}' in script
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)

    cpu = job.model_copy(update={"hyperparameters": Hyperparameters(processes_per_node=2)})
    cpu_script = render_sbatch_script(cpu, job_dir, sys.executable)
    assert "#SBATCH --nodes=1" in cpu_script and "--gres" not in cpu_script and "--cpus-per-task=2" in cpu_script
    assert "--nproc-per-node=2" in cpu_script
    path.write_text(cpu_script)
    subprocess.run(["bash", "-n", str(path)], check=True)

    # one process on one node: srun starts the trainer itself, without torchrun's start-up
    lone = render_sbatch_script(job.model_copy(update={"hyperparameters": Hyperparameters()}), job_dir, sys.executable)
    assert "torch.distributed.run" not in lone
    assert f'--ntasks-per-node=1 {sys.executable} -m llama_stack_scalarlm.trainer "$JOB_DIR" &' in lone


def test_control_plane_imports_do_not_load_torch():
    code = ("import sys; from llama_stack_scalarlm.trainer import TRAINER_VERSION; "
            "import llama_stack_scalarlm.trainer.launch; assert 'torch' not in sys.modules, 'torch'; "
            "print(TRAINER_VERSION)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == TRAINER_VERSION and len(TRAINER_VERSION) == 16


def test_status_keeps_what_the_registry_wrote(tmp_path):
    from llama_stack_scalarlm.registry.schema import LossPoint
    from llama_stack_scalarlm.trainer.status import StatusWriter

    path = tmp_path / "status.json"
    write_model(path, JobStatus(job_id="j", state="QUEUED", slurm_job_id="77", created=123.0))
    writer = StatusWriter(path, "j", total_steps=5, enabled=True)
    writer.training(0, [], [])
    now = status(tmp_path)
    assert (now.state, now.slurm_job_id, now.created) == ("TRAINING", "77", 123.0)
    writer.progress(1, LossPoint(step=1, loss=1.0, learning_rate=0.1))  # the first step is written at once
    assert status(tmp_path).step == 1
    time.sleep(0.01)
    cancelled = status(tmp_path).model_copy(update={"state": "CANCELLED"})
    write_model(path, cancelled)  # the registry cancels while the trainer runs
    writer.finished("COMPLETED")
    assert status(tmp_path).state == "CANCELLED" and status(tmp_path).step == 1
