"""The main loop: one optimizer step at a time, checkpoints, status, resume, preemption.

Each step every rank takes the same ``ceil(batch_size / replicas) * replicas`` rows from the
seeded stream (replicas = data-parallel size, the world size unless the backend splits the model),
keeps its replica's share, and runs them as up to ``gradient_accumulation_steps`` micro-batches.
The loss is a mean over the step's label tokens (SFT) or pairs (DPO) across all ranks: each
micro-batch backpropagates ``loss_sum * replicas / total`` and DDP/FSDP average over replicas. One small all-reduce
per step carries the loss and the stop request, so every rank stops at the same step.

Resume restores, from the newest complete checkpoint, exactly what determines the rest of the run
(weights, optimizer, data position, RNG; the learning rate is a function of the step), so a resumed
run ends with the weights an uninterrupted one would have.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..models.chat_template import tools_template
from ..registry.schema import CheckpointInfo, Hyperparameters, LossPoint, TrainingJob
from . import PREEMPTED_ERROR, PREEMPTED_EXIT_CODE
from .backend import TrainingBackend
from .checkpoint import CheckpointDir, state_file
from .data import DataPosition, DataStream, load_examples, plan_step
from .preemption import StopRequest
from .status import StatusWriter


def lr_factor(index: int, hp: Hyperparameters) -> float:
    """Multiplier of the learning rate for optimizer step ``index`` (0-based): linear warmup, then decay."""
    if index < hp.warmup_steps:
        return (index + 1) / hp.warmup_steps
    if hp.lr_schedule == "constant":
        return 1.0
    progress = (index - hp.warmup_steps) / max(1, hp.steps - hp.warmup_steps)
    if hp.lr_schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def create_backend(name: str) -> TrainingBackend:
    if name in ("ddp", "fsdp"):
        from .torch_backend import TorchBackend

        return TorchBackend(name)  # type: ignore[arg-type]
    if name == "megatron":
        from .megatron_backend import MegatronBackend

        return MegatronBackend()
    raise ValueError(f"backend: unknown {name!r} (ddp, fsdp or megatron)")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def train(job: TrainingJob, job_dir: Path, device: torch.device, stop: StopRequest | None = None) -> int:
    """Run (or resume) the job; return 0 when done or :data:`PREEMPTED_EXIT_CODE` after a stop request."""
    from transformers import AutoTokenizer

    stop = stop or StopRequest().install()
    hp = job.hyperparameters
    rank, world = dist.get_rank(), dist.get_world_size()
    model_path = Path(job.base_model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    examples = load_examples(job_dir / "dataset.jsonl", tokenizer, hp.method, hp.max_seq_len,
                             tools_template(model_path))

    _seed(hp.seed)  # identical on every rank: identical LoRA initialization
    backend = create_backend(hp.backend)
    backend.setup(job, model_path, device)
    optimizer = backend.build_optimizer()
    _seed(hp.seed + rank)

    checkpoints = CheckpointDir(job_dir / "checkpoints")
    if rank == 0:
        checkpoints.clean_partial()
    status = StatusWriter(job_dir / "status.json", job.job_id, hp.steps, enabled=rank == 0)
    start, position, history = 0, DataPosition(), []
    latest = checkpoints.latest()
    if latest is not None:
        start, position, history = _resume(latest[1], backend, optimizer, rank, world, device)
        _log(rank, f"resuming from {latest[1].name}")

    def infos() -> list[CheckpointInfo]:
        return [CheckpointInfo(step=s, path=str(p), kind=backend.kind) for s, p in checkpoints.complete()]

    def save(step: int) -> None:
        staging = checkpoints.staging(step)
        dist.barrier()
        staging.mkdir(parents=True, exist_ok=True)
        backend.save_hf(staging)
        state = {
            "step": step,
            "world_size": world,
            "backend": hp.backend,
            "data_position": {"epoch": stream.position.epoch, "index": stream.position.index},
            "scheduler": {"kind": hp.lr_schedule, "step": step},
            "rng": _rng_state(device),
        }
        if rank == 0:
            state["loss_history"] = [p.model_dump() for p in status.status.loss_history]
        if rank == 0 or backend.sharded:
            state.update(backend.state_dict(optimizer))
        torch.save(state, state_file(staging, rank))
        dist.barrier()
        if rank == 0:
            checkpoints.publish(step)
            checkpoints.prune(hp.keep_checkpoints)
            status.checkpointed(infos())

    stream = DataStream(examples, hp.seed, hp.max_seq_len, hp.pack_sequences, position, hp.shuffle)
    status.training(start, history, infos())
    replica, replicas = backend.data_parallel
    rows_per_step = -(-hp.batch_size // replicas) * replicas
    began, prior_s = time.monotonic(), (history[-1].elapsed_s if history else 0.0)
    tokens_seen = 0
    stopping = False
    for step in range(start + 1, hp.steps + 1):
        lr = hp.learning_rate * lr_factor(step - 1, hp)
        for group in optimizer.param_groups:
            group["lr"] = lr
        plan = plan_step(stream.take(rows_per_step), replica, replicas, hp.gradient_accumulation_steps, hp.method,
                         pad_id)
        scale = replicas / plan.loss_denominator  # gradients are averaged over the replicas
        local = torch.zeros((), dtype=torch.float64, device=device)
        for i, batch in enumerate(plan.micro_batches):
            backend.set_gradient_sync(i == len(plan.micro_batches) - 1)
            loss_sum, _ = backend.forward(batch.to(device))
            backend.backward(loss_sum * scale)
            local += loss_sum.detach()
        grad_norm = backend.clip_grad_norm(hp.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        totals = torch.stack([local, torch.tensor(float(stop.requested), dtype=torch.float64, device=device)])
        dist.all_reduce(totals)
        loss_total, stops = totals.tolist()
        stopping = stops > 0
        tokens_seen += plan.tokens
        elapsed = time.monotonic() - began
        loss_total /= world // replicas  # each replica's ranks all hold its loss
        point = LossPoint(step=step, loss=loss_total / plan.loss_denominator, learning_rate=lr,
                          tokens=plan.tokens, elapsed_s=round(prior_s + elapsed, 3))
        if status.progress(step, point):
            _log(rank, f"step {step}/{hp.steps} loss {point.loss:.4f} lr {lr:.3g} grad norm {float(grad_norm):.3g} "
                       f"{tokens_seen / elapsed:.0f} tokens/s")
        if step % hp.checkpoint_every == 0 or step == hp.steps or stopping:
            save(step)
        if stopping:
            break

    elapsed = time.monotonic() - began
    if tokens_seen:
        _log(rank, f"{tokens_seen} tokens in {elapsed:.1f} s: {tokens_seen / elapsed:.0f} tokens/s")
    if stopping and status.status.step < hp.steps:  # a stop at the last step is simply the end
        step = status.status.step
        status.finished("QUEUED", f"{PREEMPTED_ERROR} at step {step} ({stop.signal_name or 'another rank'}); "
                                  "resumes from its checkpoint when requeued")
        return PREEMPTED_EXIT_CODE
    status.finished("COMPLETED")
    return 0


def _resume(
    path: Path, backend: TrainingBackend, optimizer: torch.optim.Optimizer, rank: int, world: int,
    device: torch.device,
) -> tuple[int, DataPosition, list[LossPoint]]:
    own = torch.load(state_file(path, rank), map_location="cpu", weights_only=False)
    if own["world_size"] != world:
        raise RuntimeError(f"{path.name} was written by {own['world_size']} processes; this run has {world}")
    shared = own if (rank == 0 or backend.sharded) else torch.load(
        state_file(path, 0), map_location="cpu", weights_only=False, mmap=True
    )
    backend.load_state_dict(shared, optimizer)
    _set_rng_state(own["rng"], device)
    history = [LossPoint(**p) for p in own.get("loss_history", [])]
    return own["step"], DataPosition(**own["data_position"]), history


def _log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"[trainer] {message}", file=sys.stdout, flush=True)
