"""The queue as the server uses it: the durable store plus in-process wake-ups and upkeep.

Clients wait on futures and stream channels that the workers' reports resolve; workers long-poll
for work. Every wait also re-reads the store now and then, so nothing depends on a wake-up
arriving (e.g. after a server restart). Upkeep (leases that lapsed, results nobody acknowledged,
requests no engine will serve) runs in a thread of its own, whether or not any worker calls in.

Who may see what: every client call names its principal (the authenticated user), and a request
is visible only to the principal that submitted it. Workers are trusted with the work they lease,
and a worker's result or delta counts only under the lease the request is held by now.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .schema import GenerationResult, OpenAIRequest, QueueStats, RequestStatus, WorkEvent, WorkItem, WorkRequest
from .store import BULK, RequestStore

log = logging.getLogger(__name__)

_POLL_S = 1.0
_GATHER_S = 0.25
_UPKEEP_S = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class QueuePolicy:
    """How long things may take before the queue gives up on them."""

    lease_s: float  # a lease not renewed for this long goes back to the queue
    progress_s: float  # a worker whose engine made no progress for this long stops having its leases renewed
    max_attempts: int  # leases of one request before it fails instead of going back
    result_ttl_s: float  # a result nobody acknowledged is deleted after this
    unserved_s: float  # queued requests for a model no worker asked for in this long fail


@dataclass
class _Progress:
    value: int = -1
    changed: float = 0.0


class QueueService:
    def __init__(self, store: RequestStore, policy: QueuePolicy, served: Callable[[], set[str]] | None = None):
        """``served``: the models the server serves now; queued requests for any other fail at once."""
        self.store = store
        self.policy = policy
        self._served = served
        self._waiters: dict[str, asyncio.Future] = {}
        self._streams: dict[str, asyncio.Queue] = {}
        self._stream_leases: dict[str, str] = {}  # streamed request -> the lease whose deltas are its text
        self._work = _Signal()  # requests were queued or returned to the queue
        self._finished = _Signal()  # results were stored
        self._workers_seen: dict[str, float] = {}
        self._progress: dict[str, _Progress] = {}
        self._asked: dict[str, float] = {}  # model -> when a worker last asked for work for it
        self._started = time.time()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._upkeep = threading.Thread(target=self._upkeep_loop, name="scalarlm-queue-upkeep", daemon=True)
        self._upkeep.start()

    def close(self) -> None:
        self._stop.set()

    # -- clients --------------------------------------------------------------------------------

    def submit(self, requests: Sequence[WorkRequest], owner: str, priority: int = BULK) -> list[str]:
        self._bind_loop()
        ids = self.store.enqueue(requests, owner, priority)
        for request_id, request in zip(ids, requests, strict=True):
            if isinstance(request, OpenAIRequest) and request.stream:
                self._streams[request_id] = asyncio.Queue()
        self._work.fire()
        return ids

    async def wait(self, request_id: str, owner: str, timeout_s: float) -> GenerationResult:
        """The request's result, once it exists (then deleted: it reached this call). A caller that
        gives up (timeout, disconnect) cancels the request, so nobody generates it for no one."""
        deadline = time.monotonic() + timeout_s
        future = self._waiters.setdefault(request_id, asyncio.get_running_loop().create_future())
        try:
            while True:
                status = self.store.status([request_id], owner)[0]
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
            self.store.remove([request_id], owner, finished_only=False)  # delivered, or abandoned: cancel

    async def stream(self, request_id: str, owner: str, timeout_s: float) -> AsyncIterator[dict | GenerationResult]:
        """Chunks of the request's current lease as the worker reports them, then the final result.
        A caller that goes away cancels the request."""
        channel = self._streams[request_id]
        deadline = time.monotonic() + timeout_s
        marked = False
        try:
            while True:
                try:
                    item = await asyncio.wait_for(channel.get(), _POLL_S)
                except TimeoutError:
                    item = None
                if item is None:  # finished (woken), or time to look: the store has the answer
                    status = self.store.status([request_id], owner)[0]
                    if status.result is not None:
                        yield status.result
                        return
                    if status.state == "unknown":
                        raise KeyError(request_id)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"request {request_id} did not finish within {timeout_s:.0f} s")
                    continue
                if not marked:  # the client has text now: a lost lease can no longer restart it cleanly
                    self.store.mark_streamed(request_id)
                    marked = True
                yield item
        finally:
            self._streams.pop(request_id, None)
            self._stream_leases.pop(request_id, None)
            self.store.remove([request_id], owner, finished_only=False)

    async def results(self, ids: Sequence[str], owner: str, wait_s: float = 0.0,
                      ack: Sequence[str] = ()) -> list[RequestStatus]:
        """Bulk polling. Results stay until acknowledged (``ack`` deletes them: send the ids you
        received with your next poll), so a response lost on the way loses nothing; unacknowledged
        results expire after the result TTL. With ``wait_s`` it is a long poll: it answers once any
        of ``ids`` has finished (or is unknown) and then once all have, or ``_GATHER_S`` later,
        whichever is first; else at the deadline."""
        self._bind_loop()
        if wait_s:
            def settled() -> int:
                return self.store.settled(ids, owner)

            if await _long_poll(settled, bool, self._finished, wait_s) < len(ids):
                # Some are in, more are coming: gather them for a moment, so that a client draining
                # a large job makes a few calls a second instead of one per finished batch (each
                # call, with its token check, costs the server what the engine sharing the host
                # then lacks), but answer as soon as the last is in (the end of a job waits for
                # nothing).
                await _long_poll(settled, lambda n: n == len(ids), self._finished, min(_GATHER_S, wait_s))
        return self.store.status(ids, owner, ack=ack)

    def cancel(self, ids: Sequence[str], owner: str) -> list[str]:
        """Drop ``owner``'s requests, finished or not: queued ones are never generated, running ones
        are stopped by their worker at its next call."""
        return self.store.remove(ids, owner, finished_only=False)

    def stats(self) -> QueueStats:
        stats = self.store.stats()
        now = time.time()
        stats.workers = {w: round(now - seen, 1) for w, seen in self._workers_seen.items()}
        return stats

    # -- workers --------------------------------------------------------------------------------

    async def lease(self, worker: str, models: Sequence[str], capacity: int, wait_s: float) -> list[WorkItem]:
        """Up to ``capacity`` requests; waits up to ``wait_s`` for work to arrive when there is none."""
        self._bind_loop()
        now = time.time()
        self._workers_seen[worker] = now
        self._asked.update(dict.fromkeys(models, now))

        def lease_now() -> list[WorkItem]:
            items = self.store.lease(worker, models, capacity, self.policy.lease_s)
            for item in items:
                if item.id in self._streams:
                    self._stream_leases[item.id] = item.lease
            return items

        return await _long_poll(lease_now, bool, self._work, wait_s)

    def heartbeat(self, worker: str, progress: int, running: Sequence[tuple[str, str]]) -> list[str]:
        """Renews the worker's leases while its engine makes progress (``progress``: a counter of the
        engine's steps); returns the requests it runs that it no longer holds (cancelled, or taken
        back): it should stop generating them. A worker whose counter stood still for the progress
        deadline keeps only leases younger than that, so a hung engine lets its work go."""
        now = time.time()
        self._workers_seen[worker] = now
        seen = self._progress.setdefault(worker, _Progress(progress, now))
        if progress != seen.value:
            seen.value, seen.changed = progress, now
        stalled = now - seen.changed > self.policy.progress_s
        self.store.renew(worker, self.policy.lease_s, leased_since=now - self.policy.progress_s if stalled else None)
        held = self.store.held(worker, running)
        return [request_id for request_id, _ in running if request_id not in held]

    def report(self, worker: str, events: Sequence[WorkEvent]) -> list[str]:
        """Deltas of a stream's current lease go to its client; final results are stored (under
        their lease) first, then waiters are woken. Returns the ids whose events were refused
        (the worker no longer holds them: it should stop generating them)."""
        self._workers_seen[worker] = time.time()
        refused = set()
        for event in events:
            if not event.deltas:
                continue
            channel = self._streams.get(event.id)
            if channel is None or self._stream_leases.get(event.id) != event.lease:  # its client is gone, or
                refused.add(event.id)  # this worker no longer holds it: stop generating text nobody reads
                continue
            for delta in event.deltas:
                channel.put_nowait(delta)
        finals = [(e.id, e.lease, e.result) for e in events if e.result is not None]
        recorded = self.store.complete(worker, finals)
        refused |= {request_id for request_id, _, _ in finals} - set(recorded)
        self._resolve(recorded)
        return sorted(refused)

    def forget_worker(self, worker: str) -> None:
        """A worker known to be dead: its leases go back to the queue now, not at expiry."""
        self._workers_seen.pop(worker, None)
        self._progress.pop(worker, None)
        self._after_release(self.store.release_worker(worker, self.policy.max_attempts))

    # -- internals ------------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    def _resolve(self, ids: Sequence[str]) -> None:
        """Wake whoever waits for these finished requests (on the server's event loop)."""
        if not ids:
            return
        self._finished.fire()
        for request_id in ids:
            if (channel := self._streams.get(request_id)) is not None:
                channel.put_nowait(None)  # the stream reads the result from the store
            future = self._waiters.get(request_id)
            if future is not None and not future.done():
                future.set_result(None)

    def _after_release(self, failed: list[str]) -> None:
        """Called from any thread: wake lessees (work is back) and the clients of failed requests."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._work.fire)
        if failed:
            self._loop.call_soon_threadsafe(self._resolve, failed)

    def _upkeep_loop(self) -> None:
        while not self._stop.wait(_UPKEEP_S):
            try:
                self.upkeep()
            except Exception:
                log.exception("queue upkeep failed")

    def upkeep(self) -> None:
        """Lapsed leases back to the queue, expired results deleted, unservable requests failed."""
        now = time.time()
        self._after_release(self.store.release_expired(self.policy.max_attempts))
        self.store.purge_results(self.policy.result_ttl_s)
        gone = now - self.policy.lease_s  # silent for a lease period: its leases are back in the queue
        for worker in [w for w, seen in list(self._workers_seen.items()) if seen < gone]:
            self._workers_seen.pop(worker, None)
            self._progress.pop(worker, None)
        served = self._served() if self._served is not None else None
        failed = []
        for model in self.store.queued_models():
            if served is not None and model not in served:
                failed += self.store.fail_queued(model, 404, f"model: {model!r} is no longer served here")
            elif now - max(self._asked.get(model, 0.0), self._started) > self.policy.unserved_s:
                # only requests that themselves waited that long: one queued a moment ago waits its turn
                failed += self.store.fail_queued(
                    model, 503, f"no engine asked for work for {model!r} in {self.policy.unserved_s:.0f} s",
                    queued_before=now - self.policy.unserved_s)
        if failed:
            self._after_release(failed)


class _Signal:
    """Wakes every coroutine waiting when it fires: an event that is set and then replaced, so no
    waiter clears it for another, and one taken before a read is woken by any fire after it.
    Used on the server's event loop only (other threads go through ``call_soon_threadsafe``)."""

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
