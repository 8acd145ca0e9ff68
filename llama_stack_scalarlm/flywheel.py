"""The flywheel as a product: rounds of sample → score → train → serve → evaluate, each round's
model trained from the last one's.

A round samples ``samples`` completions of each of its prompts through the bulk route (seeded per
round), scores them with the caller's ``reward(prompt, completion)``, trains a LoRA job from the
previous round's model on what they earned (expert iteration: SFT on the rewarded samples; or
GRPO on every scored group), waits until the new model answers, and evaluates the held-out prompts
greedily. Round 0 is the starting model evaluated. Each round's record is written to
``out_dir/round-<k>.json`` as it ends: a rerun skips the recorded rounds and continues from the last
one's model, and a round submitted again is the same content-addressed job. No torch here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Literal

from pydantic import BaseModel, Field

from .client import ScalarLMClient

Reward = Callable[[str, str], float]


class LoopError(RuntimeError):
    """A round that cannot go on: its training failed (with the job's error and log tail), or it has nothing to train on."""


class LoopSettings(BaseModel):
    rounds: int = Field(3, ge=1)
    samples: int = Field(8, ge=2, description="completions sampled per prompt")
    temperature: float = Field(0.7, gt=0, le=2, description="of the samples (held-out answers are greedy)")
    max_tokens: int = Field(16, ge=1)
    method: Literal["expert_iteration", "grpo"] = "expert_iteration"
    epochs: float = Field(2.0, gt=0, description="passes over a round's training rows")
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0, description="of round 1")
    lr_decay: float = Field(0.5, gt=0, le=1, description="round k trains at learning_rate × lr_decay^(k-1): later "
                            "rounds start from a model that already learned and train on more rows")
    lora_rank: int = Field(16, ge=1)
    seed: int = 0
    train: dict = Field(default_factory=dict, description="any other hyperparameter of the round's jobs")


class RoundRecord(BaseModel):
    round: int
    model: str = Field(..., description="the model evaluated: the round's job (round 0: the starting model)")
    trained_from: str | None = None
    prompts: int = 0
    samples: int = 0
    sample_reward: float | None = Field(None, description="mean reward of the round's samples")
    train_rows: int = 0
    learning_rate: float | None = None
    heldout_reward: float = Field(..., description="mean reward of the greedy answers to the held-out prompts")
    generate_s: float = 0.0
    train_s: float = 0.0
    serve_s: float = Field(0.0, description="from the job's completion until the new model answered")
    evaluate_s: float = 0.0


def run_loop(client: ScalarLMClient, model: str, prompts: Callable[[int], list[str]], heldout: list[str],
             reward: Reward, settings: LoopSettings, out_dir: Path, progress: bool = True) -> list[RoundRecord]:
    """Run (or resume) the loop; returns every round's record, round 0 first."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    records = [_read(path) for path in sorted(out_dir.glob("round-*.json"), key=_round_number)]
    if not records:
        started = time.monotonic()
        score = _evaluate(client, model, heldout, reward, settings)
        records.append(_write(out_dir, RoundRecord(round=0, model=model, heldout_reward=score,
                                                   evaluate_s=time.monotonic() - started)))
    with tqdm(total=settings.rounds, initial=len(records) - 1, desc="rounds", disable=not progress) as bar:
        for number in range(len(records), settings.rounds + 1):
            records.append(_write(out_dir, _round(client, number, records[-1].model, prompts(number), heldout,
                                                  reward, settings, bar)))
            bar.set_postfix(heldout=f"{records[-1].heldout_reward:.2f}")
            bar.update(1)
    plot_rounds(records, out_dir / "heldout_reward.png")
    return records


def load_task(path: Path) -> ModuleType:
    """A task file: a Python module defining ``prompts(round)``, ``heldout()`` and
    ``reward(prompt, completion)`` (see ``examples/addition.py``)."""
    spec = importlib.util.spec_from_file_location("scalarlm_task", path)
    if spec is None or spec.loader is None:
        raise LoopError(f"{path}: not a Python file")
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    return task


def _round(client: ScalarLMClient, number: int, model: str, prompts: list[str], heldout: list[str], reward: Reward,
           settings: LoopSettings, bar) -> RoundRecord:
    bar.set_description(f"round {number}: generate")
    started = time.monotonic()
    results = client.generate(model, [_chat(p) for p in prompts], n=settings.samples, temperature=settings.temperature,
                              max_tokens=settings.max_tokens, seed=settings.seed + number)
    groups = [[choice.text for choice in result.choices] for result in results]
    generate_s = time.monotonic() - started
    scores = [[_score(reward, p, text) for text in texts] for p, texts in zip(prompts, groups, strict=True)]
    rows = _rows(prompts, groups, scores, settings.method)
    if not rows:
        raise LoopError(f"round {number}: no sample earned a reward (expert iteration) or no group's rewards "
                        "differ (GRPO): nothing to train on")

    bar.set_description(f"round {number}: train")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="scalarlm-round-") as scratch:
        path = Path(scratch) / f"round-{number}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        dataset = client.upload(path)
    sequences = sum(len(r.get("completions", [r])) for r in rows)
    steps = max(1, math.ceil(sequences * settings.epochs / settings.batch_size))
    learning_rate = settings.learning_rate * settings.lr_decay ** (number - 1)
    job = client.train(model, dataset, steps=steps, learning_rate=learning_rate,
                       batch_size=settings.batch_size, lora=True, lora_rank=settings.lora_rank,
                       method="grpo" if settings.method == "grpo" else "sft",
                       **{"checkpoint_every": steps, "seed": settings.seed + number, **settings.train})
    status = client.follow(job)
    if status.state != "COMPLETED":
        raise LoopError(f"round {number}: job {job} ended {status.state}: {status.error}\n{status.log_tail or ''}")
    train_s = time.monotonic() - started

    bar.set_description(f"round {number}: serve")
    started = time.monotonic()
    client.wait_served(job)
    client.generate(job, [_chat(heldout[0])], max_tokens=1, temperature=0.0)  # waits in the queue for its adapter
    serve_s = time.monotonic() - started
    bar.set_description(f"round {number}: evaluate")
    started = time.monotonic()
    score = _evaluate(client, job, heldout, reward, settings)
    return RoundRecord(round=number, model=job, trained_from=model, prompts=len(prompts),
                       samples=sum(map(len, groups)), sample_reward=_mean([s for g in scores for s in g]),
                       train_rows=len(rows), learning_rate=learning_rate, heldout_reward=score,
                       generate_s=generate_s, train_s=train_s, serve_s=serve_s,
                       evaluate_s=time.monotonic() - started)


def _rows(prompts: list[str], groups: list[list[str]], scores: list[list[float]], method: str) -> list[dict]:
    """Expert iteration: each distinct rewarded sample, an SFT row. GRPO: each prompt's scored group."""
    if method == "grpo":
        return [{"prompt": p, "completions": [{"text": t or " ", "reward": s} for t, s in zip(texts, group, strict=True)]}
                for p, texts, group in zip(prompts, groups, scores, strict=True) if len(set(group)) > 1]
    kept = {(p, t.strip()) for p, texts, group in zip(prompts, groups, scores, strict=True)
            for t, s in zip(texts, group, strict=True) if s > 0 and t.strip()}
    return [{"input": p, "output": t} for p, t in sorted(kept)]


def _evaluate(client: ScalarLMClient, model: str, heldout: list[str], reward: Reward, settings: LoopSettings) -> float:
    results = client.generate(model, [_chat(p) for p in heldout], max_tokens=settings.max_tokens, temperature=0.0)
    return _mean([_score(reward, p, r.choices[0].text) for p, r in zip(heldout, results, strict=True)])


def _score(reward: Reward, prompt: str, completion: str) -> float:
    value = float(reward(prompt, completion))
    if not math.isfinite(value):
        raise LoopError(f"the reward function returned {value} (not finite) for the prompt {prompt!r}")
    return value


def plot_rounds(records: list[RoundRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([r.round for r in records], [r.heldout_reward for r in records], marker="o")
    axis.set_xlabel("round (0: the starting model)")
    axis.set_ylabel("held-out reward")
    axis.set_xticks([r.round for r in records])
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _round_number(path: Path) -> int:
    return int(path.stem.removeprefix("round-"))


def _read(path: Path) -> RoundRecord:
    return RoundRecord.model_validate_json(path.read_text())


def _write(out_dir: Path, record: RoundRecord) -> RoundRecord:
    (out_dir / f"round-{record.round}.json").write_text(record.model_dump_json(indent=2))
    return record
