"""Nothing queued is lost: kill -9 a worker or its engine mid-batch, kill -9 the server with queued work;
and a worker that cannot start is restarted ever more slowly."""

import re
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


def tiny_workers(server):
    return [p for p in server.worker_processes() if f"--model {TINY}" in " ".join(p.cmdline())]


def submit_until_leased(client, tiny_model, prefix):
    """300 requests, once the worker holds some of them."""
    ids = client.submit(tiny_model, [f"{prefix} {i}" for i in range(300)], max_tokens=48)
    deadline = time.time() + 60
    while client.queue_stats().leased == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert client.queue_stats().leased > 0, "the worker should be holding leased work"
    return ids


def assert_all_served_by_a_new_worker(server, client, ids, old_worker):
    results = wait_all(client, ids)
    assert len(results) == len(ids)
    assert all(r.error is None and r.choices[0].completion_tokens >= 1 for r in results.values())
    replacement = tiny_workers(server)
    assert replacement and replacement[0].pid != old_worker.pid


def test_killed_worker_loses_no_request(server, tiny_model):
    client = ScalarLMClient(server.url, api_key=server.token)
    (victim,) = tiny_workers(server)
    ids = submit_until_leased(client, tiny_model, "prompt number")
    victim.kill()
    assert_all_served_by_a_new_worker(server, client, ids, victim)


def test_a_dead_engine_restarts_its_worker_and_loses_no_request(server, tiny_model):
    client = ScalarLMClient(server.url, api_key=server.token)
    (worker,) = tiny_workers(server)
    ids = submit_until_leased(client, tiny_model, "engine crash")
    (engine,) = [p for p in worker.children(recursive=True) if p.name() == "VLLM::EngineCore"]
    engine.kill()  # the worker process lives on; its engine is gone
    assert_all_served_by_a_new_worker(server, client, ids, worker)


def test_killed_server_loses_no_queued_request(tmp_path, tiny_model):
    state = tmp_path / "state"
    first = StackServer(state, default_model=TINY, workers=0).start()
    client = ScalarLMClient(first.url, api_key=first.token)
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
        results = wait_all(ScalarLMClient(second.url, api_key=second.token), ids)
        assert sorted(results) == sorted(ids)
        assert all(r.error is None for r in results.values())
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        second.stop()


def test_a_worker_that_cannot_start_is_retried_less_and_less_often(tmp_path):
    server = StackServer(tmp_path, served_models=["no-such-model"], workers=1).start()
    try:
        log = tmp_path / "server.log"
        deadline = time.time() + 120
        while "restarting in 8 s" not in log.read_text() and time.time() < deadline:
            time.sleep(0.5)
        delays = [int(d) for d in re.findall(r"exited with \S+; restarting in (\d+) s", log.read_text())]
        assert delays[:3] == [2, 4, 8], delays
    finally:
        server.stop()
