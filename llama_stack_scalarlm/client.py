"""A small HTTP client for ScalarLM's own routes (bulk generation), for scripts and the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx

from .api.scalarlm import BulkGenerateRequest, BulkGenerateResponse, BulkResultsResponse
from .queue.schema import GenerationResult, QueueStats

_BATCH = 5_000


class ScalarLMClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8321", timeout_s: float = 120.0):
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)

    def submit(self, model: str, prompts: Sequence[str | list[dict]], **sampling) -> list[int]:
        """Queue prompts (in batches of 5,000 per call); returns one request id per prompt."""
        ids: list[int] = []
        for start in range(0, len(prompts), _BATCH):
            body = BulkGenerateRequest(model=model, prompts=list(prompts[start : start + _BATCH]), **sampling)
            response = self._post("/v1/scalarlm/generate", body.model_dump(mode="json", exclude_none=True))
            ids.extend(BulkGenerateResponse.model_validate(response).request_ids)
        return ids

    def poll(self, ids: Sequence[int]) -> dict[int, GenerationResult]:
        """Results finished since the last poll (each is handed over once)."""
        done = {}
        for start in range(0, len(ids), _BATCH):
            response = self._post("/v1/scalarlm/generate/results", {"request_ids": list(ids[start : start + _BATCH])})
            for status in BulkResultsResponse.model_validate(response).results:
                if status.result is not None:
                    done[status.id] = status.result
        return done

    def generate(
        self,
        model: str,
        prompts: Sequence[str | list[dict]],
        progress: Callable[[int, int], None] | None = None,
        poll_s: float = 0.2,
        **sampling,
    ) -> list[GenerationResult]:
        """Submit in bulk, poll until every result is in; results in prompt order."""
        ids = self.submit(model, prompts, **sampling)
        results: dict[int, GenerationResult] = {}
        while len(results) < len(ids):
            results.update(self.poll([i for i in ids if i not in results]))
            if progress:
                progress(len(results), len(ids))
            if len(results) < len(ids):
                time.sleep(poll_s)
        return [results[i] for i in ids]

    def queue_stats(self) -> QueueStats:
        response = self._http.get("/v1/scalarlm/queue")
        response.raise_for_status()
        return QueueStats.model_validate(response.json())

    def _post(self, path: str, body: dict) -> dict:
        response = self._http.post(path, json=body)
        if response.status_code >= 400:
            raise httpx.HTTPStatusError(
                f"{response.status_code} from {path}: {response.text}", request=response.request, response=response
            )
        return response.json()
