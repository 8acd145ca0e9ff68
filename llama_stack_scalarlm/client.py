"""A small HTTP client for ScalarLM's own routes (bulk generation, training), for scripts and the CLI.

It authenticates the usual way: ``api_key=``, else ``SCALARLM_API_KEY``, else
``LLAMA_STACK_CLIENT_API_KEY`` (a token from ``scalarlm token create``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from .api.scalarlm import BulkGenerateRequest, BulkGenerateResponse, BulkResultsResponse, LogChunk
from .queue.schema import GenerationResult, QueueStats, RequestStatus
from .registry.schema import TERMINAL_STATES, JobStatus
from .registry.uploads import UploadSession
from .safety.run_schema import AILuminateRun, AILuminateRunRequest
from .slurm import QueueEntry

_BATCH = 5_000
_CHUNK = 8 << 20  # bytes read and sent at a time (and the progress bar's step)
_SETTLE_POLL_S = 0.2  # how often a resume asks whether a PUT is still storing bytes
_RETRIES = 3
_LONG_POLL_S = 10.0
_TRAINING = "/v1alpha/post-training"


def api_key_from_env() -> str | None:
    return os.environ.get("SCALARLM_API_KEY") or os.environ.get("LLAMA_STACK_CLIENT_API_KEY")


class ScalarLMClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8321", timeout_s: float = 120.0, api_key: str | None = None):
        api_key = api_key or api_key_from_env()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers)
        self._received: list[str] = []  # results handed to the caller, acknowledged with the next call

    def submit(self, model: str, prompts: Sequence[str | list[dict]], **sampling) -> list[str]:
        """Queue prompts (in batches of 5,000 per call); returns one request id per prompt."""
        ids: list[str] = []
        for start in range(0, len(prompts), _BATCH):
            body = BulkGenerateRequest(model=model, prompts=list(prompts[start : start + _BATCH]), **sampling)
            response = self._post("/v1/scalarlm/generate", body.model_dump(mode="json", exclude_none=True))
            ids.extend(BulkGenerateResponse.model_validate(response).request_ids)
        return ids

    def poll(self, ids: Sequence[str], wait_s: float = 0.0) -> dict[str, GenerationResult]:
        """Finished results among ``ids``. What one call returns is acknowledged (deleted on the server)
        by the next call, or by :meth:`ack`: a response lost on the way is handed over again. ``wait_s``
        makes it a long poll on the oldest ids (the queue serves them first)."""
        return {s.id: s.result for s in self._statuses(ids, wait_s) if s.result is not None}

    def ack(self) -> None:
        """Acknowledge what the last calls returned (the server deletes those results)."""
        while self._received:
            batch, self._received = self._received[:_BATCH], self._received[_BATCH:]
            self._post("/v1/scalarlm/generate/results", {"request_ids": batch, "ack": batch})

    def cancel_requests(self, ids: Sequence[str]) -> list[str]:
        """Stop requests (never generated if still queued) or delete their results."""
        cancelled = []
        for start in range(0, len(ids), _BATCH):
            body = {"request_ids": list(ids[start : start + _BATCH])}
            cancelled += self._post("/v1/scalarlm/generate/cancel", body)["cancelled"]
        return cancelled

    def generate(
        self,
        model: str,
        prompts: Sequence[str | list[dict]],
        progress: Callable[[int, int], None] | None = None,
        **sampling,
    ) -> list[GenerationResult]:
        """Submit in bulk, long-poll until every result is in; results in prompt order."""
        ids = self.submit(model, prompts, **sampling)
        results: dict[str, GenerationResult] = {}
        try:
            while len(results) < len(ids):
                for status in self._statuses([i for i in ids if i not in results], _LONG_POLL_S):
                    if status.result is not None:
                        results[status.id] = status.result
                    elif status.state == "unknown":
                        raise KeyError(f"request {status.id} is gone: cancelled, acknowledged elsewhere, or expired")
                if progress:
                    progress(len(results), len(ids))
        except KeyboardInterrupt:  # the caller gave up: what is still queued is not generated for nobody
            self.cancel_requests([i for i in ids if i not in results])
            raise
        self.ack()
        return [results[i] for i in ids]

    def _statuses(self, ids: Sequence[str], wait_s: float) -> list[RequestStatus]:
        """Statuses of ``ids``; each call acknowledges the results the previous ones returned."""
        statuses = []
        for start in range(0, len(ids), _BATCH):
            ack, self._received = self._received[:_BATCH], self._received[_BATCH:]
            body = {"request_ids": list(ids[start : start + _BATCH]), "wait_s": wait_s if start == 0 else 0.0,
                    "ack": ack}
            batch = BulkResultsResponse.model_validate(self._post("/v1/scalarlm/generate/results", body)).results
            self._received += [s.id for s in batch if s.result is not None]
            statuses += batch
        return statuses

    def wait_served(self, model: str, timeout_s: float = 300.0) -> None:
        """Until ``model`` (a job id) is in the distribution's ``/v1/models``: a job that just
        completed is listed within the server's next registry scan (about a second)."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self._http.get("/v1/models")
            _raise(response)
            if any(m["id"].split("/")[-1] == model for m in response.json()["data"]):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{model} is not served after {timeout_s:.0f} s")
            time.sleep(0.25)

    def queue_stats(self) -> QueueStats:
        response = self._http.get("/v1/scalarlm/queue")
        _raise(response)
        return QueueStats.model_validate(response.json())

    # -- training -----------------------------------------------------------------------------

    def upload(self, path: Path, progress: Callable[[int, int], None] | None = None) -> str:
        """Upload a dataset; returns the content's sha256. The file goes in one streamed PUT that the
        server hashes as it writes. A broken transfer resumes where the server's bytes end (in this
        call, or the next one for the same file), and a file uploaded before (same path, size, mtime
        and inode) is not sent again."""
        path = Path(path).resolve()
        stat = path.stat()
        cache = _UploadCache()
        session = self._resume_or_begin(cache.get(path, stat), stat.st_size)
        if not session.complete:
            cache.put(path, stat, upload_id=session.upload_id)
        for attempt in range(_RETRIES + 1):
            if session.complete or session.offset == stat.st_size:
                break
            try:
                with open(path, "rb") as handle:
                    response = self._http.put(f"/v1/scalarlm/uploads/{session.upload_id}",
                                              params={"offset": session.offset},
                                              content=_read_from(handle, session.offset, stat.st_size, progress))
            except httpx.TransportError:
                if attempt == _RETRIES:
                    raise
                response = None
            if response is not None and response.status_code != 409:
                _raise(response)
                session = UploadSession.model_validate(response.json())
            else:  # cut off, or the server stands at another offset: resume from where its bytes end
                session = self._standing(session.upload_id)
        if not session.complete:
            session = UploadSession.model_validate(self._post(f"/v1/scalarlm/uploads/{session.upload_id}/complete", {}))
        if _version(path.stat()) == _version(stat):  # unchanged while it was sent: the hash belongs to this version
            cache.put(path, stat, sha256=session.sha256)
        if progress:
            progress(stat.st_size, stat.st_size)
        return session.sha256

    def _resume_or_begin(self, known: dict, size: int) -> UploadSession:
        if "upload_id" in known:
            try:
                return self._standing(known["upload_id"])
            except KeyError:  # gone (finished or removed): start again
                pass
        body = {"size": size, "sha256": known.get("sha256")}
        return UploadSession.model_validate(self._post("/v1/scalarlm/uploads", body))

    def _standing(self, upload_id: str) -> UploadSession:
        """Where the upload stands once no PUT is storing bytes into it: a PUT of ours that was cut
        off may still be, and resuming from the bytes on disk before then sends its bytes again."""
        while True:
            response = self._http.get(f"/v1/scalarlm/uploads/{upload_id}")
            if response.status_code == 404:
                raise KeyError(upload_id)
            _raise(response)
            session = UploadSession.model_validate(response.json())
            if not session.storing:
                return session
            time.sleep(_SETTLE_POLL_S)

    def train(self, model: str, dataset_sha256: str, steps: int, learning_rate: float = 1e-3,
              batch_size: int = 8, lora: bool = False, lora_rank: int = 8, method: str = "sft",
              shuffle: bool = True, packed: bool = False, loss_type: str = "sigmoid", **settings) -> str:
        """Submit through the post_training API; returns the job id (also the trained model's id).
        ``settings``: any other ScalarLM hyperparameter by name (README, "Training")."""
        training = {
            "n_epochs": 1, "max_steps_per_epoch": steps, "gradient_accumulation_steps": 1,
            "data_config": {"dataset_id": f"sha256:{dataset_sha256}", "batch_size": batch_size, "shuffle": shuffle,
                            "packed": packed, "data_format": "instruct"},
            "optimizer_config": {"optimizer_type": "adamw", "lr": learning_rate, "weight_decay": 0.0,
                                 "num_warmup_steps": 0},
        }
        body = {"job_uuid": f"cli-{uuid.uuid4().hex[:12]}", "training_config": training,
                "hyperparam_search_config": settings, "logger_config": {}}
        if method == "dpo":
            body |= {"finetuned_model": model,
                     "algorithm_config": {"beta": settings.pop("dpo_beta", 0.1), "loss_type": loss_type}}
            return self._post(f"{_TRAINING}/preference-optimize", body)["job_uuid"]
        body["model"] = model
        if method == "grpo":
            body["hyperparam_search_config"] = {**settings, "method": "grpo"}
        if lora:
            body["algorithm_config"] = {"type": "LoRA", "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                                        "apply_lora_to_mlp": True, "apply_lora_to_output": False,
                                        "rank": lora_rank, "alpha": 2 * lora_rank}
        return self._post(f"{_TRAINING}/supervised-fine-tune", body)["job_uuid"]

    def job(self, job_id: str) -> JobStatus:
        response = self._http.get(f"/v1/scalarlm/training/jobs/{job_id}")
        _raise(response)
        return JobStatus.model_validate(response.json())

    def jobs(self) -> list[JobStatus]:
        response = self._http.get(f"{_TRAINING}/jobs")
        _raise(response)
        return [self.job(j["job_uuid"]) for j in response.json()["data"]]

    def follow(self, job_id: str, progress: Callable[[JobStatus], None] | None = None,
               poll_s: float = 1.0) -> JobStatus:
        """Poll until the job ends (COMPLETED, FAILED or CANCELLED)."""
        while True:
            status = self.job(job_id)
            if progress:
                progress(status)
            if status.state in TERMINAL_STATES:
                return status
            time.sleep(poll_s)

    def log(self, job_id: str, offset: int = 0) -> LogChunk:
        response = self._http.get(f"/v1/scalarlm/training/jobs/{job_id}/log", params={"offset": offset})
        _raise(response)
        return LogChunk.model_validate(response.json())

    def cancel(self, job_id: str) -> None:
        _raise(self._http.post(f"{_TRAINING}/jobs/{job_id}/cancel"))

    def squeue(self) -> list[QueueEntry]:
        response = self._http.get("/v1/scalarlm/training/squeue")
        _raise(response)
        return [QueueEntry.model_validate(e) for e in response.json()]

    def ailuminate(self, request: AILuminateRunRequest,
                   progress: Callable[[AILuminateRun], None] | None = None, poll_s: float = 2.0) -> AILuminateRun:
        """Grade a model on AILuminate and wait for the record. A run interrupted by a server restart
        resumes by itself when the server is back; one whose caller stopped waiting runs on; either
        is found again by starting it again: same request, same run."""
        run = AILuminateRun.model_validate(self._post("/v1/scalarlm/safety/ailuminate", request.model_dump(mode="json")))
        while True:
            if progress:
                progress(run)
            if run.state != "running":
                return run
            time.sleep(poll_s)
            run = self.ailuminate_run(run.run_id)

    def ailuminate_run(self, run_id: str) -> AILuminateRun:
        """A run of this caller's, or of the safety gate's (a gated job's ``promotion`` names both of its runs)."""
        response = self._http.get(f"/v1/scalarlm/safety/ailuminate/{run_id}")
        _raise(response)
        return AILuminateRun.model_validate(response.json())

    def cancel_ailuminate(self, run_id: str) -> AILuminateRun:
        """Stop a run: it stays stopped through server restarts until started again (which resumes it)."""
        response = self._http.delete(f"/v1/scalarlm/safety/ailuminate/{run_id}")
        _raise(response)
        return AILuminateRun.model_validate(response.json())

    def _post(self, path: str, body: dict) -> dict:
        response = self._http.post(path, json=body)
        _raise(response)
        return response.json()


def _raise(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise httpx.HTTPStatusError(
            f"{response.status_code} from {response.request.url.path}: {response.text}",
            request=response.request, response=response,
        )


def _read_from(handle, offset: int, size: int, progress: Callable[[int, int], None] | None) -> Iterator[bytes]:
    handle.seek(offset)
    while block := handle.read(_CHUNK):
        offset += len(block)
        yield block
        if progress:
            progress(offset, size)


class _UploadCache:
    """What this user's uploads of a file left (its sha256 once stored, or the unfinished upload's
    id), keyed by path and valid for one size, mtime and inode: the same file again sends nothing
    and costs no hashing, and an upload cut off resumes."""

    def __init__(self):
        self.path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scalarlm" / "uploads.json"

    def get(self, path: Path, stat: os.stat_result) -> dict:
        entry = self._read().get(str(path)) or {}
        return entry if entry.get("version") == _version(stat) else {}

    def put(self, path: Path, stat: os.stat_result, **fields: str) -> None:
        entries = {name: entry for name, entry in self._read().items() if os.path.exists(name)}
        entries[str(path)] = {"version": _version(stat), **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, self.path)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}


def _version(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]
