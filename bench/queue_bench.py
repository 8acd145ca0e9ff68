"""Queue alone: submit -> lease -> report -> fetch and acknowledge, with an engine that answers at once.

Round trip: requests/s of ScalarLM's durable queue (``QueueService`` over a fresh SQLite file)
against, as the baseline, the same protocol over an in-memory deque (no durability): the ratio is
the price of durability.
Deep queue: the server's memory growth with 1,000,000 requests queued, against holding the same
requests in memory; then the time to lease a batch from that deep queue, against leasing the same
batch from a queue holding only it (leasing should not depend on the depth).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

import harness
from llama_stack_scalarlm.queue.schema import Choice, GenerationRequest, GenerationResult, WorkEvent
from llama_stack_scalarlm.queue.service import QueuePolicy, QueueService
from llama_stack_scalarlm.queue.store import RequestStore

BATCH, CAPACITY, LEASES = 100, 64, 20
MODEL, OWNER, WORKER = "m", "bench", "bench-worker"
POLICY = QueuePolicy(lease_s=30, progress_s=30, max_attempts=3, result_ttl_s=3600, unserved_s=3600)
ANSWER = GenerationResult(choices=[Choice(index=0, text="ok", finish_reason="stop", completion_tokens=1)], prompt_tokens=3)


def request(i: int) -> GenerationRequest:
    return GenerationRequest(kind="completion", model=MODEL, prompt=f"prompt {i}", max_tokens=8)


async def durable_round_trips(service: QueueService, n: int) -> float:
    """req/s of n requests through the service as the server drives it (bulk client and worker)."""
    start = time.perf_counter()
    for b in range(0, n, BATCH):
        service.submit([request(i) for i in range(b, min(n, b + BATCH))], OWNER)
    fetched, received = 0, []
    while fetched < n:
        items = await service.lease(WORKER, [MODEL], CAPACITY, wait_s=0)
        service.report(WORKER, [WorkEvent(id=item.id, lease=item.lease, result=ANSWER) for item in items])
        statuses = await service.results([item.id for item in items], OWNER, ack=received)
        received = [s.id for s in statuses if s.result is not None]
        fetched += len(received)
    await service.results([], OWNER, ack=received)
    return n / (time.perf_counter() - start)


def durable(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        service = QueueService(RequestStore(Path(tmp) / "q.sqlite"), POLICY)
        try:
            return asyncio.run(durable_round_trips(service, n))
        finally:
            service.close()
            service.store.close()


def in_memory(n: int) -> float:
    """The same protocol, serialization included, over a deque and a dict."""
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


def held_in_ram_mib(n: int) -> float:
    """What holding the requests' JSON in this process takes, as Python allocates it (tracemalloc:
    RSS would hide it wherever memory freed by earlier measurements is reused)."""
    tracemalloc.start()
    held = [request(i).model_dump_json() for i in range(n)]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    return size / 2**20


def lease_ms(store: RequestStore) -> float:
    """Mean ms of one lease of CAPACITY requests, over LEASES leases."""
    start = time.perf_counter()
    for _ in range(LEASES):
        assert len(store.lease(WORKER, [MODEL], CAPACITY, POLICY.lease_s)) == CAPACITY
    return (time.perf_counter() - start) * 1000 / LEASES


def deep_queue(report: harness.Report, queued: int, n_pairs: int, root: Path) -> None:
    before = rss_mib()
    start = time.perf_counter()
    deep = RequestStore(root / "deep.sqlite")
    for b in range(0, queued, 10_000):
        deep.enqueue([request(i) for i in range(b, min(queued, b + 10_000))], OWNER)
    enqueue_rate = queued / (time.perf_counter() - start)
    grown = rss_mib() - before
    report.compare(f"server memory growth, {queued:,} queued", "MiB", [(held_in_ram_mib(queued), grown)],
                   subject="durable queue", baseline="the same requests held in RAM")
    report.value(f"enqueue into the deep queue ({queued:,})", "req/s", [enqueue_rate])

    shallow = RequestStore(root / "shallow.sqlite")

    def from_shallow() -> float:
        shallow.enqueue([request(i) for i in range(CAPACITY * LEASES)], OWNER)
        return lease_ms(shallow)

    leases = harness.pairs(from_shallow, lambda: lease_ms(deep), n_pairs)
    report.compare(f"lease {CAPACITY} from {queued:,} queued", "ms", leases,
                   subject="deep queue", baseline=f"a queue of only the {CAPACITY * LEASES} leased")
    deep.close()
    shallow.close()


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round-trip measurement")
    parser.add_argument("--queued", type=int, default=1_000_000, help="depth of the deep queue")
    args = harness.parse(parser, smoke={"requests": 2_000, "queued": 10_000})
    report = harness.Report("queue_bench", args)
    trips = harness.pairs(lambda: in_memory(args.requests), lambda: durable(args.requests), args.pairs)
    report.compare(f"round trip, {args.requests:,} requests", "req/s", trips,
                   subject="durable SQLite queue", baseline="in-memory deque")
    with tempfile.TemporaryDirectory() as tmp:
        deep_queue(report, args.queued, args.pairs, Path(tmp))
    report.finish()


if __name__ == "__main__":
    main()
