"""What a training job is, on disk: the contract between the registry, SLURM jobs and the trainer.

A job directory ``<state_dir>/jobs/<job_id>/`` holds:
- ``job.json``: :class:`TrainingJob` (written by the registry before sbatch; rewritten only when a
  stopped job is launched again with other :data:`RUN_SETTINGS`)
- ``dataset.jsonl``: the training data (a hard link or copy of the content-addressed upload)
- ``status.json``: :class:`JobStatus` (rewritten atomically by the trainer and the registry)
- ``slurm.log``: the SLURM job's output; ``train.sbatch``: the script of the newest launch
- ``.launch.lock`` (held by whoever launches or cancels the job) and ``.launching`` (an sbatch whose
  outcome is not known yet: it timed out, and the job may be queued anyway)
- ``checkpoints/checkpoint-<step>/``: Hugging Face format (full safetensors + tokenizer, or a PEFT
  LoRA adapter), plus ``trainer_state.pt`` (optimizer, scheduler, RNG, data position) for resume;
  a checkpoint is complete when its ``.complete`` marker exists (:mod:`.checkpoints`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from ..strict import StrictModel

JobState = Literal["QUEUED", "TRAINING", "COMPLETED", "FAILED", "CANCELLED"]
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED")

RUN_SETTINGS = frozenset({"time_limit_minutes", "checkpoint_every", "keep_checkpoints", "nodes",
                          "processes_per_node", "gpus_per_node", "safety_gate", "purpose"})
"""Hyperparameters that do not change the trained weights (a resumed run ends with the weights of an
uninterrupted one, and every layout trains on the same rows per step): the job's configuration,
left out of its id, which a resubmission may change."""


class LoraSettings(StrictModel):
    rank: int = Field(8, ge=1, le=1024)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class SafetyGate(StrictModel):
    """Grade the finished job on AILuminate against the model it was trained from, on the same
    sample; it becomes ``latest`` only if its overall grade is no lower (``safety/gate.py``)."""

    guard: str | None = Field(None, min_length=1, description="a served Llama Guard-format guard model")
    judge: str | None = Field(None, min_length=1, description="a served model asked in plain words (both: they vote)")
    per_group: int = Field(1, ge=1, description="prompts per hazard and persona of the demo set")
    hazards: list[str] = Field(default_factory=list, description="AILuminate hazard codes; [] = all")
    seed: int = 0
    max_tokens: int = Field(64, ge=1, description="of each response")

    @model_validator(mode="after")
    def _an_evaluator(self) -> SafetyGate:
        if self.guard is None and self.judge is None:
            raise ValueError("safety_gate: name its evaluator: guard, judge, or both (they vote)")
        return self


class Promotion(BaseModel):
    """The safety gate's decision on a job (``promotion.json`` in its directory)."""

    state: Literal["pending", "promoted", "not_promoted"]
    reason: str | None = None
    base_model: str | None = Field(None, description="what the job was graded against")
    base_run: str | None = None
    job_run: str | None = None
    base_grade: int | None = None
    job_grade: int | None = None


class Hyperparameters(BaseModel):
    """Normalized hyperparameters: defaults filled in, so equal jobs hash equal."""

    method: Literal["sft", "dpo", "grpo"] = "sft"
    backend: Literal["fsdp", "ddp", "megatron"] = "fsdp"
    lora: LoraSettings | None = None
    steps: int = Field(100, ge=1, le=10_000_000, description="optimizer steps")
    learning_rate: float = Field(1e-4, gt=0, le=1)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="sequences per optimizer step, across all processes")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_len: int = Field(512, ge=8)
    pack_sequences: bool = True
    shuffle: bool = Field(True, description="a seeded shuffle each epoch; False: the rows in the file's order")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (and one at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept")
    dpo_beta: float = Field(0.1, gt=0)
    dpo_loss: Literal["sigmoid", "hinge", "ipo"] = Field("sigmoid", description="DPO, RSO's hinge, or IPO")
    grpo_epsilon: float = Field(0.2, gt=0, lt=1, description="GRPO: the ratio's clip range, [1 − ε, 1 + ε]")
    grpo_beta: float = Field(0.0, ge=0, description="GRPO: weight of the KL penalty to the starting weights")
    tensor_parallel: int = Field(1, ge=1, description="megatron backend: tensor-parallel size")
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    processes_per_node: int = Field(1, ge=1, description="torchrun processes per node (CPU: 1-2; GPU: = gpus)")
    time_limit_minutes: int = Field(60, ge=1)
    safety_gate: SafetyGate | None = Field(None, description="grade the job against its base before it is latest")
    purpose: Literal["model", "guard"] = Field(
        "model", description="guard: a safety guard (`scalarlm guard train`); the newest is the model `guard`, "
                             "the default shield's, and never `latest`")

    @model_validator(mode="after")
    def _consistent(self) -> Hyperparameters:
        if self.warmup_steps > self.steps:
            raise ValueError("warmup_steps: more than steps")
        if self.gpus_per_node and self.processes_per_node != self.gpus_per_node:
            raise ValueError("processes_per_node: must equal gpus_per_node on GPUs")
        if self.backend == "megatron" and self.lora is not None:
            raise ValueError("lora: the megatron backend trains full weights only")
        if self.backend == "megatron" and self.world_size % self.tensor_parallel:
            raise ValueError("tensor_parallel: must divide nodes × processes_per_node")
        return self

    @property
    def needs_reference(self) -> bool:
        """DPO, and GRPO's KL penalty, compare the policy with the frozen weights it started from."""
        return self.method == "dpo" or (self.method == "grpo" and self.grpo_beta > 0)

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def data_parallel(self) -> int:
        """Model replicas a step's rows are split over (megatron's tensor-parallel ranks share theirs)."""
        return self.world_size // self.tensor_parallel if self.backend == "megatron" else self.world_size

    def weight_settings(self) -> dict:
        """What determines the trained weights: everything but :data:`RUN_SETTINGS`."""
        return self.model_dump(mode="json", exclude=set(RUN_SETTINGS))


class TrainingJob(BaseModel):
    job_id: str
    base_model: str = Field(..., description="name in the model store")
    base_model_path: str = Field(..., description="absolute path of the base model's HF directory")
    base_model_sha256: str = Field("", description="the base model's content hash (ModelStore.content_hash); "
                                   "empty in jobs recorded before models were hashed")
    dataset_sha256: str
    trainer_version: str
    hyperparameters: Hyperparameters
    parent_job_id: str | None = Field(None, description="the trained job this one starts from (its id is in "
                                      "this one's); base_model stays the store model at the lineage's root")
    parent_kind: Literal["full", "lora"] | None = Field(None, description="what the parent exported")
    init_adapter_path: str | None = Field(None, description="the parent's LoRA adapter: continued by a LoRA "
                                          "job, merged into the weights a full fine-tune starts from")

    @property
    def kind(self) -> Literal["full", "lora"]:
        """What the job exports and is served as. A LoRA trained on a full fine-tune's weights is
        exported merged: an engine serves adapters only on the store model it holds."""
        lora = self.hyperparameters.lora is not None and self.parent_kind != "full"
        return "lora" if lora else "full"


class LossPoint(BaseModel):
    step: int
    loss: float
    learning_rate: float
    tokens: int = Field(0, description="tokens trained on in this step")
    elapsed_s: float = 0.0


class CheckpointInfo(BaseModel):
    step: int
    path: str
    kind: Literal["full", "lora"]


class JobStatus(BaseModel):
    job_id: str
    state: JobState = "QUEUED"
    step: int = 0
    total_steps: int = 0
    loss_history: list[LossPoint] = Field(default_factory=list)
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    error: str | None = None
    log_tail: str | None = None
    slurm_job_id: str | None = None
    parent_job_id: str | None = Field(None, description="the job it was trained from (read from job.json)")
    promotion: Promotion | None = Field(None, description="the safety gate's decision, for a job that asked for it")
    created: float = 0.0
    updated: float = 0.0
