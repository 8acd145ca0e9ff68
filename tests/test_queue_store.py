"""The durable request store on its own: ordering, capacity, leases, results, restarts."""

import time

from llama_stack_scalarlm.queue.schema import Choice, GenerationRequest, GenerationResult
from llama_stack_scalarlm.queue.store import RequestStore


def req(i=0, model="m"):
    return GenerationRequest(kind="completion", model=model, prompt=f"p{i}", max_tokens=4)


def done(text="x"):
    return GenerationResult(choices=[Choice(index=0, text=text, finish_reason="stop", completion_tokens=1)])


def test_lease_is_fifo_bounded_by_capacity_and_model(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    ids = store.enqueue([req(i) for i in range(5)] + [req(9, model="other")])
    assert ids == list(range(ids[0], ids[0] + 6))
    first = store.lease("w1", ["m"], 3, lease_s=30)
    assert [w.id for w in first] == ids[:3]
    assert [w.request.prompt for w in first] == ["p0", "p1", "p2"]
    rest = store.lease("w2", ["m"], 10, lease_s=30)
    assert [w.id for w in rest] == ids[3:5]
    assert store.lease("w3", ["m"], 10, lease_s=30) == []
    assert [w.id for w in store.lease("w3", ["other"], 10, lease_s=30)] == [ids[5]]


def test_expired_lease_returns_to_queue_and_first_result_wins(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    (rid,) = store.enqueue([req()])
    store.lease("dead", ["m"], 1, lease_s=0.01)
    time.sleep(0.05)
    assert store.release_expired() == 1
    (again,) = store.lease("alive", ["m"], 1, lease_s=30)
    assert again.id == rid
    assert store.complete([(rid, done("first"))]) == [rid]
    assert store.complete([(rid, done("late"))]) == []
    (status,) = store.status([rid], consume=True)
    assert status.state == "done" and status.result.choices[0].text == "first"
    assert store.status([rid])[0].state == "unknown"


def test_renewed_lease_does_not_expire(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    store.enqueue([req()])
    store.lease("w", ["m"], 1, lease_s=0.05)
    time.sleep(0.03)
    assert store.renew("w", lease_s=30) == 1
    time.sleep(0.05)
    assert store.release_expired() == 0


def test_queue_survives_reopen(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    ids = store.enqueue([req(i) for i in range(3)])
    store.lease("w", ["m"], 1, lease_s=30)
    store.close()
    reopened = RequestStore(tmp_path / "q.sqlite")
    assert reopened.stats().queued == 2 and reopened.stats().leased == 1
    assert reopened.release_worker("w") == 1
    assert [w.id for w in reopened.lease("w2", ["m"], 5, lease_s=30)] == ids
    assert reopened.enqueue([req()])[0] == ids[-1] + 1


def test_unfetched_results_expire(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    (rid,) = store.enqueue([req()])
    store.lease("w", ["m"], 1, lease_s=30)
    store.complete([(rid, done())])
    assert store.purge_results(older_than_s=3600) == 0
    time.sleep(0.02)
    assert store.purge_results(older_than_s=0.01) == 1
    assert store.status([rid])[0].state == "unknown"


def test_a_worker_silent_for_a_lease_period_leaves_the_live_list(tmp_path):
    from llama_stack_scalarlm.queue.service import QueueService

    queue = QueueService(RequestStore(tmp_path / "q.sqlite"), lease_s=0.5, result_ttl_s=60)
    queue.heartbeat("stopped")
    queue.heartbeat("running")
    time.sleep(2.1)  # past the lease period and the maintenance interval
    queue.heartbeat("running")
    assert set(queue.stats().workers) == {"running"}
