"""Checkpoint-to-served latency on CPU: how long after a training job publishes its first
checkpoint does the distribution answer under the job's model id, with no restart?

A LoRA job is loaded into the running base-model worker (vLLM runtime LoRA). A full fine-tune needs
an engine of its own. The first one on a base model gets an engine started at its submission (on
the base weights; its checkpoints are swapped in by weight reloads), which may not be up when the
first checkpoint lands. From then on a spare engine stands by on that base model, and the next
full fine-tune takes it. All three are timed. Baseline, in pairs with each: one request to the base
model, end to end. LoRA jobs and next full fine-tunes are repeated (a new job each time, the next
full fine-tune once a new spare is up); the first full fine-tune on a base model happens once per
registry, so it is one pair.

Starts its own `llama stack run` (tiny model) and, unless ``--slurm-state`` names the state root of
a SLURM cluster already running (it is left running), its own cluster with slurm/cluster.sh (root).
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from tests.stack import StackServer  # noqa: E402

TINY = "tiny-llama"


def answers(server: StackServer, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=server.headers,
                      timeout=60).status_code == 200


def request_s(server: StackServer) -> float:
    start = time.perf_counter()
    assert answers(server, f"scalarlm/{TINY}")
    return time.perf_counter() - start


def first_checkpoint_mtime(client: ScalarLMClient, job: str) -> float | None:
    checkpoints = client.job(job).checkpoints
    try:
        return (Path(checkpoints[0].path) / ".complete").stat().st_mtime if checkpoints else None
    except FileNotFoundError:  # rotated away meanwhile: read the status again
        return None


def picked_up(client: ScalarLMClient, server: StackServer, job: str) -> dict:
    """s from the first checkpoint to answered (and from submission to that checkpoint); then the
    job is followed to its end, so the next measurement has the machine to itself."""
    submitted = client.job(job).created
    published = harness.until(lambda: first_checkpoint_mtime(client, job), f"{job}'s first checkpoint")
    harness.until(lambda: answers(server, f"scalarlm/{job}"), f"{job} answered")
    served = time.time() - published
    state = client.follow(job).state
    assert state == "COMPLETED", f"{job} ended {state}"
    return {"served_s": served, "checkpoint_after_s": published - submitted}


def new_spare(client: ScalarLMClient, taken: set[str]) -> str:
    """A spare engine that no job has taken yet (a taken spare keeps its worker id)."""
    def live() -> str | None:
        return next((w for w in client.queue_stats().workers if "-spare-" in w and w not in taken), None)
    spare = harness.until(live, "a new spare engine", poll_s=0.5)
    taken.add(spare)
    return spare


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--spare-engine", default="after_first", choices=["after_first", "always"],
                        help="engine.spare_engine; with always, the first full fine-tune takes the spare too")
    parser.add_argument("--steps", type=int, default=400, help="steps of each training job")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--slurm-state", type=Path, help="state root of a running SLURM cluster to use")
    args = harness.parse(parser, smoke={"steps": 2, "checkpoint_every": 1})
    report = harness.Report("hot_pickup_bench", args, variant=f"spare_engine={args.spare_engine}")
    # A worker holds max_loras adapters: one for every LoRA job of the run.
    with harness.served(args.slurm_state, served_models=[TINY],
                        engine={"spare_engine": args.spare_engine, "max_loras": max(3, args.pairs)}) as server:
        state = server.state_dir
        client = ScalarLMClient(server.url, api_key=server.token)
        base = functools.partial(request_s, server)
        base()  # warm (and Llama Stack creates its SQL tables after a first chat completion)
        data = state / "data.jsonl"
        data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(16)))
        sha = client.upload(data)
        seeds, spares = itertools.count(), set()

        def job(**kind) -> dict:
            submitted = client.train(TINY, sha, steps=args.steps, checkpoint_every=args.checkpoint_every,
                                     learning_rate=1e-3, seed=next(seeds), **kind)
            return picked_up(client, server, submitted)

        def next_full_finetune() -> dict:
            new_spare(client, spares)
            return job()

        lora = harness.pairs(base, lambda: job(lora=True), args.pairs)
        if args.spare_engine == "always":
            new_spare(client, spares)
        first = harness.pairs(base, job, 1)
        following = harness.pairs(base, next_full_finetune, args.pairs)
    first_name = "spare engine" if args.spare_engine == "always" else "engine started at submission"
    for name, measured in (("LoRA job", lora), (f"first full fine-tune ({first_name})", first),
                           ("next full fine-tune (spare engine)", following)):
        report.compare(f"{name}: first checkpoint -> answered", "s", [(b, p["served_s"]) for b, p in measured],
                       subject="checkpoint to served", baseline="one base-model request")
        report.value(f"  {name}: submission -> first checkpoint", "s", [p["checkpoint_after_s"] for _, p in measured])
    report.finish()


if __name__ == "__main__":
    main()
