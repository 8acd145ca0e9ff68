"""Queue alone: enqueue -> lease -> complete -> fetch, with an engine that answers at once.

Prints requests/s of ScalarLM's durable queue and, as the baseline measured in the same run, the
same protocol over an in-memory deque (no durability): the ratio is the price of durability.
Then fills the queue with 1,000,000 requests and prints the server's memory growth against
holding the same requests in memory.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import sys
import tempfile
import time
from pathlib import Path

import psutil

from llama_stack_scalarlm.queue.schema import Choice, GenerationRequest, GenerationResult, WorkEvent
from llama_stack_scalarlm.queue.service import QueueService
from llama_stack_scalarlm.queue.store import RequestStore

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
BATCH, CAPACITY = 100, 64
MODEL = "m"
ANSWER = GenerationResult(choices=[Choice(index=0, text="ok", finish_reason="stop", completion_tokens=1)], prompt_tokens=3)


def request(i: int) -> GenerationRequest:
    return GenerationRequest(kind="completion", model=MODEL, prompt=f"prompt {i}", max_tokens=8)


async def durable_queue(service: QueueService, n: int) -> float:
    start = time.perf_counter()
    ids: list[int] = []
    for b in range(0, n, BATCH):
        ids += service.submit([request(i) for i in range(b, min(n, b + BATCH))])
    fetched = 0
    while fetched < n:
        items = await service.lease("bench", [MODEL], CAPACITY, wait_s=0)
        service.report("bench", [WorkEvent(id=item.id, result=ANSWER) for item in items])
        fetched += sum(1 for s in service.results([item.id for item in items]) if s.result is not None)
    return n / (time.perf_counter() - start)


def memory_queue(n: int) -> float:
    start = time.perf_counter()
    queue: collections.deque = collections.deque()
    results: dict[int, str] = {}
    for i in range(n):
        queue.append((i, request(i).model_dump_json()))
    while queue:
        batch = [queue.popleft() for _ in range(min(CAPACITY, len(queue)))]
        for i, payload in batch:
            GenerationRequest.model_validate_json(payload)
            results[i] = ANSWER.model_dump_json()
        for i, _ in batch:
            GenerationResult.model_validate_json(results.pop(i))
    return n / (time.perf_counter() - start)


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        service = QueueService(RequestStore(Path(tmp) / "q.sqlite"), lease_s=30, result_ttl_s=3600)
        durable = asyncio.run(durable_queue(service, N))
        baseline = memory_queue(N)
        print(f"queue round trip ({N:,} requests, 2 cores):")
        print(f"  durable SQLite queue : {durable:10,.0f} req/s   (goal >= 5,000)")
        print(f"  in-memory deque      : {baseline:10,.0f} req/s   (baseline, no durability)")
        print(f"  ratio durable/memory : {durable / baseline:10.2f}")

        million = 1_000_000
        before = rss_mib()
        start = time.perf_counter()
        store = service.store
        for b in range(0, million, 10_000):
            store.enqueue([request(i) for i in range(b, b + 10_000)])
        enqueue_s = time.perf_counter() - start
        after = rss_mib()
        first = time.perf_counter()
        store.lease("bench", [MODEL], CAPACITY, 30)
        lease_ms = (time.perf_counter() - first) * 1000
        in_memory = [request(i).model_dump_json() for i in range(million)]
        held = rss_mib()
        print(f"1,000,000 queued requests (enqueued at {million / enqueue_s:,.0f} req/s):")
        print(f"  server memory growth : {after - before:8.1f} MiB (queue file {store.path.stat().st_size / 2**20:,.0f} MiB"
              f" + WAL on disk)")
        print(f"  same requests in RAM : {held - after:8.1f} MiB (baseline)")
        print(f"  ratio queue/RAM      : {(after - before) / max(held - after, 1e-9):8.3f}")
        print(f"  lease 64 from the 1M : {lease_ms:8.2f} ms")
        del in_memory


if __name__ == "__main__":
    main()
