"""The ``scalarlm`` API: bulk generation for clients, and the work protocol for engine workers.

Loaded by Llama Stack from ``distributions/scalarlm/apis/scalarlm.yaml``; the stack calls
``available_providers()`` and mounts ``create_router(impl)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from fastapi import APIRouter, Query, Request
from llama_stack_api import Api, InlineProviderSpec
from pydantic import BaseModel, Field

from ..queue.schema import QueueStats, RequestStatus, WorkEvent, WorkItem
from ..registry.schema import JobStatus
from ..registry.uploads import UploadSession
from ..slurm import QueueEntry

PREFIX = "/v1/scalarlm"


class ChatMessage(BaseModel):
    role: str = Field(..., pattern="^(system|user|assistant|tool|developer)$")
    content: str


class BulkGenerateRequest(BaseModel):
    """Many prompts, one call: each prompt is a string (completion) or a list of messages (chat)."""

    model: str
    prompts: list[str | list[ChatMessage]] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="None: the model's default")
    top_p: float | None = Field(None, gt=0, le=1, description="None: the model's default")
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class BulkGenerateResponse(BaseModel):
    request_ids: list[int]


class BulkResultsRequest(BaseModel):
    request_ids: list[int] = Field(..., min_length=1, max_length=100_000)
    wait_s: float = Field(0.0, ge=0, le=60, description="long poll: answer once any of them has finished, or after this long")


class BulkResultsResponse(BaseModel):
    results: list[RequestStatus]


class LeaseRequest(BaseModel):
    worker_id: str = Field(..., min_length=1, max_length=200)
    models: list[str] = Field(..., min_length=1)
    capacity: int = Field(..., ge=1, le=100_000)
    wait_s: float = Field(0.0, ge=0, le=60)


class LeaseResponse(BaseModel):
    items: list[WorkItem]


class ReportRequest(BaseModel):
    worker_id: str = Field(..., min_length=1, max_length=200)
    events: list[WorkEvent]


class HeartbeatRequest(BaseModel):
    worker_id: str = Field(..., min_length=1, max_length=200)


class UploadRequest(BaseModel):
    size: int = Field(..., ge=1, description="bytes to upload")
    sha256: str | None = Field(None, description="the content's hash, if known: identical content is not sent again")


class LogChunk(BaseModel):
    offset: int = Field(..., description="where the next read starts")
    text: str


@runtime_checkable
class ScalarLM(Protocol):
    async def generate(self, request: BulkGenerateRequest) -> BulkGenerateResponse: ...
    async def results(self, request: BulkResultsRequest) -> BulkResultsResponse: ...
    async def queue_stats(self) -> QueueStats: ...
    async def lease(self, request: LeaseRequest) -> LeaseResponse: ...
    async def report(self, request: ReportRequest) -> None: ...
    async def heartbeat(self, request: HeartbeatRequest) -> None: ...
    async def begin_upload(self, request: UploadRequest) -> UploadSession: ...
    async def upload_status(self, upload_id: str) -> UploadSession: ...
    async def append_upload(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes]) -> UploadSession: ...
    async def finish_upload(self, upload_id: str) -> UploadSession: ...
    async def training_job(self, job_id: str) -> JobStatus: ...
    async def training_log(self, job_id: str, offset: int) -> LogChunk: ...
    async def slurm_queue(self) -> list[QueueEntry]: ...


def available_providers() -> list[InlineProviderSpec]:
    return [
        InlineProviderSpec(
            api=Api("scalarlm"),
            provider_type="inline::scalarlm",
            module="llama_stack_scalarlm.providers.bulk",
            config_class="llama_stack_scalarlm.config.ScalarLMConfig",
            description="ScalarLM's request queue: bulk generation and the engine workers' protocol.",
        )
    ]


def create_router(impl: ScalarLM) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["scalarlm"])

    @router.post("/generate", response_model=BulkGenerateResponse, summary="Queue many prompts; returns ids at once")
    async def generate(request: BulkGenerateRequest) -> BulkGenerateResponse:
        return await impl.generate(request)

    @router.post("/generate/results", response_model=BulkResultsResponse, summary="Poll results (handed over once)")
    async def results(request: BulkResultsRequest) -> BulkResultsResponse:
        return await impl.results(request)

    @router.get("/queue", response_model=QueueStats, summary="Queue depth and live workers")
    async def queue_stats() -> QueueStats:
        return await impl.queue_stats()

    @router.post("/uploads", response_model=UploadSession, summary="Start an upload (or find the content stored)")
    async def begin_upload(request: UploadRequest) -> UploadSession:
        return await impl.begin_upload(request)

    @router.get("/uploads/{upload_id}", response_model=UploadSession, summary="Where an upload stands (to resume)")
    async def upload_status(upload_id: str) -> UploadSession:
        return await impl.upload_status(upload_id)

    @router.put("/uploads/{upload_id}", response_model=UploadSession, summary="Append raw bytes at `offset`")
    async def append_upload(upload_id: str, request: Request, offset: int = Query(..., ge=0)) -> UploadSession:
        return await impl.append_upload(upload_id, offset, request.stream())

    @router.post("/uploads/{upload_id}/complete", response_model=UploadSession, summary="Finish: hash checked, stored")
    async def finish_upload(upload_id: str) -> UploadSession:
        return await impl.finish_upload(upload_id)

    @router.get("/training/jobs/{job_id}", response_model=JobStatus, summary="A job's full status and loss history")
    async def training_job(job_id: str) -> JobStatus:
        return await impl.training_job(job_id)

    @router.get("/training/jobs/{job_id}/log", response_model=LogChunk, summary="A job's SLURM log from `offset`")
    async def training_log(job_id: str, offset: int = Query(0, ge=0)) -> LogChunk:
        return await impl.training_log(job_id, offset)

    @router.get("/training/squeue", response_model=list[QueueEntry], summary="The SLURM queue")
    async def slurm_queue() -> list[QueueEntry]:
        return await impl.slurm_queue()

    @router.post("/worker/lease", response_model=LeaseResponse, include_in_schema=False)
    async def lease(request: LeaseRequest) -> LeaseResponse:
        return await impl.lease(request)

    @router.post("/worker/events", include_in_schema=False)
    async def report(request: ReportRequest) -> dict:
        await impl.report(request)
        return {}

    @router.post("/worker/heartbeat", include_in_schema=False)
    async def heartbeat(request: HeartbeatRequest) -> dict:
        await impl.heartbeat(request)
        return {}

    return router
