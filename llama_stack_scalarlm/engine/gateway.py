"""The worker's side of the work protocol: lease, report, heartbeat, over HTTP to the server.

Workers share nothing with the server but this protocol and the state root, so they run on this
host or on any host that reaches the server's address.
"""

from __future__ import annotations

import httpx

from ..queue.schema import WorkEvent, WorkItem

PREFIX = "/v1/scalarlm/worker"


class WorkerGateway:
    def __init__(self, server_url: str, worker_id: str):
        self.worker_id = worker_id
        self._http = httpx.AsyncClient(base_url=server_url.rstrip("/"), timeout=httpx.Timeout(60.0))

    async def lease(self, models: list[str], capacity: int, wait_s: float) -> list[WorkItem]:
        body = {"worker_id": self.worker_id, "models": models, "capacity": capacity, "wait_s": wait_s}
        response = await self._http.post(f"{PREFIX}/lease", json=body, timeout=wait_s + 30)
        response.raise_for_status()
        return [WorkItem.model_validate(item) for item in response.json()["items"]]

    async def report(self, events: list[WorkEvent]) -> None:
        body = {"worker_id": self.worker_id, "events": [e.model_dump(mode="json") for e in events]}
        response = await self._http.post(f"{PREFIX}/events", json=body)
        response.raise_for_status()

    async def heartbeat(self) -> None:
        response = await self._http.post(f"{PREFIX}/heartbeat", json={"worker_id": self.worker_id})
        response.raise_for_status()

    async def close(self) -> None:
        await self._http.aclose()
