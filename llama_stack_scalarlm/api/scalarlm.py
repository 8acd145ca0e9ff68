"""The ``scalarlm`` API: bulk generation, uploads and training status for clients; the token check
the stack's ``server.auth`` calls; and (``api.worker``) the engine workers' protocol.

Loaded by Llama Stack from ``distributions/scalarlm/apis/scalarlm.yaml``; the stack calls
``available_providers()`` (the provider itself is declared by its run-config ``module:``) and
mounts ``create_router(impl)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol, runtime_checkable

from fastapi import APIRouter, HTTPException, Query, Request
from llama_stack_api.router_utils import PUBLIC_ROUTE_KEY
from pydantic import BaseModel, Field

from ..auth.stack_client import INVALID_TOKEN, VALIDATE_PATH, api_key_of
from ..queue.schema import QueueStats, RequestId, RequestStatus
from ..registry.schema import JobStatus
from ..registry.uploads import UploadSession
from ..safety.run_schema import AILuminateRun, AILuminateRunRequest
from ..slurm import QueueEntry
from ..strict import StrictModel
from .bounded import bounded_route_class
from .worker import WorkerProtocol, create_worker_router

PREFIX = "/v1/scalarlm"


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class BulkGenerateRequest(StrictModel):
    """Many prompts, one call: each prompt is a string (completion) or a list of messages (chat)."""

    model: str
    prompts: list[str | list[ChatMessage]] = Field(..., min_length=1, description="at most limits.max_bulk_prompts")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="None: the model's default")
    top_p: float | None = Field(None, gt=0, le=1, description="None: the model's default")
    stop: list[str] = Field(default_factory=list, description="at most limits.max_list strings")
    seed: int | None = None
    n: int = Field(1, ge=1, description="samples per prompt (at most limits.max_n)")
    logprobs: int | None = Field(None, ge=0, le=20, description="per sampled token: its log-probability and the "
                                 "top k alternatives (token ids), in each choice's `logprobs`")
    ignore_eos: bool = Field(False, description="generate to max_tokens even past the end of sequence (vLLM's; "
                             "fixed-length benchmarks)")


class BulkGenerateResponse(BaseModel):
    request_ids: list[RequestId]


class BulkResultsRequest(StrictModel):
    request_ids: list[RequestId] = Field(..., min_length=1, description="at most limits.max_bulk_prompts")
    wait_s: float = Field(0.0, ge=0, le=60, description="long poll: answer once any of them has finished, or after this long")
    ack: list[RequestId] = Field(
        default_factory=list,
        description="ids whose results you received: deleted now. Results not acknowledged are handed over "
        "again, until limits.result_ttl_s",
    )


class BulkResultsResponse(BaseModel):
    results: list[RequestStatus]


class CancelRequest(StrictModel):
    request_ids: list[RequestId] = Field(..., min_length=1, description="at most limits.max_bulk_prompts")


class CancelResponse(BaseModel):
    cancelled: list[RequestId] = Field(..., description="the ids that were yours and are gone now (never generated, "
                                       "stopped, or their result deleted)")


class UploadRequest(StrictModel):
    size: int = Field(..., ge=1, description="bytes to upload")
    sha256: str | None = Field(None, description="the content's hash, if known: identical content is not sent again")


class LogChunk(BaseModel):
    offset: int = Field(..., description="where the next read starts")
    text: str


class Principal(BaseModel):
    """What the stack's ``custom`` auth provider expects back for a valid token."""

    principal: str


@runtime_checkable
class ScalarLM(WorkerProtocol, Protocol):
    async def generate(self, request: BulkGenerateRequest) -> BulkGenerateResponse: ...
    async def results(self, request: BulkResultsRequest) -> BulkResultsResponse: ...
    async def cancel(self, request: CancelRequest) -> CancelResponse: ...
    async def queue_stats(self) -> QueueStats: ...
    async def validate_token(self, token: str) -> Principal | None: ...
    async def begin_upload(self, request: UploadRequest) -> UploadSession: ...
    async def upload_status(self, upload_id: str) -> UploadSession: ...
    async def append_upload(self, upload_id: str, offset: int, chunks: AsyncIterator[bytes]) -> UploadSession: ...
    async def finish_upload(self, upload_id: str) -> UploadSession: ...
    async def training_job(self, job_id: str) -> JobStatus: ...
    async def training_log(self, job_id: str, offset: int) -> LogChunk: ...
    async def slurm_queue(self) -> list[QueueEntry]: ...
    async def start_ailuminate(self, request: AILuminateRunRequest) -> AILuminateRun: ...
    async def ailuminate_run(self, run_id: str) -> AILuminateRun: ...
    async def cancel_ailuminate(self, run_id: str) -> AILuminateRun: ...
    def request_body_limit(self) -> int: ...


def available_providers() -> list:
    return []  # declared by the run config's `module: llama_stack_scalarlm.providers.scalarlm`


def create_router(impl: ScalarLM) -> APIRouter:
    """``impl`` is only used when a request arrives (the stack also builds routers with ``impl=None``
    to list routes)."""
    router = APIRouter(prefix=PREFIX, tags=["scalarlm"],
                       route_class=bounded_route_class(lambda: impl.request_body_limit()))

    @router.post("/generate", response_model=BulkGenerateResponse, summary="Queue many prompts; returns ids at once")
    async def generate(request: BulkGenerateRequest) -> BulkGenerateResponse:
        return await impl.generate(request)

    @router.post("/generate/results", response_model=BulkResultsResponse,
                 summary="Poll results (kept until acknowledged)")
    async def results(request: BulkResultsRequest) -> BulkResultsResponse:
        return await impl.results(request)

    @router.post("/generate/cancel", response_model=CancelResponse, summary="Cancel requests, or delete their results")
    async def cancel(request: CancelRequest) -> CancelResponse:
        return await impl.cancel(request)

    @router.get("/queue", response_model=QueueStats, summary="Queue depth and live workers")
    async def queue_stats() -> QueueStats:
        return await impl.queue_stats()

    @router.post(VALIDATE_PATH.removeprefix(PREFIX), response_model=Principal, include_in_schema=False,
                 openapi_extra={PUBLIC_ROUTE_KEY: True})
    async def validate(request: Request) -> Principal:
        """Called by the stack's ``custom`` auth provider with ``{api_key, request}``: 200 and the
        principal for a valid token, 401 for anything else."""
        token = api_key_of(await request.body())
        principal = None if token is None else await impl.validate_token(token)
        if principal is None:
            raise HTTPException(401, INVALID_TOKEN)
        return principal

    @router.post("/uploads", response_model=UploadSession, summary="Start an upload (or find the content stored)")
    async def begin_upload(request: UploadRequest) -> UploadSession:
        return await impl.begin_upload(request)

    @router.get("/uploads/{upload_id}", response_model=UploadSession, summary="Where an upload stands (to resume)")
    async def upload_status(upload_id: str) -> UploadSession:
        return await impl.upload_status(upload_id)

    @router.post("/uploads/{upload_id}/complete", response_model=UploadSession, summary="Finish: hash checked, stored")
    async def finish_upload(upload_id: str) -> UploadSession:
        return await impl.finish_upload(upload_id)

    @router.get("/training/jobs/{job_id}", response_model=JobStatus, summary="A job's full status and loss history")
    async def training_job(job_id: str) -> JobStatus:
        return await impl.training_job(job_id)

    @router.get("/training/jobs/{job_id}/log", response_model=LogChunk, summary="A job's SLURM log from `offset`")
    async def training_log(job_id: str, offset: int = Query(0, ge=0, le=2**63 - 1)) -> LogChunk:
        return await impl.training_log(job_id, offset)

    @router.get("/training/squeue", response_model=list[QueueEntry], summary="The SLURM queue")
    async def slurm_queue() -> list[QueueEntry]:
        return await impl.slurm_queue()

    @router.post("/safety/ailuminate", response_model=AILuminateRun,
                 summary="Grade a model on AILuminate (or resume the same run, or return it when done)")
    async def start_ailuminate(request: AILuminateRunRequest) -> AILuminateRun:
        return await impl.start_ailuminate(request)

    @router.get("/safety/ailuminate/{run_id}", response_model=AILuminateRun, summary="A run's progress and record")
    async def ailuminate_run(run_id: str) -> AILuminateRun:
        return await impl.ailuminate_run(run_id)

    @router.delete("/safety/ailuminate/{run_id}", response_model=AILuminateRun,
                   summary="Cancel a run (what it journaled stays: starting it again resumes it; a restart does not)")
    async def cancel_ailuminate(run_id: str) -> AILuminateRun:
        return await impl.cancel_ailuminate(run_id)

    streamed = APIRouter(prefix=PREFIX, tags=["scalarlm"])  # a streamed body: bounded by the upload's size

    @streamed.put("/uploads/{upload_id}", response_model=UploadSession, summary="Append raw bytes at `offset`")
    async def append_upload(upload_id: str, request: Request, offset: int = Query(..., ge=0)) -> UploadSession:
        return await impl.append_upload(upload_id, offset, request.stream())

    top = APIRouter()
    for part in (router, streamed, create_worker_router(impl)):
        top.include_router(part)
    return top
