"""The ``post_training`` API, brought back into Llama Stack 0.7 as an external API.

Llama Stack 0.7 dropped post_training; 0.6.1 (``llama_stack_api.post_training``) was the last release
to ship it. Clients written against that release are the contract, so this module reproduces its
interface: the same model names, field names, types and defaults, the same routes under
``/v1alpha/post-training/``, and a protocol whose methods take one request model each, as in 0.6.1.

Loaded by Llama Stack from ``distributions/scalarlm/apis/post_training.yaml``; the stack calls
``available_providers()`` and mounts ``create_router(impl)``.

Routes (0.6.1 server), all under ``/v1alpha/post-training``:

    POST /supervised-fine-tune        body SupervisedFineTuneRequest -> PostTrainingJob
    POST /preference-optimize         body PreferenceOptimizeRequest -> PostTrainingJob
    GET  /jobs                                                       -> ListPostTrainingJobsResponse
    GET  /jobs/{job_uuid}/status                                     -> PostTrainingJobStatusResponse
    POST /jobs/{job_uuid}/cancel                                     -> null
    GET  /jobs/{job_uuid}/artifacts                                  -> PostTrainingJobArtifactsResponse

Routes kept for older clients (llama-stack <= 0.5 servers, and llama-stack-client up to 0.6.1, whose
generated ``job.status/artifacts/cancel`` still call these paths):

    GET  /job/status?job_uuid=...                                    -> PostTrainingJobStatusResponse
    POST /job/cancel        body {"job_uuid": ...} (or ?job_uuid=)   -> null
    GET  /job/artifacts?job_uuid=...                                 -> PostTrainingJobArtifactsResponse
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from fastapi import APIRouter, Body, HTTPException, Path, Query
from pydantic import BaseModel, Field

from ..strict import StrictModel
from .bounded import bounded_route_class

API_NAME = "post_training"
PREFIX = "/v1alpha/post-training"

__all__ = [
    "API_NAME",
    "PREFIX",
    "AlgorithmConfig",
    "CancelTrainingJobRequest",
    "Checkpoint",
    "DataConfig",
    "DatasetFormat",
    "DPOAlignmentConfig",
    "DPOLossType",
    "EfficiencyConfig",
    "GetTrainingJobArtifactsRequest",
    "GetTrainingJobStatusRequest",
    "JobStatus",
    "ListPostTrainingJobsResponse",
    "LoraFinetuningConfig",
    "OptimizerConfig",
    "OptimizerType",
    "PostTraining",
    "PostTrainingJob",
    "PostTrainingJobArtifactsResponse",
    "PostTrainingJobLogStream",
    "PostTrainingJobStatusResponse",
    "PostTrainingMetric",
    "PostTrainingRLHFRequest",
    "PreferenceOptimizeRequest",
    "QATFinetuningConfig",
    "RLHFAlgorithm",
    "SupervisedFineTuneRequest",
    "TrainingConfig",
    "URL",
    "available_providers",
    "create_router",
]


# --------------------------------------------------------------------------------------------------
# Enumerations
# --------------------------------------------------------------------------------------------------


class JobStatus(StrEnum):
    """Where a training job stands."""

    completed = "completed"
    in_progress = "in_progress"
    failed = "failed"
    scheduled = "scheduled"
    cancelled = "cancelled"


class OptimizerType(StrEnum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class DatasetFormat(StrEnum):
    """``instruct``: rows hold an input and an output; ``dialog``: rows hold a list of messages."""

    instruct = "instruct"
    dialog = "dialog"


class RLHFAlgorithm(StrEnum):
    dpo = "dpo"


class DPOLossType(StrEnum):
    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"
    kto_pair = "kto_pair"


# --------------------------------------------------------------------------------------------------
# Training configuration
# --------------------------------------------------------------------------------------------------


class DataConfig(StrictModel):
    """Which dataset to train on and how to batch it."""

    dataset_id: str = Field(..., description="Id of the registered training dataset.")
    batch_size: int = Field(..., description="Samples per training batch.")
    shuffle: bool = Field(..., description="Shuffle the dataset between epochs.")
    data_format: DatasetFormat = Field(..., description="Row format: instruct or dialog.")
    validation_dataset_id: str | None = Field(None, description="Id of a dataset used for validation.")
    packed: bool | None = Field(False, description="Pack several samples into one sequence.")
    train_on_input: bool | None = Field(False, description="Compute the loss on input tokens as well.")


class OptimizerConfig(StrictModel):
    optimizer_type: OptimizerType = Field(..., description="adam, adamw or sgd.")
    lr: float = Field(..., description="Learning rate.")
    weight_decay: float = Field(..., description="Weight decay coefficient.")
    num_warmup_steps: int = Field(..., description="Learning-rate warmup steps.")


class EfficiencyConfig(StrictModel):
    enable_activation_checkpointing: bool | None = False
    enable_activation_offloading: bool | None = False
    memory_efficient_fsdp_wrap: bool | None = False
    fsdp_cpu_offload: bool | None = False


class TrainingConfig(StrictModel):
    n_epochs: int = Field(..., ge=1, description="Number of epochs.")
    max_steps_per_epoch: int = Field(1, ge=1, description="Upper bound on optimizer steps per epoch.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_validation_steps: int | None = Field(1, description="Upper bound on validation steps per epoch.")
    data_config: DataConfig | None = None
    optimizer_config: OptimizerConfig | None = None
    efficiency_config: EfficiencyConfig | None = None
    dtype: str | None = Field("bf16", description="Parameter dtype: bf16, fp16 or fp32.")


class LoraFinetuningConfig(StrictModel):
    type: Literal["LoRA"] = "LoRA"
    lora_attn_modules: list[str] = Field(..., description="Attention projections that get adapters.")
    apply_lora_to_mlp: bool
    apply_lora_to_output: bool
    rank: int
    alpha: int
    use_dora: bool | None = False
    quantize_base: bool | None = False


class QATFinetuningConfig(StrictModel):
    type: Literal["QAT"] = "QAT"
    quantizer_name: str
    group_size: int


AlgorithmConfig = Annotated[LoraFinetuningConfig | QATFinetuningConfig, Field(discriminator="type")]
"""Fine-tuning algorithm, chosen by ``type``: ``"LoRA"`` or ``"QAT"``."""


class DPOAlignmentConfig(StrictModel):
    beta: float = Field(..., description="Temperature of the DPO loss.")
    loss_type: DPOLossType = DPOLossType.sigmoid


class URL(BaseModel):
    uri: str


# --------------------------------------------------------------------------------------------------
# Jobs, checkpoints, responses
# --------------------------------------------------------------------------------------------------


class PostTrainingMetric(BaseModel):
    epoch: int
    train_loss: float
    validation_loss: float
    perplexity: float


class Checkpoint(BaseModel):
    """A checkpoint a training job wrote."""

    identifier: str
    created_at: datetime
    epoch: int
    post_training_job_id: str
    path: str
    training_metrics: PostTrainingMetric | None = None


class PostTrainingJob(BaseModel):
    job_uuid: str


class PostTrainingJobStatusResponse(BaseModel):
    job_uuid: str
    status: JobStatus
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    resources_allocated: dict[str, Any] | None = None
    checkpoints: list[Checkpoint] = Field(default_factory=list)


class ListPostTrainingJobsResponse(BaseModel):
    data: list[PostTrainingJob]


class PostTrainingJobArtifactsResponse(BaseModel):
    job_uuid: str
    checkpoints: list[Checkpoint] = Field(default_factory=list)


class PostTrainingJobLogStream(BaseModel):
    job_uuid: str
    log_lines: list[str]


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


class SupervisedFineTuneRequest(StrictModel):
    job_uuid: str = Field(..., description="Id the caller chooses for the new job.")
    training_config: TrainingConfig = Field(..., description="Epochs, data, optimizer and efficiency settings.")
    hyperparam_search_config: dict[str, Any] = Field(..., description="Hyperparameter search settings.")
    logger_config: dict[str, Any] = Field(..., description="Training logger settings.")
    model: str | None = Field(None, description="Model to fine-tune, when the provider config names none.")
    checkpoint_dir: str | None = Field(None, description="Where to write checkpoints.")
    algorithm_config: AlgorithmConfig | None = Field(None, description="LoRA or QAT; None: full fine-tune.")


class PreferenceOptimizeRequest(StrictModel):
    job_uuid: str = Field(..., description="Id the caller chooses for the new job.")
    finetuned_model: str = Field(..., description="Model to optimize.")
    algorithm_config: DPOAlignmentConfig = Field(..., description="DPO settings.")
    training_config: TrainingConfig = Field(..., description="Epochs, data, optimizer and efficiency settings.")
    hyperparam_search_config: dict[str, Any] = Field(..., description="Hyperparameter search settings.")
    logger_config: dict[str, Any] = Field(..., description="Training logger settings.")


class PostTrainingRLHFRequest(BaseModel):
    """Older RLHF request shape, still exported by 0.6.1 (no route takes it)."""

    job_uuid: str
    finetuned_model: URL
    dataset_id: str
    validation_dataset_id: str
    algorithm: RLHFAlgorithm
    algorithm_config: DPOAlignmentConfig
    optimizer_config: OptimizerConfig
    training_config: TrainingConfig
    hyperparam_search_config: dict[str, Any]
    logger_config: dict[str, Any]


class GetTrainingJobStatusRequest(BaseModel):
    job_uuid: str = Field(..., description="Id of the job.")


class CancelTrainingJobRequest(StrictModel):
    job_uuid: str = Field(..., description="Id of the job to cancel.")


class GetTrainingJobArtifactsRequest(BaseModel):
    job_uuid: str = Field(..., description="Id of the job.")


# --------------------------------------------------------------------------------------------------
# Protocol, provider registry, routes
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class PostTraining(Protocol):
    """What a post_training provider implements (0.6.1 shape: one request model per method)."""

    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob: ...

    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob: ...

    async def get_training_jobs(self) -> ListPostTrainingJobsResponse: ...

    async def get_training_job_status(self, request: GetTrainingJobStatusRequest) -> PostTrainingJobStatusResponse: ...

    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> None: ...

    async def get_training_job_artifacts(
        self, request: GetTrainingJobArtifactsRequest
    ) -> PostTrainingJobArtifactsResponse: ...

    def request_body_limit(self) -> int:
        """Largest request body accepted, in bytes (a 413 beyond it)."""
        ...


def available_providers() -> list:
    return []  # declared by the run config's `module: llama_stack_scalarlm.providers.post_training`


_JOB_UUID_PATH = Path(..., description="Id of the job.")
_JOB_UUID_QUERY = Query(..., description="Id of the job.")


def create_router(impl: PostTraining) -> APIRouter:
    """The 0.6.1 routes, plus the older ``/job/...`` forms that clients up to 0.6.1 still call.

    ``impl`` is only used when a request arrives (the stack also builds routers with ``impl=None`` to
    list routes).
    """
    router = APIRouter(prefix=PREFIX, tags=["Post Training"],
                       route_class=bounded_route_class(lambda: impl.request_body_limit()))

    @router.post(
        "/supervised-fine-tune",
        response_model=PostTrainingJob,
        summary="Run supervised fine-tuning of a model.",
    )
    async def supervised_fine_tune(request: Annotated[SupervisedFineTuneRequest, Body(...)]) -> PostTrainingJob:
        return await impl.supervised_fine_tune(request)

    @router.post(
        "/preference-optimize",
        response_model=PostTrainingJob,
        summary="Run preference optimization of a model.",
    )
    async def preference_optimize(request: Annotated[PreferenceOptimizeRequest, Body(...)]) -> PostTrainingJob:
        return await impl.preference_optimize(request)

    @router.get("/jobs", response_model=ListPostTrainingJobsResponse, summary="Get all training jobs.")
    async def get_training_jobs() -> ListPostTrainingJobsResponse:
        return await impl.get_training_jobs()

    @router.get(
        "/jobs/{job_uuid}/status",
        response_model=PostTrainingJobStatusResponse,
        summary="Get the status of a training job.",
    )
    async def get_training_job_status(job_uuid: Annotated[str, _JOB_UUID_PATH]) -> PostTrainingJobStatusResponse:
        return await impl.get_training_job_status(GetTrainingJobStatusRequest(job_uuid=job_uuid))

    @router.post("/jobs/{job_uuid}/cancel", summary="Cancel a training job.")
    async def cancel_training_job(job_uuid: Annotated[str, _JOB_UUID_PATH]) -> None:
        await impl.cancel_training_job(CancelTrainingJobRequest(job_uuid=job_uuid))

    @router.get(
        "/jobs/{job_uuid}/artifacts",
        response_model=PostTrainingJobArtifactsResponse,
        summary="Get the artifacts of a training job.",
    )
    async def get_training_job_artifacts(
        job_uuid: Annotated[str, _JOB_UUID_PATH],
    ) -> PostTrainingJobArtifactsResponse:
        return await impl.get_training_job_artifacts(GetTrainingJobArtifactsRequest(job_uuid=job_uuid))

    # ---- older forms: job_uuid in the query (status, artifacts) or the body (cancel) ----

    @router.get(
        "/job/status",
        response_model=PostTrainingJobStatusResponse,
        summary="Get the status of a training job (older form).",
        deprecated=True,
    )
    async def get_training_job_status_by_query(
        job_uuid: Annotated[str, _JOB_UUID_QUERY],
    ) -> PostTrainingJobStatusResponse:
        return await impl.get_training_job_status(GetTrainingJobStatusRequest(job_uuid=job_uuid))

    @router.post("/job/cancel", summary="Cancel a training job (older form).", deprecated=True)
    async def cancel_training_job_by_body(
        body: Annotated[CancelTrainingJobRequest | None, Body()] = None,
        job_uuid: Annotated[str | None, Query(description="Id of the job (when not in the body).")] = None,
    ) -> None:
        if body is not None and job_uuid is not None and body.job_uuid != job_uuid:
            raise HTTPException(status_code=400, detail="job_uuid: the body and the query name different jobs")
        uuid = body.job_uuid if body is not None else job_uuid
        if not uuid:
            raise HTTPException(status_code=400, detail="job_uuid: required (JSON body or query)")
        await impl.cancel_training_job(CancelTrainingJobRequest(job_uuid=uuid))

    @router.get(
        "/job/artifacts",
        response_model=PostTrainingJobArtifactsResponse,
        summary="Get the artifacts of a training job (older form).",
        deprecated=True,
    )
    async def get_training_job_artifacts_by_query(
        job_uuid: Annotated[str, _JOB_UUID_QUERY],
    ) -> PostTrainingJobArtifactsResponse:
        return await impl.get_training_job_artifacts(GetTrainingJobArtifactsRequest(job_uuid=job_uuid))

    return router
