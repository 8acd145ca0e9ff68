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
    LogChunk,
    ReportRequest,
    UploadRequest,
)
from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError, UnknownJobError, UnknownUploadError
from llama_stack_scalarlm.queue.schema import GenerationRequest, QueueStats
from llama_stack_scalarlm.registry.schema import JobStatus
from llama_stack_scalarlm.registry.uploads import UploadSession
from llama_stack_scalarlm.runtime import ServerRuntime
from llama_stack_scalarlm.slurm import QueueEntry


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
        return BulkResultsResponse(results=await self.runtime.queue.results(request.request_ids, request.wait_s))

    async def queue_stats(self) -> QueueStats:
        return self.runtime.queue.stats()

    async def lease(self, request: LeaseRequest) -> LeaseResponse:
        items = await self.runtime.queue.lease(request.worker_id, request.models, request.capacity, request.wait_s)
        return LeaseResponse(items=items)

    async def report(self, request: ReportRequest) -> None:
        self.runtime.queue.report(request.worker_id, request.events)

    async def heartbeat(self, request: HeartbeatRequest) -> None:
        self.runtime.queue.heartbeat(request.worker_id)

    async def begin_upload(self, request: UploadRequest) -> UploadSession:
        return self.runtime.training.uploads.begin(request.size, request.sha256)

    async def upload_status(self, upload_id: str) -> UploadSession:
        return self._upload(upload_id)

    async def append_upload(self, upload_id: str, offset: int, chunks) -> UploadSession:
        self._upload(upload_id)
        return await self.runtime.training.uploads.append(upload_id, offset, chunks)

    async def finish_upload(self, upload_id: str) -> UploadSession:
        self._upload(upload_id)
        return self.runtime.training.uploads.finish(upload_id)

    async def training_job(self, job_id: str) -> JobStatus:
        return self.runtime.training.status(self._job(job_id))

    async def training_log(self, job_id: str, offset: int) -> LogChunk:
        next_offset, text = self.runtime.training.registry.read_log(self._job(job_id), offset)
        return LogChunk(offset=next_offset, text=text)

    async def slurm_queue(self) -> list[QueueEntry]:
        return self.runtime.training.slurm.queue()

    def _upload(self, upload_id: str) -> UploadSession:
        try:
            return self.runtime.training.uploads.session(upload_id)
        except KeyError:
            raise UnknownUploadError(upload_id) from None

    def _job(self, job: str) -> str:
        job_id = self.runtime.training.registry.resolve(job)
        if job_id is None:
            raise UnknownJobError(job)
        return job_id

    async def shutdown(self) -> None:
        self.runtime.stop()
