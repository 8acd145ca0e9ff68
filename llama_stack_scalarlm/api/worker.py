"""The engine workers' protocol: lease work, report deltas and results, heartbeat.

On a router of its own, for workers only: the routes are public to the stack's user
authentication (a worker has no user token, and a per-call token check would cost a loopback
round trip on calls made many times a second) and answer only the worker credential from the
shared state root (``auth.worker``); a user token is refused here like no token at all.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from fastapi import APIRouter, Depends, Header, HTTPException
from llama_stack_api.router_utils import PUBLIC_ROUTE_KEY
from pydantic import BaseModel, Field

from ..queue.schema import RequestId, WorkEvent, WorkItem

PREFIX = "/v1/scalarlm/worker"


class LeaseRequest(BaseModel):
    worker_id: str = Field(..., min_length=1, max_length=200)
    models: list[str] = Field(..., min_length=1, description="models this worker serves (bounded by limits.max_list)")
    capacity: int = Field(..., ge=1, le=100_000)
    wait_s: float = Field(0.0, ge=0, le=60)


class LeaseResponse(BaseModel):
    items: list[WorkItem]


class ReportRequest(BaseModel):
    worker_id: str = Field(..., min_length=1, max_length=200)
    events: list[WorkEvent]


class HeldLease(BaseModel):
    id: RequestId
    lease: str


class HeartbeatRequest(BaseModel):
    worker_id: str = Field(..., min_length=1, max_length=200)
    progress: int = Field(0, ge=0, description="the engine's step counter: a hung engine's stands still")
    running: list[HeldLease] = Field(default_factory=list, description="what the worker is generating now")


class AbortResponse(BaseModel):
    abort: list[RequestId] = Field(default_factory=list, description="requests to stop generating: "
                                   "cancelled by their caller, or no longer leased to this worker")


@runtime_checkable
class WorkerProtocol(Protocol):
    worker_credential: str

    async def lease(self, request: LeaseRequest) -> LeaseResponse: ...
    async def report(self, request: ReportRequest) -> AbortResponse: ...
    async def heartbeat(self, request: HeartbeatRequest) -> AbortResponse: ...


def create_worker_router(impl: WorkerProtocol) -> APIRouter:
    from ..auth.worker import is_worker

    def require_worker(authorization: str | None = Header(None)) -> None:
        """A dependency: checked before the body is validated, so a caller without it learns nothing."""
        if not is_worker(authorization, impl.worker_credential):
            raise HTTPException(401, "the worker protocol needs the worker credential from the state root "
                                     "(auth/worker.token); user tokens are not accepted here")

    router = APIRouter(prefix=PREFIX, tags=["scalarlm-worker"], dependencies=[Depends(require_worker)])
    public = {"include_in_schema": False, "openapi_extra": {PUBLIC_ROUTE_KEY: True}}

    @router.post("/lease", response_model=LeaseResponse, **public)
    async def lease(request: LeaseRequest) -> LeaseResponse:
        return await impl.lease(request)

    @router.post("/events", response_model=AbortResponse, **public)
    async def report(request: ReportRequest) -> AbortResponse:
        return await impl.report(request)

    @router.post("/heartbeat", response_model=AbortResponse, **public)
    async def heartbeat(request: HeartbeatRequest) -> AbortResponse:
        return await impl.heartbeat(request)

    return router


_QUIET = (f"{PREFIX}/", "/v1/scalarlm/auth/")


class _WorkerCallsFilter(logging.Filter):
    """Workers lease and report many times a second, and every user call brings a token check:
    logging each cost the server more CPU than serving it (measured with py-spy), and an engine
    sharing the host runs slower for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) > 2 and str(args[2]).startswith(_QUIET))


def quiet_worker_access_log() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _WorkerCallsFilter) for f in logger.filters):
        logger.addFilter(_WorkerCallsFilter())
