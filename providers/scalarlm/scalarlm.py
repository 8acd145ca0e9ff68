"""The ``scalarlm`` API's implementation: validation and translation onto the shared runtime."""

from __future__ import annotations

import asyncio

from llama_stack_scalarlm.api.scalarlm import (
    BulkGenerateRequest,
    BulkGenerateResponse,
    BulkResultsRequest,
    BulkResultsResponse,
    CancelRequest,
    CancelResponse,
    LogChunk,
    Principal,
    UploadRequest,
)
from llama_stack_scalarlm.api.worker import (
    AbortResponse,
    HeartbeatRequest,
    LeaseRequest,
    LeaseResponse,
    ReportRequest,
    quiet_worker_access_log,
)
from llama_stack_scalarlm.auth.stack_client import answer_own_token_checks
from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import UnknownJobError, UnknownUploadError
from llama_stack_scalarlm.queue.admission import check_count
from llama_stack_scalarlm.queue.schema import GenerationRequest, QueueStats
from llama_stack_scalarlm.queue.store import BULK
from llama_stack_scalarlm.registry.schema import JobStatus
from llama_stack_scalarlm.registry.uploads import UploadSession
from llama_stack_scalarlm.runtime import ServerRuntime
from llama_stack_scalarlm.safety.run_schema import AILuminateRun, AILuminateRunRequest
from llama_stack_scalarlm.slurm import QueueEntry

from ..principal import principal


class ScalarLMProvider:
    def __init__(self, config: ScalarLMConfig):
        self.runtime = ServerRuntime.get(ScalarLMConfig.load(config.model_dump(exclude_unset=True)))
        self.worker_credential = self.runtime.worker_credential
        quiet_worker_access_log()
        answer_own_token_checks(self.runtime.tokens.principal)

    def request_body_limit(self) -> int:
        return self.runtime.config.limits.max_request_bytes

    # -- clients --------------------------------------------------------------------------------

    async def generate(self, request: BulkGenerateRequest) -> BulkGenerateResponse:
        limits = self.runtime.config.limits
        check_count("prompts", len(request.prompts), limits.max_bulk_prompts, "max_bulk_prompts")
        model = self.runtime.catalogue.resolve(request.model)
        common = dict(
            model=model,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            n=request.n,
            logprobs=request.logprobs,
            ignore_eos=request.ignore_eos,
        )
        requests = [
            GenerationRequest(kind="completion", prompt=p, **common)
            if isinstance(p, str)
            else GenerationRequest(kind="chat", messages=[m.model_dump() for m in p], **common)
            for p in request.prompts
        ]
        return BulkGenerateResponse(request_ids=self.runtime.submit(requests, principal(), BULK))

    async def results(self, request: BulkResultsRequest) -> BulkResultsResponse:
        limit = self.runtime.config.limits.max_bulk_prompts
        check_count("request_ids", len(request.request_ids), limit, "max_bulk_prompts")
        check_count("ack", len(request.ack), limit, "max_bulk_prompts")
        statuses = await self.runtime.queue.results(request.request_ids, principal(), request.wait_s, request.ack)
        return BulkResultsResponse(results=statuses)

    async def cancel(self, request: CancelRequest) -> CancelResponse:
        check_count("request_ids", len(request.request_ids), self.runtime.config.limits.max_bulk_prompts,
                    "max_bulk_prompts")
        return CancelResponse(cancelled=self.runtime.queue.cancel(request.request_ids, principal()))

    async def queue_stats(self) -> QueueStats:
        return self.runtime.queue.stats()

    async def validate_token(self, token: str) -> Principal | None:
        name = self.runtime.tokens.principal(token)
        return None if name is None else Principal(principal=name)

    # -- workers --------------------------------------------------------------------------------

    async def lease(self, request: LeaseRequest) -> LeaseResponse:
        check_count("models", len(request.models), self.runtime.config.limits.max_list, "max_list")
        items = await self.runtime.queue.lease(request.worker_id, request.models, request.capacity, request.wait_s)
        return LeaseResponse(items=items)

    async def report(self, request: ReportRequest) -> AbortResponse:
        return AbortResponse(abort=self.runtime.queue.report(request.worker_id, request.events))

    async def heartbeat(self, request: HeartbeatRequest) -> AbortResponse:
        running = [(held.id, held.lease) for held in request.running]
        return AbortResponse(abort=self.runtime.queue.heartbeat(request.worker_id, request.progress, running))

    # -- training -------------------------------------------------------------------------------

    async def begin_upload(self, request: UploadRequest) -> UploadSession:
        return await asyncio.to_thread(self.runtime.training.uploads.begin, request.size, request.sha256)

    async def upload_status(self, upload_id: str) -> UploadSession:
        return self._upload(upload_id)

    async def append_upload(self, upload_id: str, offset: int, chunks) -> UploadSession:
        self._upload(upload_id)
        return await self.runtime.training.uploads.append(upload_id, offset, chunks)

    async def finish_upload(self, upload_id: str) -> UploadSession:
        self._upload(upload_id)
        return await self.runtime.training.uploads.finish(upload_id)

    async def training_job(self, job_id: str) -> JobStatus:
        return await asyncio.to_thread(lambda: self.runtime.training.status(self._job(job_id)))

    async def training_log(self, job_id: str, offset: int) -> LogChunk:
        next_offset, text = await asyncio.to_thread(
            lambda: self.runtime.training.registry.read_log(self._job(job_id), offset))
        return LogChunk(offset=next_offset, text=text)

    async def slurm_queue(self) -> list[QueueEntry]:
        return await asyncio.to_thread(self.runtime.training.slurm.queue)

    async def start_ailuminate(self, request: AILuminateRunRequest) -> AILuminateRun:
        return await self.runtime.benchmarks.start(request, principal())

    async def ailuminate_run(self, run_id: str) -> AILuminateRun:
        return self.runtime.benchmarks.status(run_id, principal())

    async def cancel_ailuminate(self, run_id: str) -> AILuminateRun:
        self.runtime.benchmarks.cancel(run_id, principal())
        return self.runtime.benchmarks.status(run_id, principal())

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
