"""The queue as the server uses it: the durable store plus in-process wake-ups.

Clients wait on futures and stream channels that the workers' reports resolve; workers long-poll
for work. Every wait also re-reads the store now and then, so nothing depends on a wake-up
arriving (e.g. after a server restart, or a result recorded by another server process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from .schema import ChoiceDelta, GenerationRequest, GenerationResult, QueueStats, RequestStatus, WorkEvent, WorkItem
from .store import RequestStore

_POLL_S = 1.0
_MAINTENANCE_S = 2.0
T = TypeVar("T")


class QueueService:
    def __init__(self, store: RequestStore, lease_s: float, result_ttl_s: float):
        self.store = store
        self.lease_s = lease_s
        self.result_ttl_s = result_ttl_s
        self._waiters: dict[int, asyncio.Future] = {}
        self._streams: dict[int, asyncio.Queue] = {}
        self._work = _Signal()  # requests were queued or returned to the queue
        self._finished = _Signal()  # results were stored
        self._workers_seen: dict[str, float] = {}
        self._last_maintenance = 0.0

    # -- clients --------------------------------------------------------------------------------

    def submit(self, requests: Sequence[GenerationRequest]) -> list[int]:
        ids = self.store.enqueue(requests)
        for request_id, request in zip(ids, requests, strict=True):
            if request.stream:
                self._streams[request_id] = asyncio.Queue()
        self._work.fire()
        return ids

    async def wait(self, request_id: int, timeout_s: float) -> GenerationResult:
        """The request's result, once it exists; the stored copy is consumed."""
        deadline = time.monotonic() + timeout_s
        future = self._waiters.setdefault(request_id, asyncio.get_running_loop().create_future())
        try:
            while True:
                status = self.store.status([request_id], consume=True)[0]
                if status.result is not None:
                    return status.result
                if status.state == "unknown":
                    raise KeyError(request_id)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"request {request_id} did not finish within {timeout_s:.0f} s")
                try:
                    await asyncio.wait_for(asyncio.shield(future), min(_POLL_S, remaining))
                except TimeoutError:
                    pass
        finally:
            self._waiters.pop(request_id, None)

    async def stream(self, request_id: int, timeout_s: float) -> AsyncIterator[ChoiceDelta | GenerationResult]:
        """Deltas as the worker reports them, then the final result."""
        channel = self._streams[request_id]
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    item = await asyncio.wait_for(channel.get(), _POLL_S)
                except TimeoutError:
                    status = self.store.status([request_id])[0]
                    if status.result is None and time.monotonic() < deadline:
                        continue
                    if status.result is None:
                        raise TimeoutError(f"request {request_id} did not finish within {timeout_s:.0f} s") from None
                    item = status.result
                if isinstance(item, GenerationResult):
                    self.store.status([request_id], consume=True)
                    yield item
                    return
                yield item
        finally:
            self._streams.pop(request_id, None)

    async def results(self, ids: Sequence[int], wait_s: float = 0.0) -> list[RequestStatus]:
        """Bulk polling: finished results are handed over once, then deleted. With ``wait_s`` it is a
        long poll: it answers as soon as any of ``ids`` has finished (or is unknown), else at the deadline."""
        return await _long_poll(
            lambda: self.store.status(ids, consume=True),
            lambda statuses: any(s.result is not None or s.state == "unknown" for s in statuses),
            self._finished,
            wait_s,
        )

    def stats(self) -> QueueStats:
        stats = self.store.stats()
        now = time.time()
        stats.workers = {w: round(now - seen, 1) for w, seen in self._workers_seen.items()}
        return stats

    # -- workers --------------------------------------------------------------------------------

    async def lease(self, worker: str, models: Sequence[str], capacity: int, wait_s: float) -> list[WorkItem]:
        """Up to ``capacity`` requests; waits up to ``wait_s`` for work to arrive when there is none."""

        def lease_now() -> list[WorkItem]:
            self.heartbeat(worker)
            return self.store.lease(worker, models, capacity, self.lease_s)

        return await _long_poll(lease_now, bool, self._work, wait_s)

    def heartbeat(self, worker: str) -> None:
        self._workers_seen[worker] = time.time()
        self.store.renew(worker, self.lease_s)
        self._maintain()

    def report(self, worker: str, events: Sequence[WorkEvent]) -> None:
        """Deltas go to waiting streams; final results are stored first, then waiters are woken."""
        self._workers_seen[worker] = time.time()
        for event in events:
            channel = self._streams.get(event.id)
            if channel is not None:
                for delta in event.deltas:
                    channel.put_nowait(delta)
        finals = [(e.id, e.result) for e in events if e.result is not None]
        self.store.complete(finals)
        if finals:
            self._finished.fire()
        for request_id, result in finals:
            if (channel := self._streams.get(request_id)) is not None:
                channel.put_nowait(result)
            future = self._waiters.get(request_id)
            if future is not None and not future.done():
                future.set_result(None)

    def forget_worker(self, worker: str) -> None:
        """A worker known to be dead: its leases go back to the queue now, not at expiry."""
        self._workers_seen.pop(worker, None)
        if self.store.release_worker(worker):
            self._work.fire()

    # -- internals ------------------------------------------------------------------------------

    def _maintain(self) -> None:
        now = time.monotonic()
        if now - self._last_maintenance < _MAINTENANCE_S:
            return
        self._last_maintenance = now
        if self.store.release_expired():
            self._work.fire()
        self.store.purge_results(self.result_ttl_s)
        gone = time.time() - self.lease_s  # silent for a lease period: its leases are back in the queue
        self._workers_seen = {w: seen for w, seen in self._workers_seen.items() if seen >= gone}


class _Signal:
    """Wakes every coroutine waiting when it fires: an event that is set and then replaced, so no
    waiter clears it for another, and one taken before a read is woken by any fire after it."""

    def __init__(self):
        self._event: asyncio.Event | None = None  # made on first wait, in the server's loop

    def waiter(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def fire(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None


async def _long_poll(read: Callable[[], T], ready: Callable[[T], bool], signal: _Signal, wait_s: float) -> T:
    """``read()`` until ``ready`` or ``wait_s`` has passed, reading again when ``signal`` fires (and
    every ``_POLL_S`` regardless, so nothing depends on a wake-up arriving)."""
    deadline = time.monotonic() + wait_s
    while True:
        woken = signal.waiter()  # before reading: a fire after this point wakes us
        value = read()
        remaining = deadline - time.monotonic()
        if ready(value) or remaining <= 0:
            return value
        try:
            await asyncio.wait_for(woken.wait(), min(_POLL_S, remaining))
        except TimeoutError:
            pass
