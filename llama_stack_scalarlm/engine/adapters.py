"""LoRA slots: every LoRA job on a worker's base model is served, at most ``size`` loaded at once.

vLLM holds adapters in a fixed number of slots. A request for a job whose adapter is not loaded
waits here, in the worker, until it can be: the least recently used loaded adapter is drained
(its running requests finish, new ones for it wait their turn) and unloaded, and the waiting one
is loaded in its place. Only one adapter drains at a time, so adapters take turns and none waits
for ever behind busy ones. vLLM is started with one slot more than ``size`` and that slot is never
filled: vLLM on CPU applies the last slot's adapter to base-model requests when every slot is full.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ..registry.schema import CheckpointInfo

log = logging.getLogger(__name__)


class AdapterUnavailable(Exception):
    """The job has no adapter to load (deleted), or its adapter failed to load."""


class AdapterSlots:
    def __init__(self, engine, size: int, on_change: Callable[[str, object | None], None]):
        """``on_change(job_id, lora_request or None)`` tells the OpenAI layer what is loaded."""
        self.engine = engine
        self.size = size
        self.on_change = on_change
        self.newest: dict[str, str] = {}  # job id -> its newest checkpoint's path: what can be served
        self.loaded: OrderedDict[str, object] = OrderedDict()  # job id -> LoRARequest, least recently used first
        self.busy: Counter[str] = Counter()  # requests running per loaded adapter
        self.draining: str | None = None  # the adapter being emptied for a waiting one
        self._waiting = 0  # requests waiting for an adapter that is not loaded
        self._ids = itertools.count(1)  # vLLM caches adapters by integer id: never reuse one
        self._changed = asyncio.Condition()

    def served(self) -> list[str]:
        return list(self.newest)

    async def sync(self, newest: dict[str, CheckpointInfo]) -> None:
        """The registry's newest checkpoint of each LoRA job: a loaded adapter with a newer one is
        replaced in place; a job gone from the registry is unloaded once idle."""
        async with self._changed:
            self.newest = {job_id: checkpoint.path for job_id, checkpoint in newest.items()}
            for job_id, lora in list(self.loaded.items()):
                if job_id not in self.newest:
                    if not self.busy[job_id]:
                        await self._unload(job_id)
                elif lora.lora_path != self.newest[job_id]:
                    await self._load(job_id, lora.lora_int_id, inplace=True)
            self._changed.notify_all()

    def get(self, job_id: str):
        """The loaded adapter's request (for a call inside :meth:`use`)."""
        return self.loaded.get(job_id)

    @asynccontextmanager
    async def use(self, job_id: str) -> AsyncIterator[None]:
        """Hold ``job_id``'s adapter loaded while a request runs on it."""
        async with self._changed:
            await self._acquire(job_id)
            self.loaded.move_to_end(job_id)
            self.busy[job_id] += 1
        try:
            yield
        finally:
            async with self._changed:
                self.busy[job_id] -= 1
                self._changed.notify_all()

    async def _acquire(self, job_id: str) -> None:
        """Until ``job_id`` is loaded and not draining: load it into a free slot, or in place of an
        idle adapter, or drain the least recently used one for it. Called holding the condition."""
        waiting = False
        try:
            while not (job_id in self.loaded and job_id != self.draining):
                if job_id not in self.newest:
                    raise AdapterUnavailable(f"{job_id} has no checkpoint to serve (deleted?)")
                if job_id in self.loaded:  # draining: wait unless nobody waits for its slot any more
                    if not self._waiting:
                        self.draining = None
                        continue
                else:
                    if not waiting:
                        waiting, self._waiting = True, self._waiting + 1
                    if len(self.loaded) < self.size:
                        await self._load(job_id, next(self._ids), inplace=False)
                        continue
                    if (idle := next((j for j in self.loaded if not self.busy[j]), None)) is not None:
                        await self._unload(idle)
                        continue
                    if self.draining is None:
                        self.draining = next(iter(self.loaded))
                await self._changed.wait()
        finally:
            if waiting:
                self._waiting -= 1
                self._changed.notify_all()

    async def _load(self, job_id: str, int_id: int, inplace: bool) -> None:
        from vllm.lora.request import LoRARequest

        path = self.newest[job_id]
        try:
            await self.engine.add_lora(LoRARequest(job_id, int_id, path, load_inplace=inplace))
        except Exception as exc:
            raise AdapterUnavailable(f"{job_id}: its adapter at {path} failed to load: {exc}") from exc
        # Requests carry the adapter without load_inplace: with it, vLLM reloads the adapter from
        # disk at every step, and fails once the trainer has rotated that checkpoint away.
        self.loaded[job_id] = LoRARequest(job_id, int_id, path)
        self.on_change(job_id, self.loaded[job_id])
        log.info("serving %s from %s", job_id, path)

    async def _unload(self, job_id: str) -> None:
        lora = self.loaded.pop(job_id)
        self.busy.pop(job_id, None)
        if self.draining == job_id:
            self.draining = None
        self.on_change(job_id, None)
        await self.engine.remove_lora(lora.lora_int_id)
        log.info("unloaded %s (least recently used)", job_id)
