"""Translate Llama Stack post_training calls into ScalarLM training jobs.

Choices where the 0.6 API and ScalarLM differ (README, "Training"):
- The caller's ``job_uuid`` becomes an alias; the job's id is ScalarLM's content hash, which is
  also the model id the trained weights are served under. Both ids work in every route.
- Steps = ``n_epochs * max_steps_per_epoch``. ScalarLM settings the 0.6 types lack (backend,
  nodes, processes, checkpoint interval...) go in ``hyperparam_search_config`` by their
  ScalarLM names.
- ``dataset_id`` names a Llama Stack dataset (rows read through datasetio) or a ScalarLM upload
  as ``sha256:<hex>``.
- Every other 0.6 field is honoured, or a 400 naming it when it asks for something ScalarLM does not
  do (defaults that describe what it does pass): no validation set is evaluated, no training logger
  runs, checkpoints live in the job directory, the optimizer is AdamW, and weights train in fp32
  (bf16 compute on GPUs, ``dtype``'s default). ``apply_lora_to_output`` is refused because vLLM
  serves LoRA adapters on the attention and MLP projections, not on the output head.
- GRPO (scored samples, ``registry/rows.py``) goes through ``supervised-fine-tune`` with
  ``hyperparam_search_config.method = "grpo"``: it trains full weights or LoRA as SFT does, and
  0.6 has no route for reward-driven training.
- Every blocking call (files, SLURM) runs in a thread, off the server's event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime

from llama_stack_api.datasetio.models import IterRowsRequest
from pydantic import ValidationError

from llama_stack_scalarlm.api.post_training import (
    CancelTrainingJobRequest,
    Checkpoint,
    DataConfig,
    DPOAlignmentConfig,
    GetTrainingJobArtifactsRequest,
    GetTrainingJobStatusRequest,
    JobStatus,
    ListPostTrainingJobsResponse,
    LoraFinetuningConfig,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PostTrainingMetric,
    PreferenceOptimizeRequest,
    SupervisedFineTuneRequest,
    TrainingConfig,
)
from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError, UnknownJobError
from llama_stack_scalarlm.paths import check_name
from llama_stack_scalarlm.registry.schema import Hyperparameters, JobStatus as ScalarLMJobStatus, LoraSettings
from llama_stack_scalarlm.runtime import ServerRuntime

_STATES = {
    "QUEUED": JobStatus.scheduled,
    "TRAINING": JobStatus.in_progress,
    "COMPLETED": JobStatus.completed,
    "FAILED": JobStatus.failed,
    "CANCELLED": JobStatus.cancelled,
}
# torchtune-style module names that 0.6 clients send, and the Hugging Face names they mean
_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj", "o_proj": "o_proj"}
_MLP = ["gate_proj", "up_proj", "down_proj"]
# ScalarLM hyperparameters that come from 0.6 request fields: errors name the field the caller sent
_API_FIELDS = {
    "learning_rate": "training_config.optimizer_config.lr",
    "weight_decay": "training_config.optimizer_config.weight_decay",
    "warmup_steps": "training_config.optimizer_config.num_warmup_steps",
    "steps": "training_config.max_steps_per_epoch",
    "batch_size": "training_config.data_config.batch_size",
    "pack_sequences": "training_config.data_config.packed",
    "shuffle": "training_config.data_config.shuffle",
    "gradient_accumulation_steps": "training_config.gradient_accumulation_steps",
}
_NO_VALIDATION_STEPS = (None, 0, 1)  # 1 is 0.6's default; with no validation set it bounds nothing


class ScalarLMPostTrainingProvider:
    def __init__(self, config: ScalarLMConfig, datasetio):
        self.runtime = ServerRuntime.get(ScalarLMConfig.load(config.model_dump(exclude_unset=True)))
        self.datasetio = datasetio

    def request_body_limit(self) -> int:
        return self.runtime.config.limits.max_request_bytes

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        if not request.model:
            raise InvalidFieldError("model", "the base model to fine-tune is required")
        _check_request(request)
        if request.algorithm_config is not None and not isinstance(request.algorithm_config, LoraFinetuningConfig):
            raise InvalidFieldError("algorithm_config.type", f"{request.algorithm_config.type} is not supported")
        overrides = dict(request.hyperparam_search_config)
        method = overrides.pop("method", "sft")  # GRPO trains on scored samples, full or LoRA, as SFT does
        if method not in ("sft", "grpo"):
            raise InvalidFieldError("hyperparam_search_config.method", f"{method!r}: sft or grpo here (DPO is "
                                                                       "preference-optimize)")
        hyper = _hyperparameters(request.training_config, overrides, method=method, lora=_lora(request.algorithm_config))
        return await self._submit(request.job_uuid, request.model, request.training_config, hyper)

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        _check_request(request)
        hyper = _hyperparameters(
            request.training_config, request.hyperparam_search_config, method="dpo",
            dpo_beta=request.algorithm_config.beta, dpo_loss=_dpo_loss(request.algorithm_config),
        )
        return await self._submit(request.job_uuid, request.finetuned_model, request.training_config, hyper)

    async def get_training_jobs(self) -> ListPostTrainingJobsResponse:
        jobs = await asyncio.to_thread(self.training.jobs)
        return ListPostTrainingJobsResponse(data=[PostTrainingJob(job_uuid=s.job_id) for s in jobs])

    async def get_training_job_status(self, request: GetTrainingJobStatusRequest) -> PostTrainingJobStatusResponse:
        return await asyncio.to_thread(self._status_response, request.job_uuid)

    def _status_response(self, job_uuid: str) -> PostTrainingJobStatusResponse:
        status = self.training.status(self._job_id(job_uuid))
        started = status.loss_history[0].elapsed_s if status.loss_history else None
        return PostTrainingJobStatusResponse(
            job_uuid=status.job_id,
            status=_STATES[status.state],
            scheduled_at=_time(status.created),
            started_at=_time(status.created) if started is not None else None,
            completed_at=_time(status.updated) if status.state == "COMPLETED" else None,
            resources_allocated=self.training.registry.job(status.job_id).hyperparameters.model_dump(
                include={"nodes", "gpus_per_node", "processes_per_node", "backend"}
            ) | {"slurm_job_id": status.slurm_job_id, "step": status.step, "total_steps": status.total_steps,
                 "error": status.error},
            checkpoints=_checkpoints(status),
        )

    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> None:
        await asyncio.to_thread(lambda: self.training.cancel(self._job_id(request.job_uuid)))  # waits for SLURM

    async def get_training_job_artifacts(
        self, request: GetTrainingJobArtifactsRequest
    ) -> PostTrainingJobArtifactsResponse:
        status = await asyncio.to_thread(lambda: self.training.status(self._job_id(request.job_uuid)))
        return PostTrainingJobArtifactsResponse(job_uuid=status.job_id, checkpoints=_checkpoints(status))

    async def shutdown(self) -> None:
        self.runtime.stop()

    @property
    def training(self):
        return self.runtime.training

    def _job_id(self, job_uuid: str) -> str:
        job_id = self.training.registry.resolve(job_uuid)
        if job_id is None:
            raise UnknownJobError(job_uuid)
        return job_id

    async def _submit(self, alias: str, model: str, training: TrainingConfig, hyper: Hyperparameters):
        check_name(alias, field="job_uuid")  # before anything is stored or submitted
        if training.data_config is None:
            raise InvalidFieldError("training_config.data_config", "required: it names the dataset")
        sha256 = await self._dataset(training.data_config)
        status = await asyncio.to_thread(self.training.submit, model, sha256, hyper, alias)
        return PostTrainingJob(job_uuid=status.job_id)

    async def _dataset(self, data: DataConfig) -> str:
        """The dataset's content hash in the upload store (rows from datasetio are stored as JSONL)."""
        if data.dataset_id.startswith("sha256:"):
            return data.dataset_id.removeprefix("sha256:")
        field = "training_config.data_config.dataset_id"
        limits = self.runtime.config.limits
        try:  # one row more than allowed, to tell "at the limit" from "over it" without reading the rest
            page = await self.datasetio.iterrows(IterRowsRequest(dataset_id=data.dataset_id,
                                                                 limit=limits.max_dataset_rows + 1))
        except Exception as exc:
            raise InvalidFieldError(field, f"{data.dataset_id!r}: {exc}") from exc
        if len(page.data) > limits.max_dataset_rows:
            raise InvalidFieldError(field, f"more than {limits.max_dataset_rows} rows (limits.max_dataset_rows); "
                                           "upload larger datasets as a file (sha256:<hex>)")
        lines = [json.dumps(_row(row, data.data_format.value)) for row in page.data]
        content = ("\n".join(lines) + "\n").encode() if lines else b""
        if len(content) > limits.max_upload_bytes:
            raise InvalidFieldError(field, f"{len(content)} bytes is more than limits.max_upload_bytes")
        return await asyncio.to_thread(self.training.uploads.put_bytes, content)


def _row(row: dict, data_format: str) -> dict:
    """0.6 datasets name instruct columns input_query/expected_answer; ScalarLM's trainer reads input/output."""
    if data_format == "instruct" and "input_query" in row:
        return {"input": row["input_query"], "output": row.get("expected_answer", row.get("generated_answer"))}
    return row


def _check_request(request: SupervisedFineTuneRequest | PreferenceOptimizeRequest) -> None:
    """The request-level fields ScalarLM has no use for must ask for nothing."""
    if request.logger_config:
        raise InvalidFieldError("logger_config", "no training logger runs here: the loss history is in the job's "
                                                 "status (GET /v1/scalarlm/training/jobs/{id})")
    if getattr(request, "checkpoint_dir", None) is not None:
        raise InvalidFieldError("checkpoint_dir", "checkpoints are written to the job's directory, where the "
                                                  "server serves them from")


def _lora(config: LoraFinetuningConfig | None) -> LoraSettings | None:
    if config is None:
        return None
    unknown = [m for m in config.lora_attn_modules if m not in _MODULES]
    if unknown:
        raise InvalidFieldError("algorithm_config.lora_attn_modules", f"unknown modules {unknown}")
    if config.apply_lora_to_output:
        raise InvalidFieldError("algorithm_config.apply_lora_to_output",
                                "vLLM serves LoRA adapters on attention and MLP projections, not on the output head")
    for flag in ("use_dora", "quantize_base"):
        if getattr(config, flag):
            raise InvalidFieldError(f"algorithm_config.{flag}", "not supported")
    modules = sorted({_MODULES[m] for m in config.lora_attn_modules} | (set(_MLP) if config.apply_lora_to_mlp else set()))
    try:
        return LoraSettings(rank=config.rank, alpha=config.alpha, target_modules=modules)
    except ValidationError as exc:
        raise InvalidFieldError(f"algorithm_config.{_first_loc(exc)}", _first_msg(exc)) from None


def _dpo_loss(config: DPOAlignmentConfig) -> str:
    if config.loss_type.value == "kto_pair":
        raise InvalidFieldError("algorithm_config.loss_type", "kto_pair is not supported (sigmoid, hinge or ipo)")
    return config.loss_type.value


def _hyperparameters(training: TrainingConfig, overrides: dict, **fixed) -> Hyperparameters:
    """ScalarLM hyperparameters from the 0.6 training config, ``hyperparam_search_config`` (ScalarLM
    settings by name, which replace what a 0.6 field left at its default) and what the route fixes
    (``fixed``: method, LoRA, DPO). A setting given in two places is a 400."""
    _check_training_config(training)
    values, given = _from_training_config(training)
    unknown = sorted(set(overrides) - set(Hyperparameters.model_fields))
    if unknown:
        raise InvalidFieldError(f"hyperparam_search_config.{unknown[0]}", "not a ScalarLM hyperparameter")
    twice = sorted(set(overrides) & (given | set(fixed)))
    if twice:
        source = _API_FIELDS.get(twice[0], "algorithm_config")
        raise InvalidFieldError(f"hyperparam_search_config.{twice[0]}", f"set by {source}; give it there only")
    try:
        return Hyperparameters.model_validate(values | overrides | fixed)
    except ValidationError as exc:
        field = _first_loc(exc)
        if field in overrides:
            field = f"hyperparam_search_config.{field}"
        raise InvalidFieldError(_API_FIELDS.get(field, field), _first_msg(exc)) from None


def _from_training_config(training: TrainingConfig) -> tuple[dict, set[str]]:
    """(hyperparameters the 0.6 fields set, the names of those the caller gave rather than left at a default)."""
    values: dict = {"steps": training.n_epochs * training.max_steps_per_epoch,
                    "gradient_accumulation_steps": training.gradient_accumulation_steps}
    given = {"steps"} | ({"gradient_accumulation_steps"} & training.model_fields_set)
    if (data := training.data_config) is not None:
        values |= {"batch_size": data.batch_size, "pack_sequences": bool(data.packed), "shuffle": data.shuffle}
        given |= {"batch_size", "shuffle"} | ({"pack_sequences"} if "packed" in data.model_fields_set else set())
    if (opt := training.optimizer_config) is not None:
        values |= {"learning_rate": opt.lr, "weight_decay": opt.weight_decay, "warmup_steps": opt.num_warmup_steps}
        given |= {"learning_rate", "weight_decay", "warmup_steps"}
    return values, given


def _check_training_config(training: TrainingConfig) -> None:
    """0.6 settings ScalarLM does not honour must be left at values that describe what it does."""
    if training.dtype not in (None, "bf16"):
        raise InvalidFieldError("training_config.dtype", "weights train in fp32 with bf16 compute on GPUs "
                                                         "(fp32 on CPUs): only bf16, the default, is accepted")
    if training.max_validation_steps not in _NO_VALIDATION_STEPS:
        raise InvalidFieldError("training_config.max_validation_steps", "no validation set is evaluated")
    if training.efficiency_config is not None:
        for flag, value in training.efficiency_config.model_dump().items():
            if value:
                raise InvalidFieldError(f"training_config.efficiency_config.{flag}", "not supported")
    if (data := training.data_config) is not None:
        if data.validation_dataset_id is not None:
            raise InvalidFieldError("training_config.data_config.validation_dataset_id",
                                    "no validation loss is computed (checkpoints report validation_loss: null)")
        if data.train_on_input:
            raise InvalidFieldError("training_config.data_config.train_on_input", "not supported")
    if (opt := training.optimizer_config) is not None:
        kind = opt.optimizer_type.value
        if kind == "sgd" or (kind == "adam" and opt.weight_decay):
            raise InvalidFieldError("training_config.optimizer_config.optimizer_type",
                                    "ScalarLM trains with AdamW (decoupled weight decay): use adamw "
                                    "(adam only with weight_decay 0, where the two are the same)")


def _first_loc(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(p) for p in error["loc"])
    if not loc and str(error["msg"]).startswith("Value error, "):
        return str(error["msg"]).removeprefix("Value error, ").split(":", 1)[0]
    return loc or "training_config"


def _first_msg(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def _checkpoints(status: ScalarLMJobStatus) -> list[Checkpoint]:
    losses = {p.step: p.loss for p in status.loss_history}
    out = []
    for checkpoint in status.checkpoints:
        loss = losses.get(checkpoint.step)
        metric = None
        if loss is not None:
            # no validation set is evaluated: validation_loss is NaN (null in JSON)
            metric = PostTrainingMetric(epoch=0, train_loss=loss, validation_loss=math.nan,
                                        perplexity=math.exp(min(loss, 50)))
        out.append(Checkpoint(
            identifier=f"{status.job_id}/checkpoint-{checkpoint.step}",
            created_at=_time(status.updated),
            epoch=0,
            post_training_job_id=status.job_id,
            path=checkpoint.path,
            training_metrics=metric,
        ))
    return out


def _time(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
