"""The interface between the main loop and a training engine.

The loop owns the schedule, data, checkpoints and status; a backend owns the model: how it is
distributed (DDP, FSDP2, later megatron-core's tensor parallelism), how it computes per-token
log-probabilities, and how its weights and optimizer state are exported and restored. The losses
(SFT, DPO, GRPO) are written once here on top of :meth:`TrainingBackend.token_logprobs`, so every backend
computes them the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..registry.schema import TrainingJob
from .data import MicroBatch


class TrainingBackend(ABC):
    """One rank's view of the model being trained. Methods marked *collective* run on every rank."""

    job: TrainingJob
    device: torch.device

    @property
    @abstractmethod
    def kind(self) -> Literal["full", "lora"]:
        """What :meth:`save_hf` writes: a full model directory or a PEFT adapter."""

    @property
    @abstractmethod
    def sharded(self) -> bool:
        """Whether :meth:`state_dict` differs per rank (FSDP, tensor parallel) or is replicated (DDP)."""

    @property
    def data_parallel(self) -> tuple[int, int]:
        """(index, count) of this rank's model replica: rows are split over replicas, and ranks of
        one replica (tensor parallel) see the same rows. Without model parallelism: (rank, world)."""
        return dist.get_rank(), dist.get_world_size()

    @abstractmethod
    def setup(self, job: TrainingJob, model_path: Path, device: torch.device) -> None:
        """Load the base model from ``model_path``, wrap it for distribution on ``device``. *Collective.*"""

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates (possibly this rank's shards)."""

    @abstractmethod
    def token_logprobs(self, batch: MicroBatch, reference: bool = False) -> torch.Tensor:
        """Log-probability of every label token (``batch.labels != -100``, row-major order), shape [N].

        ``reference=True``: under the frozen reference model (DPO), without building a graph.
        """

    @abstractmethod
    def set_gradient_sync(self, enabled: bool) -> None:
        """Whether the next backward reduces gradients across ranks (off for all but the last micro-batch)."""

    @abstractmethod
    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm; return the norm before clipping (0-d; reading it syncs). *Collective.*"""

    @abstractmethod
    def save_hf(self, out_dir: Path) -> None:
        """Write a directory vLLM can load: full weights (safetensors, config, tokenizer, generation
        config) or a PEFT adapter (adapter_config.json, adapter_model.safetensors). *Collective*;
        rank 0 writes."""

    @abstractmethod
    def state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """This rank's exact model (trainable part) and optimizer state, on CPU, for resume."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Restore what :meth:`state_dict` returned (same world size and backend)."""

    # ---- shared behaviour a backend may override

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW (fused kernel: ~5x faster than the default per-tensor loop on CPU); no weight decay on
        vectors (norms, biases). The learning rate is set by the loop each step."""
        hp = self.job.hyperparameters
        params = self.trainable_parameters()
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.learning_rate, fused=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def forward(self, batch: MicroBatch) -> tuple[torch.Tensor, int]:
        """(Loss summed over the micro-batch, how many terms: label tokens for SFT, pairs for DPO,
        completions for GRPO)."""
        hp = self.job.hyperparameters
        reference = None
        if hp.needs_reference:
            with torch.no_grad():
                reference = self.token_logprobs(batch, reference=True)
        logprobs = self.token_logprobs(batch)
        if hp.method == "dpo":
            policy, reference = sequence_logprobs(logprobs, batch), sequence_logprobs(reference, batch)
            return dpo_losses(policy, reference, hp.dpo_beta, hp.dpo_loss).sum(), batch.num_sequences // 2
        if hp.method == "grpo":
            losses = grpo_losses(logprobs, batch.sampled_logprobs, reference, batch.advantages, batch.label_sequence,
                                 hp.grpo_epsilon, hp.grpo_beta)
            return losses.sum(), batch.num_sequences
        return -logprobs.sum(), logprobs.numel()


def sequence_logprobs(token_logprobs: torch.Tensor, batch: MicroBatch) -> torch.Tensor:
    """Sum the label tokens' log-probabilities per sequence: shape [batch.num_sequences]."""
    sums = torch.zeros(batch.num_sequences, dtype=token_logprobs.dtype, device=token_logprobs.device)
    return sums.index_add(0, batch.label_sequence, token_logprobs)


def grpo_losses(logprobs: torch.Tensor, sampled: torch.Tensor, reference: torch.Tensor | None,
                advantages: torch.Tensor, owner: torch.Tensor, epsilon: float, beta: float) -> torch.Tensor:
    """Per-completion GRPO loss, −(1/|o|) Σ_t [min(ρ_t·A, clip(ρ_t, 1−ε, 1+ε)·A) − β·KL_t], over its
    label tokens t. ρ_t = exp(log π_t − log π_sampling,t), with the sampling log-prob where the row
    gave it and log π_t itself (detached: ρ = 1, the plain policy gradient) where not; KL_t is the
    unbiased estimator exp(r) − r − 1 with r = log π_ref,t − log π_t. ``owner``: each token's completion."""
    old = torch.where(torch.isnan(sampled), logprobs.detach(), sampled.to(logprobs.dtype))
    ratio = torch.exp(logprobs - old)
    advantage = advantages.to(logprobs.dtype)[owner]
    objective = torch.minimum(ratio * advantage, ratio.clamp(1 - epsilon, 1 + epsilon) * advantage)
    if beta > 0:
        gap = reference - logprobs
        objective = objective - beta * (torch.exp(gap) - gap - 1)
    sums = logprobs.new_zeros(len(advantages)).index_add(0, owner, -objective)
    counts = logprobs.new_zeros(len(advantages)).index_add(0, owner, torch.ones_like(objective))
    return sums / counts


def dpo_losses(policy: torch.Tensor, reference: torch.Tensor, beta: float,
               loss: Literal["sigmoid", "hinge", "ipo"] = "sigmoid") -> torch.Tensor:
    """Per-pair loss of the margin h = (π_c − ref_c) − (π_r − ref_r) of sequence log-probabilities
    (sequences alternate chosen, rejected), as torchtune defines them: ``sigmoid`` −log σ(β·h) (DPO),
    ``hinge`` max(0, 1 − β·h) (RSO), ``ipo`` (h − 1/(2β))² (IPO)."""
    ratios = policy - reference
    margin = ratios[0::2] - ratios[1::2]
    if loss == "hinge":
        return torch.relu(1 - beta * margin)
    if loss == "ipo":
        return (margin - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * margin)
