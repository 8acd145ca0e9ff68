"""The durable request store on its own: ordering, capacity, leases, results, owners, restarts."""

import time

import pytest

from llama_stack_scalarlm.queue.schema import Choice, GenerationRequest, GenerationResult
from llama_stack_scalarlm.queue.store import BULK, INTERACTIVE, QueueOwnedError, RequestStore


def req(i=0, model="m"):
    return GenerationRequest(kind="completion", model=model, prompt=f"p{i}", max_tokens=4)


def done(text="x"):
    return GenerationResult(choices=[Choice(index=0, text=text, finish_reason="stop", completion_tokens=1)])


def test_lease_is_fifo_bounded_by_capacity_and_model(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    ids = store.enqueue([req(i) for i in range(5)] + [req(9, model="other")], "alice")
    assert len(set(ids)) == 6
    first = store.lease("w1", ["m"], 3, lease_s=30)
    assert [w.id for w in first] == ids[:3]
    assert [w.request.prompt for w in first] == ["p0", "p1", "p2"]
    rest = store.lease("w2", ["m"], 10, lease_s=30)
    assert [w.id for w in rest] == ids[3:5]
    assert store.lease("w3", ["m"], 10, lease_s=30) == []
    assert [w.id for w in store.lease("w3", ["other", "m"], 10, lease_s=30)] == [ids[5]]


def test_interactive_requests_are_leased_before_older_bulk_ones(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    bulk = store.enqueue([req(i) for i in range(100)], "bulk-user", BULK)
    (chat,) = store.enqueue([req(999)], "waiting-user", INTERACTIVE)
    assert [w.id for w in store.lease("w", ["m"], 3, lease_s=30)] == [chat, *bulk[:2]]


def test_only_the_lease_holder_records_a_result_and_a_lapsed_lease_goes_back(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    (rid,) = store.enqueue([req()], "alice")
    (dead,) = store.lease("dead", ["m"], 1, lease_s=0.01)
    time.sleep(0.05)
    assert store.release_expired(max_attempts=3) == []
    (again,) = store.lease("alive", ["m"], 1, lease_s=30)
    assert again.id == rid and again.lease != dead.lease
    assert store.complete("dead", [(rid, dead.lease, done("late"))]) == []
    assert store.complete("alive", [(rid, dead.lease, done("stale lease"))]) == []
    assert store.complete("alive", [(rid, again.lease, done("first"))]) == [rid]
    assert store.complete("alive", [(rid, again.lease, done("twice"))]) == []
    (status,) = store.status([rid], "alice")
    assert status.state == "done" and status.result.choices[0].text == "first"
    assert store.status([rid], "bob")[0].state == "unknown"
    assert store.remove([rid], "alice", finished_only=True) == [rid]
    assert store.status([rid], "alice")[0].state == "unknown"


def test_a_request_fails_once_it_has_been_leased_max_attempts_times(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    (rid,) = store.enqueue([req()], "alice")
    for attempt in range(1, 4):
        (item,) = store.lease(f"w{attempt}", ["m"], 1, lease_s=30)
        failed = store.release_worker(f"w{attempt}", max_attempts=3)
        assert failed == ([rid] if attempt == 3 else [])
    assert store.lease("w4", ["m"], 1, lease_s=30) == []
    assert "failed 3 times" in store.status([rid], "alice")[0].result.error.message


def test_renewal_of_a_stalled_worker_keeps_only_its_newest_leases(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    store.enqueue([req(1)], "a")
    (old,) = store.lease("w", ["m"], 1, lease_s=30)
    time.sleep(0.05)
    cut = time.time()
    store.enqueue([req(2)], "a")
    (new,) = store.lease("w", ["m"], 1, lease_s=30)
    assert store.renew("w", lease_s=30, leased_since=cut) == 1
    assert store.held("w", [(old.id, old.lease), (new.id, new.lease), (new.id, "other")]) == {old.id, new.id}


def test_queue_survives_reopen_and_a_second_owner_is_refused(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    ids = store.enqueue([req(i) for i in range(3)], "alice")
    store.lease("w", ["m"], 1, lease_s=30)
    with pytest.raises(QueueOwnedError, match="owned by another server process"):
        RequestStore(tmp_path / "q.sqlite")
    store.close()
    reopened = RequestStore(tmp_path / "q.sqlite")
    assert reopened.stats().queued == 2 and reopened.stats().leased == 1
    reopened.release_worker("w", max_attempts=3)
    assert [w.id for w in reopened.lease("w2", ["m"], 5, lease_s=30)] == ids
    assert reopened.enqueue([req()], "alice")[0] not in ids


def test_a_queue_file_of_the_old_layout_is_set_aside_not_deleted(tmp_path):
    import sqlite3

    path = tmp_path / "q.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT, payload TEXT)")
    old.execute("INSERT INTO requests (model, payload) VALUES ('m', '{}')")
    old.commit()
    old.close()
    store = RequestStore(path)
    assert store.stats().queued == 0
    store.close()
    kept = sqlite3.connect(path).execute("SELECT COUNT(*) FROM requests_v1").fetchone()[0]
    assert kept == 1


def test_unacknowledged_results_expire(tmp_path):
    store = RequestStore(tmp_path / "q.sqlite")
    (rid,) = store.enqueue([req()], "alice")
    (item,) = store.lease("w", ["m"], 1, lease_s=30)
    store.complete("w", [(rid, item.lease, done())])
    assert store.purge_results(older_than_s=3600) == 0
    time.sleep(0.02)
    assert store.purge_results(older_than_s=0.01) == 1
    assert store.status([rid], "alice")[0].state == "unknown"


def test_a_worker_silent_for_a_lease_period_leaves_the_live_list(tmp_path):
    from llama_stack_scalarlm.queue.service import QueuePolicy, QueueService

    policy = QueuePolicy(lease_s=0.5, progress_s=60, max_attempts=3, result_ttl_s=60, unserved_s=600)
    queue = QueueService(RequestStore(tmp_path / "q.sqlite"), policy)
    queue.heartbeat("stopped", 0, [])
    queue.heartbeat("running", 0, [])
    time.sleep(2.6)  # past the lease period and the upkeep interval
    queue.heartbeat("running", 0, [])
    assert set(queue.stats().workers) == {"running"}
    queue.close()
