"""Checkpoint-to-served latency on CPU: how long after a training job publishes its first
checkpoint does the distribution answer under the job's model id, with no restart?

A LoRA job is loaded into the running base-model worker (vLLM runtime LoRA). A full fine-tune needs
an engine of its own. The first one on a base model gets an engine started at its submission (on
the base weights; its checkpoints are swapped in by weight reloads), which may not be up when the
first checkpoint lands. From then on a spare engine stands by on that base model, and the next
full fine-tune takes it. Both are timed. Baseline in the same run: one request to the base model,
end to end.
Usage: python bench/hot_pickup_bench.py [after_first|always]  (engine.spare_engine; with `always`
the spare is up from the start and the first full fine-tune takes it too).
Starts its own SLURM cluster and `llama stack run` (tiny model).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from tests.stack import ROOT, StackServer  # noqa: E402

TINY = "tiny-llama"
SPARE = sys.argv[1] if len(sys.argv) > 1 else "after_first"  # engine.spare_engine: after_first or always


def answer(url: str, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200


def served_after_checkpoint(client: ScalarLMClient, url: str, job: str) -> tuple[float, float]:
    """(first checkpoint -> answered, submission -> first checkpoint) in seconds."""
    submitted = client.job(job).created
    while True:
        checkpoints = client.job(job).checkpoints
        if checkpoints:
            try:
                published = (Path(checkpoints[0].path) / ".complete").stat().st_mtime
                break
            except FileNotFoundError:
                continue
        time.sleep(0.05)
    while not answer(url, f"scalarlm/{job}"):
        time.sleep(0.05)
    return time.time() - published, published - submitted


def wait_for_spare(client: ScalarLMClient) -> None:
    while not any("-spare-" in worker for worker in client.queue_stats().workers):
        time.sleep(0.5)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        env = {**os.environ, "SCALARLM_STATE_DIR": str(state)}
        cluster = ["bash", str(ROOT / "slurm" / "cluster.sh")]
        subprocess.run([*cluster, "start"], env=env, check=True, capture_output=True)
        server = StackServer(state, served_models=[TINY], workers=1, engine={"spare_engine": SPARE})
        server.start(wait_for_workers=1, timeout_s=600)
        try:
            client = ScalarLMClient(server.url)
            data = state / "data.jsonl"
            data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(16)))
            sha = client.upload(data)
            base = []
            for _ in range(5):
                start = time.time()
                assert answer(server.url, f"scalarlm/{TINY}")
                base.append(time.time() - start)
            lora_job = client.train(TINY, sha, steps=400, lora=True, checkpoint_every=50, learning_rate=1e-3)
            lora = served_after_checkpoint(client, server.url, lora_job)
            client.follow(lora_job)
            if SPARE == "always":
                wait_for_spare(client)
            first_job = client.train(TINY, sha, steps=400, checkpoint_every=50, learning_rate=1e-3)
            first = served_after_checkpoint(client, server.url, first_job)
            client.follow(first_job)
            wait_for_spare(client)
            next_job = client.train(TINY, sha, steps=400, checkpoint_every=50, learning_rate=1e-3, seed=1)
            following = served_after_checkpoint(client, server.url, next_job)
            client.follow(next_job)
        finally:
            server.stop()
            subprocess.run([*cluster, "stop"], env=env, check=False, capture_output=True)
    request = statistics.median(base)
    print(f"checkpoint-to-served latency, tiny model, CPU, spare_engine={SPARE}:")
    print(f"  base-model request (baseline)          : {request:7.3f} s")
    first_name = f"first full fine-tune ({'spare' if SPARE == 'always' else 'engine at submission'})"
    for name, (served, after) in (("LoRA job", lora), (first_name, first),
                                  ("next full fine-tune (spare engine)", following)):
        print(f"  {name:43}: first checkpoint -> answered {served:7.3f} s ({served / request:6.1f}x a request; "
              f"goal < 10 s); it came {after:5.1f} s after submission")


if __name__ == "__main__":
    main()
