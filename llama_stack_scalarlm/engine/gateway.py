"""The worker's side of the work protocol: lease, report, heartbeat, over HTTP to the server.

Workers share nothing with the server but this protocol and the state root (from which they read
the worker credential), so they run on this host or on any host that reaches the server's address.
"""

from __future__ import annotations

import httpx

from ..api.worker import PREFIX, AbortResponse, HeartbeatRequest, HeldLease, LeaseRequest, LeaseResponse, ReportRequest
from ..queue.schema import WorkEvent, WorkItem


class WorkerGateway:
    def __init__(self, server_url: str, worker_id: str, credential: str):
        self.worker_id = worker_id
        self._http = httpx.AsyncClient(base_url=server_url.rstrip("/"), timeout=httpx.Timeout(60.0),
                                       headers={"Authorization": f"Bearer {credential}"})

    async def lease(self, models: list[str], capacity: int, wait_s: float) -> list[WorkItem]:
        body = LeaseRequest(worker_id=self.worker_id, models=models, capacity=capacity, wait_s=wait_s)
        response = await self._http.post(f"{PREFIX}/lease", content=body.model_dump_json(), timeout=wait_s + 30,
                                         headers={"Content-Type": "application/json"})
        response.raise_for_status()
        return LeaseResponse.model_validate_json(response.content).items

    async def report(self, events: list[WorkEvent]) -> list[str]:
        """Returns the requests the server refused results or text for: stop generating them."""
        body = ReportRequest(worker_id=self.worker_id, events=events)
        return await self._post("events", body.model_dump_json())

    async def heartbeat(self, progress: int, running: list[tuple[str, str]]) -> list[str]:
        """Returns the running requests this worker no longer holds: stop generating them."""
        body = HeartbeatRequest(worker_id=self.worker_id, progress=progress,
                                running=[HeldLease(id=i, lease=lease) for i, lease in running])
        return await self._post("heartbeat", body.model_dump_json())

    async def _post(self, route: str, body: str) -> list[str]:
        response = await self._http.post(f"{PREFIX}/{route}", content=body,
                                         headers={"Content-Type": "application/json"})
        response.raise_for_status()
        return AbortResponse.model_validate_json(response.content).abort

    async def close(self) -> None:
        await self._http.aclose()
