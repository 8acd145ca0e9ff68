"""The ``scalarlm`` API's implementation: validation and translation onto the shared runtime."""

from __future__ import annotations

from llama_stack_scalarlm.api.scalarlm import (
    BulkGenerateRequest,
    BulkGenerateResponse,
    BulkResultsRequest,
    BulkResultsResponse,
    HeartbeatRequest,
    LeaseRequest,
    LeaseResponse,
    ReportRequest,
)
from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.queue.schema import GenerationRequest, QueueStats
from llama_stack_scalarlm.runtime import ServerRuntime


class ScalarLMBulkProvider:
    def __init__(self, config: ScalarLMConfig):
        self.runtime = ServerRuntime.get(ScalarLMConfig.load(config.model_dump(exclude_unset=True)))

    async def generate(self, request: BulkGenerateRequest) -> BulkGenerateResponse:
        limit = self.runtime.config.limits.max_bulk_prompts
        if len(request.prompts) > limit:
            raise InvalidFieldError("prompts", f"{len(request.prompts)} prompts is more than the limit of {limit}")
        model = self.runtime.resolve_model(request.model)
        common = dict(
            model=model,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
        )
        requests = [
            GenerationRequest(kind="completion", prompt=p, **common)
            if isinstance(p, str)
            else GenerationRequest(kind="chat", messages=[m.model_dump() for m in p], **common)
            for p in request.prompts
        ]
        return BulkGenerateResponse(request_ids=self.runtime.submit(requests))

    async def results(self, request: BulkResultsRequest) -> BulkResultsResponse:
        return BulkResultsResponse(results=self.runtime.queue.results(request.request_ids))

    async def queue_stats(self) -> QueueStats:
        return self.runtime.queue.stats()

    async def lease(self, request: LeaseRequest) -> LeaseResponse:
        items = await self.runtime.queue.lease(request.worker_id, request.models, request.capacity, request.wait_s)
        return LeaseResponse(items=items)

    async def report(self, request: ReportRequest) -> None:
        self.runtime.queue.report(request.worker_id, request.events)

    async def heartbeat(self, request: HeartbeatRequest) -> None:
        self.runtime.queue.heartbeat(request.worker_id)

    async def shutdown(self) -> None:
        self.runtime.stop()
