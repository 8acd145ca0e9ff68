"""Nothing queued is lost: kill -9 a worker or its engine mid-batch, kill -9 the server with queued work."""

import subprocess
import sys
import time

from llama_stack_scalarlm.client import ScalarLMClient

from .conftest import TINY
from .stack import ROOT, StackServer


def wait_all(client, ids, timeout_s=600):
    results = {}
    deadline = time.time() + timeout_s
    while len(results) < len(ids) and time.time() < deadline:
        results.update(client.poll([i for i in ids if i not in results]))
        time.sleep(0.5)
    return results


def test_killed_worker_loses_no_request(server, tiny_model):
    client = ScalarLMClient(server.url)
    ids = client.submit(tiny_model, [f"prompt number {i}" for i in range(300)], max_tokens=48)
    (victim,) = [p for p in server.worker_processes() if f"--model {TINY}" in " ".join(p.cmdline())]
    deadline = time.time() + 60
    while client.queue_stats().leased == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert client.queue_stats().leased > 0, "the worker should be holding leased work"
    victim.kill()
    results = wait_all(client, ids)
    assert len(results) == len(ids)
    assert all(r.error is None and r.choices[0].completion_tokens >= 1 for r in results.values())
    replacement = [p for p in server.worker_processes() if f"--model {TINY}" in " ".join(p.cmdline())]
    assert replacement and replacement[0].pid != victim.pid


def test_a_dead_engine_restarts_its_worker_and_loses_no_request(server, tiny_model):
    client = ScalarLMClient(server.url)
    ids = client.submit(tiny_model, [f"engine crash {i}" for i in range(300)], max_tokens=48)
    (worker,) = [p for p in server.worker_processes() if f"--model {TINY}" in " ".join(p.cmdline())]
    deadline = time.time() + 60
    while client.queue_stats().leased == 0 and time.time() < deadline:
        time.sleep(0.05)
    (engine,) = [p for p in worker.children(recursive=True) if p.name() == "VLLM::EngineCore"]
    engine.kill()  # the worker process lives on; its engine is gone
    results = wait_all(client, ids)
    assert len(results) == len(ids)
    assert all(r.error is None and r.choices[0].completion_tokens >= 1 for r in results.values())
    replacement = [p for p in server.worker_processes() if f"--model {TINY}" in " ".join(p.cmdline())]
    assert replacement and replacement[0].pid != worker.pid


def test_killed_server_loses_no_queued_request(tmp_path, tiny_model):
    state = tmp_path / "state"
    first = StackServer(state, default_model=TINY, workers=0).start()
    client = ScalarLMClient(first.url)
    ids = client.submit(tiny_model, [f"durable {i}" for i in range(100)], max_tokens=4)
    assert client.queue_stats().queued == 100
    first.kill()

    # Restart with no dev workers; serve the queue with a separately started worker, as on a cluster.
    second = StackServer(state, default_model=TINY, workers=0).start()
    worker = subprocess.Popen(
        [sys.executable, "-m", "llama_stack_scalarlm.engine.worker", "--server-url", second.url, "--model", TINY],
        cwd=ROOT, env=second.env(), stdout=open(state / "external-worker.log", "ab"), stderr=subprocess.STDOUT,
    )
    try:
        results = wait_all(ScalarLMClient(second.url), ids)
        assert sorted(results) == sorted(ids)
        assert all(r.error is None for r in results.values())
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        second.stop()
