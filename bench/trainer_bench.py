"""Trainer vs. a bare PyTorch loop on the same model and the same batches: training tokens/s.

Trainer: ``python -m llama_stack_scalarlm.trainer JOB_DIR`` run for real as a subprocess (one
process, no torchrun, as a 1-process job runs), on a job dir written the way the registry writes it
(``job.json`` + ``dataset.jsonl``). Its tokens/s is taken from the ``loss_history`` it writes to
``status.json`` (per-step tokens and elapsed time): the steps after the warm-up, so process
start-up, imports, model loading, tokenization and the final checkpoint are excluded, and
everything the loop does per step is included (LR schedule, data stream + packing + collation,
forward/backward, clip, AdamW, zero_grad, the per-step all_reduce, status.json writes, logging).

Baseline, measured in this process in the same run: the same HF weights loaded from the same model
directory, the same packed micro-batches (built by calling the trainer's own data functions on the
same dataset.jsonl, so the tokens are identical; built before timing), AdamW with the same settings
(fused, same LR schedule, same weight-decay groups), and per step: forward (decoder, LM head at the
label positions, summed cross-entropy / label tokens — the math the trainer does, written inline),
backward, clip_grad_norm_, step, zero_grad.

The two sides are measured in interleaved pairs (bare loop and trainer run back to back, a fresh
job dir for every trainer run); the headline is the median of the per-pair ratios, with their
spread, and the same for the median of per-step tokens/s (less moved by bursts of load from other
processes). Also measured once, for reference: the loop one would write with the HF model's plain
forward (full-vocabulary logits at every position), which the trainer's label-positions-only LM
head avoids.

The per-step losses of the trainer and the bare loop are compared as a check that both trained on
the same tokens with the same math.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {  # steps, warm-up steps, batch size (rows per step), max_seq_len (tokens per packed row)
    "tiny-llama": (60, 10, 4, 512),
    "SmolLM2-135M-Instruct": (6, 2, 2, 256),
}
WORDS = (
    "the a of to and in is was for on that with as by at from it this be are or his her which an have had not but "
    "they one all were we when there can more if no out so said what up its about into than them capital city "
    "country river mountain color number name answer question true false yes paris france zebra violet orbit "
    "quartz meadow lantern falcon harbor cobalt tundra"
).split()


def dataset_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows of varied lengths (a question of 8-80 words, an answer of 4-120), so packing has work."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 80)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 120)))
        rows.append({"input": question + "?", "output": answer + "."})
    return rows


def model_dir(name: str, root: Path) -> Path:
    from llama_stack_scalarlm.models.builtin import build_tiny_llama, ensure_model
    from llama_stack_scalarlm.models.store import ModelStore

    if name == "tiny-llama":
        out = root / "tiny-llama"
        out.mkdir()
        build_tiny_llama(out)
        return out
    return ensure_model(ModelStore(root / "models"), name)


def make_job(job_dir: Path, model: Path, name: str, **hyperparameters):
    from llama_stack_scalarlm.registry.files import write_model
    from llama_stack_scalarlm.registry.schema import Hyperparameters, TrainingJob
    from llama_stack_scalarlm.trainer import TRAINER_VERSION

    job_dir.mkdir(parents=True)
    (job_dir / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dataset_rows(2000)))
    job = TrainingJob(job_id=job_dir.name, base_model=name, base_model_path=str(model), dataset_sha256="0" * 64,
                      trainer_version=TRAINER_VERSION, hyperparameters=Hyperparameters(**hyperparameters))
    write_model(job_dir / "job.json", job)
    return job


def window(tokens: list[int], ends: list[float], warmup: int) -> float:
    """tokens/s over the steps after ``warmup`` (steps warmup+1..N), from per-step tokens and end times."""
    return sum(tokens[warmup:]) / (ends[-1] - ends[warmup - 1])


def median_step(tokens: list[int], ends: list[float], warmup: int) -> float:
    """The median over those steps of each step's tokens/s: less moved by bursts of load from other processes."""
    rates = sorted(tokens[i] / max(ends[i] - ends[i - 1], 1e-6) for i in range(warmup, len(tokens)))
    return rates[len(rates) // 2] if len(rates) % 2 else (rates[len(rates) // 2 - 1] + rates[len(rates) // 2]) / 2


# ------------------------------------------------------------------------------------ trainer


def run_trainer(job_dir: Path, threads: int, warmup: int) -> dict:
    from llama_stack_scalarlm.registry.files import read_model
    from llama_stack_scalarlm.registry.schema import JobStatus

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llama_stack_scalarlm.trainer", str(job_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"trainer exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    status = read_model(job_dir / "status.json", JobStatus)
    history = status.loss_history
    assert status.state == "COMPLETED" and [p.step for p in history] == list(range(1, len(history) + 1))
    tokens, ends = [p.tokens for p in history], [p.elapsed_s for p in history]
    return {"tokens_s": window(tokens, ends, warmup), "median_s": median_step(tokens, ends, warmup),
            "losses": [p.loss for p in history], "wall_s": wall, "train_s": ends[-1], "tokens": tokens}


# --------------------------------------------------------------------------------- bare loop


def batches(job, job_dir: Path):
    """The trainer's micro-batches for every step, from the trainer's own data functions."""
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.trainer.data import DataPosition, DataStream, load_examples, plan_step

    hp = job.hyperparameters
    tokenizer = AutoTokenizer.from_pretrained(job.base_model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    examples = load_examples(job_dir / "dataset.jsonl", tokenizer, hp.method, hp.max_seq_len)
    stream = DataStream(examples, hp.seed, hp.max_seq_len, hp.pack_sequences, DataPosition(), hp.shuffle)
    return [plan_step(stream.take(hp.batch_size), 0, 1, hp.gradient_accumulation_steps, hp.method, pad_id)
            for _ in range(hp.steps)]


def bare_loop(job, plans, full_logits: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from llama_stack_scalarlm.trainer.loop import lr_factor

    hp = job.hyperparameters
    torch.manual_seed(hp.seed)
    model = AutoModelForCausalLM.from_pretrained(job.base_model_path, dtype=torch.float32).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=hp.learning_rate, fused=True)
    decoder, head = model.get_decoder(), model.get_output_embeddings()

    def loss_sum(b) -> torch.Tensor:
        if full_logits:  # the plain HF forward: logits for every position and the whole vocabulary
            logits = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), b.labels.flatten(), reduction="sum")
        hidden = decoder(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).last_hidden_state
        selected = b.labels != -100
        return F.cross_entropy(head(hidden[selected]).float(), b.labels[selected], reduction="sum")

    tokens, ends, losses = [], [], []
    began = time.monotonic()
    for step, plan in enumerate(plans):
        for group in optimizer.param_groups:
            group["lr"] = hp.learning_rate * lr_factor(step, hp)
        total = 0.0
        for b in plan.micro_batches:
            loss = loss_sum(b)
            (loss / plan.loss_denominator).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens.append(plan.tokens)
        ends.append(time.monotonic() - began)
        losses.append(total / plan.loss_denominator)
    return {"tokens": tokens, "ends": ends, "losses": losses}


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny-llama", choices=sorted(DEFAULTS))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int, help="steps left out of the tokens/s (both sides)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-seq-len", type=int)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, both sides (1: on a shared machine 2 OpenMP threads on 2 busy cores "
                             "slow down by up to 8x at random)")
    parser.add_argument("--backend", default="fsdp", choices=["fsdp", "ddp"])
    parser.add_argument("--no-hf", action="store_true", help="skip the reference loop with the plain HF forward")
    args = harness.parse(parser, smoke={"steps": 4, "warmup": 1, "batch_size": 2, "max_seq_len": 128})
    for key, value in zip(("steps", "warmup", "batch_size", "max_seq_len"), DEFAULTS[args.model], strict=True):
        if getattr(args, key) is None:  # the model's own default
            setattr(args, key, value)
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= warmup < steps")
    report = harness.Report("trainer_bench", args, variant=args.model)

    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      HF_HUB_DISABLE_PROGRESS_BARS="1")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = model_dir(args.model, root)
        settings = dict(steps=args.steps, warmup_steps=min(5, args.steps), learning_rate=1e-4, weight_decay=0.01,
                        batch_size=args.batch_size, max_seq_len=args.max_seq_len, backend=args.backend,
                        checkpoint_every=args.steps, keep_checkpoints=1, processes_per_node=1)
        job = make_job(root / "jobs" / "bench-0", model, args.model, **settings)
        plans = batches(job, root / "jobs" / "bench-0")
        runs = itertools.count()

        def trainer() -> dict:  # a fresh job dir each time: a finished one would only resume and stop
            job_dir = root / "jobs" / f"run-{next(runs)}"
            make_job(job_dir, model, args.model, **settings)
            return run_trainer(job_dir, args.threads, args.warmup)

        measured = harness.pairs(lambda: bare_loop(job, plans, full_logits=False), trainer, args.pairs)
        hf = None if args.no_hf else bare_loop(job, plans, full_logits=True)

    for bare, trained in measured:
        assert trained["tokens"] == bare["tokens"], "the trainer's per-step token counts differ from the batches"
    w = args.warmup
    report.compare(f"training tokens/s over steps {w + 1}..{args.steps}", "tokens/s",
                   [(window(b["tokens"], b["ends"], w), t["tokens_s"]) for b, t in measured],
                   subject="trainer (subprocess)", baseline="bare loop in-process")
    report.compare("  the same, median of per-step tokens/s", "tokens/s",
                   [(median_step(b["tokens"], b["ends"], w), t["median_s"]) for b, t in measured],
                   subject="trainer (subprocess)", baseline="bare loop in-process")
    report.value("  trainer start-up, load, tokenize, checkpoint (not in it)", "s",
                 [t["wall_s"] - t["train_s"] for _, t in measured])
    report.value("  check: max |loss(trainer) - loss(bare)|, every step", "",
                 [max(abs(a - b) for a, b in zip(t["losses"], bare["losses"], strict=True)) for bare, t in measured])
    if hf is not None:
        report.value("reference: bare loop with HF's plain forward", "tokens/s", [window(hf["tokens"], hf["ends"], w)])
    report.finish()


if __name__ == "__main__":
    main()
