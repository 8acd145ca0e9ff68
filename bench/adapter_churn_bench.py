"""Adapter churn: requests spread over 12 LoRA jobs on one base model, against the same requests all
to one of them, on a worker with ``engine.max_loras`` (3) adapter slots.

Spread, most requests find their adapter out of the slots and wait in the queue until the worker
has swapped it in (least recently used out); all to one, the adapter stays loaded. Figures:
- throughput (generated tokens/s) of the spread requests over that of the one-adapter ones, each
  side the same prompts sent at once through the bulk route, one bulk call per model;
- the wait for an adapter not loaded: one request to the adapter used longest ago (never in a
  slot, since the others were asked since) against one to the adapter just used, back to back;
  p50 and p99 of the cold requests over all pairs.

Starts its own `llama stack run` (tiny model, one worker) and, unless ``--slurm-state`` names a
running cluster's state root, its own SLURM cluster (slurm/cluster.sh).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from tests.stack import StackServer  # noqa: E402

TINY = "tiny-llama"


def train_adapters(client: ScalarLMClient, state: Path, count: int, steps: int) -> list[str]:
    """``count`` LoRA jobs on the tiny model, each on a word of its own; served once listed."""
    jobs = []
    for i in range(count):
        path = state / f"adapter-{i}.jsonl"
        path.write_text(json.dumps({"input": "Say your word.", "output": f"word{i}"}) + "\n")
        jobs.append(client.train(TINY, client.upload(path), steps=steps, learning_rate=2e-2, batch_size=8,
                                 lora=True, lora_rank=8, checkpoint_every=steps))
    for job in jobs:
        status = client.follow(job)
        assert status.state == "COMPLETED", f"{job} ended {status.state}: {status.error}"
        client.wait_served(job)
    return jobs


def tokens_per_s(server: StackServer, requests: dict[str, list[str]], max_tokens: int) -> float:
    """The requests of every model submitted at once (a bulk call per model, each from a client of
    its own); generated tokens over the wall time until the last result."""
    def one(model: str) -> int:
        client = ScalarLMClient(server.url, api_key=server.token, timeout_s=600)
        results = client.generate(model, [[{"role": "user", "content": p}] for p in requests[model]],
                                  max_tokens=max_tokens, temperature=0.0)
        return sum(r.completion_tokens for r in results)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        tokens = sum(pool.map(one, requests))
    return tokens / (time.perf_counter() - start)


def request_s(client: ScalarLMClient, model: str) -> float:
    start = time.perf_counter()
    [result] = client.generate(model, [[{"role": "user", "content": "Say your word."}]], max_tokens=1, temperature=0.0)
    assert result.error is None, result.error
    return time.perf_counter() - start


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--adapters", type=int, default=12)
    parser.add_argument("--requests", type=int, default=96, help="requests of each throughput side")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cold", type=int, default=12, help="(warm, cold) request pairs of each pair")
    parser.add_argument("--steps", type=int, default=4, help="steps of each LoRA job")
    parser.add_argument("--slurm-state", type=Path, help="state root of a running SLURM cluster to use")
    args = harness.parse(parser, smoke={"adapters": 5, "requests": 10, "max_tokens": 2, "cold": 2, "steps": 1})
    report = harness.Report("adapter_churn_bench", args)
    with harness.served(args.slurm_state, served_models=[TINY]) as server:
        client = ScalarLMClient(server.url, api_key=server.token, timeout_s=600)
        jobs = train_adapters(client, server.state_dir, args.adapters, args.steps)
        prompts = [f"Tell me about item {i}." for i in range(args.requests)]
        spread = {job: prompts[i::len(jobs)] for i, job in enumerate(jobs)}
        one = {jobs[0]: prompts}
        throughput = harness.pairs(lambda: tokens_per_s(server, one, args.max_tokens),
                                   lambda: tokens_per_s(server, spread, args.max_tokens), args.pairs)

        def warm_and_cold() -> list[tuple[float, float]]:
            """Round the adapters in order: the next one was used longest ago, so it is not loaded."""
            measured = []
            for i in range(args.cold):
                warm = request_s(client, jobs[i % len(jobs)])
                cold = request_s(client, jobs[(i + 1) % len(jobs)])
                measured.append((warm, cold))
            return measured

        for job in [*jobs[1:], jobs[0]]:  # a round first, ending on the adapter the pairs start from
            request_s(client, job)
        latency = [pair for _ in range(args.pairs) for pair in warm_and_cold()]
    report.compare(f"{args.adapters} adapters / 1 adapter: generated tokens/s", "tokens/s", throughput,
                   subject=f"spread over {args.adapters} LoRA jobs", baseline="all to one LoRA job")
    report.compare("request to an adapter not loaded / loaded: s", "s", latency,
                   subject="adapter not loaded", baseline="adapter just used")
    cold = sorted(c for _, c in latency)
    report.value("  wait for an adapter not loaded: p50", "s", [statistics.median(cold)])
    report.value("  wait for an adapter not loaded: p99", "s", [cold[min(len(cold) - 1, int(0.99 * len(cold)))]])
    report.finish()


if __name__ == "__main__":
    main()
