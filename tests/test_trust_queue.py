"""The queue's promises, through a real `llama stack run` and the real worker protocol (the tests
play the engine worker with ScalarLM's own WorkerGateway, so they control when work is leased,
renewed, answered or abandoned).

Each test failed against the queue before this change (commit ee9fb14): results were deleted as
they were handed over, attempts were counted and never read, heartbeats renewed every lease of a
worker, deltas from any worker reached the stream, leases went out in global id order, requests for
a model nobody serves waited forever, and nothing expired without a worker calling in.
"""

import asyncio
import threading
import time

import httpx
import openai
import pytest

from llama_stack_scalarlm.auth.worker import read_worker_credential
from llama_stack_scalarlm.client import ScalarLMClient
from llama_stack_scalarlm.engine.gateway import WorkerGateway
from llama_stack_scalarlm.queue.schema import Choice, GenerationResult, WorkEvent

from .conftest import TINY
from .stack import StackServer

LEASE_S, PROGRESS_S, ATTEMPTS, TTL_S, UNSERVED_S = 1.0, 4.0, 3, 6.0, 6.0
UNSERVED = "never-served"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    server = StackServer(tmp_path_factory.mktemp("queue"), served_models=[TINY, UNSERVED], workers=0,
                         lease_timeout_s=LEASE_S, progress_timeout_s=PROGRESS_S, max_attempts=ATTEMPTS,
                         limits={"result_ttl_s": TTL_S, "unserved_s": UNSERVED_S}).start()
    yield server
    server.stop()


@pytest.fixture
def client(stack):
    return ScalarLMClient(stack.url, api_key=stack.token)


def gateway(stack, name) -> WorkerGateway:
    return WorkerGateway(stack.url, name, read_worker_credential(stack.state_dir))


def answer(text="done") -> GenerationResult:
    return GenerationResult(choices=[Choice(index=0, text=text, finish_reason="stop", completion_tokens=1)])


def chat_answer(text: str) -> GenerationResult:
    """What a worker's vLLM OpenAI layer sends back for a chat call."""
    message = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return GenerationResult(response={"id": "x", "object": "chat.completion", "created": 0, "model": TINY,
                                      "choices": [message]})


def chunk(text: str) -> dict:
    """One OpenAI stream chunk, as a worker's vLLM OpenAI layer reports it."""
    return {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": TINY,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def raw_results(stack, ids, **extra) -> dict:
    body = {"request_ids": ids, **extra}
    response = httpx.post(f"{stack.url}/v1/scalarlm/generate/results", json=body, headers=stack.headers, timeout=30)
    response.raise_for_status()
    return {s["id"]: s for s in response.json()["results"]}


async def lease_all(worker: WorkerGateway, n: int, timeout_s: float = 10):
    items, deadline = [], time.monotonic() + timeout_s
    while len(items) < n and time.monotonic() < deadline:
        items += await worker.lease([TINY], n - len(items), wait_s=1)
    return items


def serve_one(stack, name: str) -> None:
    """A worker takes one request, answers it, and goes away."""
    async def serve():
        worker = gateway(stack, name)
        (item,) = await lease_all(worker, 1)
        await worker.report([WorkEvent(id=item.id, lease=item.lease, result=answer())])
        await worker.close()

    asyncio.run(serve())


def test_a_result_whose_response_was_lost_is_handed_over_again_until_acknowledged(stack, client):
    ids = client.submit(TINY, ["lost on the way"], max_tokens=4)
    serve_one(stack, "acker")
    first = raw_results(stack, ids, wait_s=10)
    assert first[ids[0]]["state"] == "done"
    again = raw_results(stack, ids)  # the first response "never arrived": nothing was acknowledged
    assert again[ids[0]]["result"] == first[ids[0]]["result"]
    assert raw_results(stack, ids, ack=ids)[ids[0]]["state"] == "unknown"


def test_unacknowledged_results_expire_with_no_worker_calling_in(stack, client):
    ids = client.submit(TINY, ["expire me"], max_tokens=4)
    serve_one(stack, "short-lived")
    assert raw_results(stack, ids)[ids[0]]["state"] == "done"
    time.sleep(TTL_S + 4)  # no worker calls in meanwhile
    assert raw_results(stack, ids)[ids[0]]["state"] == "unknown"


def test_a_request_that_keeps_losing_its_worker_fails_after_bounded_attempts(stack, client):
    ids = client.submit(TINY, ["I crash every engine"], max_tokens=4)

    async def crash_repeatedly():
        for attempt in range(ATTEMPTS):
            worker = gateway(stack, f"crashing-{attempt}")
            (item,) = await lease_all(worker, 1, timeout_s=20)  # leased, then never renewed: the worker "died"
            assert item.id == ids[0]
            await worker.close()
        await asyncio.sleep(LEASE_S + 4)
        late = gateway(stack, "after")
        assert await late.lease([TINY], 8, wait_s=1) == [], "not retried a fourth time"
        await late.close()

    asyncio.run(crash_repeatedly())
    (status,) = raw_results(stack, ids).values()
    assert status["state"] == "done"
    assert f"failed {ATTEMPTS} times" in status["result"]["error"]["message"]


def test_a_hung_engine_loses_its_leases_even_though_its_heartbeat_goes_on(stack, client):
    ids = client.submit(TINY, ["stuck"], max_tokens=4)

    async def hang():
        hung, healthy = gateway(stack, "hung"), gateway(stack, "healthy")
        (item,) = await lease_all(hung, 1)
        deadline = time.monotonic() + PROGRESS_S + LEASE_S + 10
        taken = []
        while not taken and time.monotonic() < deadline:
            assert await hung.heartbeat(progress=7, running=[(item.id, item.lease)]) in ([], [item.id])
            taken = await healthy.lease([TINY], 1, wait_s=0.5)
        assert [t.id for t in taken] == ids, "the work went to a worker whose engine moves"
        assert await hung.heartbeat(progress=7, running=[(item.id, item.lease)]) == [item.id], "told to stop"
        await healthy.report([WorkEvent(id=taken[0].id, lease=taken[0].lease, result=answer("from healthy"))])
        await hung.close()
        await healthy.close()

    asyncio.run(hang())
    assert client.poll(ids, wait_s=10)[ids[0]].choices[0].text == "from healthy"


def test_a_stream_whose_worker_is_lost_ends_with_an_error_not_repeated_text(stack):
    chat = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.token, timeout=60)
    received, errors = [], []

    def read_stream():
        try:
            stream = chat.chat.completions.create(model=f"scalarlm/{TINY}", stream=True, max_tokens=8,
                                                  messages=[{"role": "user", "content": "stream to me"}])
            for chunk in stream:
                received.extend(c.delta.content or "" for c in chunk.choices)
        except openai.APIError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read_stream)
    reader.start()

    async def lose_worker_midway():
        first, second = gateway(stack, "first"), gateway(stack, "second")
        (item,) = await lease_all(first, 1)
        await first.report([WorkEvent(id=item.id, lease=item.lease, deltas=[chunk("Hello")])])
        await asyncio.sleep(0.5)  # the client has "Hello"; now the first worker goes silent
        assert await second.lease([TINY], 1, wait_s=LEASE_S + 5) == [], "a started stream is not handed on"
        refused = await first.report([WorkEvent(id=item.id, lease=item.lease,
                                                deltas=[chunk(" again")])])
        assert refused == [item.id], "the lost worker's late text is refused"
        await first.close()
        await second.close()

    asyncio.run(lose_worker_midway())
    reader.join(timeout=30)
    assert "".join(received) == "Hello", received
    assert errors and "cannot continue" in str(errors[0])


def test_an_interactive_call_is_served_before_a_deep_bulk_queue(stack, client):
    bulk = client.submit(TINY, [f"bulk {i}" for i in range(5000)], max_tokens=4)
    chat = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.token, timeout=60)
    replies = []
    caller = threading.Thread(target=lambda: replies.append(chat.chat.completions.create(
        model=f"scalarlm/{TINY}", max_tokens=4, messages=[{"role": "user", "content": "I am waiting"}])))
    caller.start()
    time.sleep(1.0)

    async def serve_one_batch():
        worker = gateway(stack, "batch")
        items = await worker.lease([TINY], 8, wait_s=5)
        assert any(i.request.kind == "openai.chat" for i in items), [i.request.kind for i in items]
        await worker.report([WorkEvent(id=i.id, lease=i.lease, result=chat_answer("served")
                                       if i.request.kind == "openai.chat" else answer("served")) for i in items])
        await worker.close()

    asyncio.run(serve_one_batch())
    caller.join(timeout=30)
    assert replies and replies[0].choices[0].message.content == "served"
    assert len(client.cancel_requests(bulk)) >= len(bulk) - 8


def test_a_stream_whose_caller_went_away_is_stopped_at_its_first_text(stack):
    def hang_up():
        with pytest.raises(httpx.ReadTimeout):  # queued, nobody serves it yet: the caller gives up
            with httpx.stream("POST", f"{stack.url}/v1/chat/completions", headers=stack.headers, timeout=2,
                              json={"model": f"scalarlm/{TINY}", "stream": True, "max_tokens": 4,
                                    "messages": [{"role": "user", "content": "never mind"}]}) as response:
                response.read()

    hang_up()

    async def serve():
        worker = gateway(stack, "latecomer")
        (item,) = await lease_all(worker, 1)
        await worker.report([WorkEvent(id=item.id, lease=item.lease, deltas=[chunk("Hi")])])
        deadline, told = time.monotonic() + 10, []
        while not told and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            told = await worker.heartbeat(progress=1, running=[(item.id, item.lease)])
        assert told == [item.id], "its worker is told to stop generating"
        await worker.close()

    asyncio.run(serve())


def test_a_cancelled_running_request_is_stopped_by_its_worker(stack, client):
    ids = client.submit(TINY, ["stop me"], max_tokens=4)

    async def run():
        worker = gateway(stack, "runner")
        (item,) = await lease_all(worker, 1)
        assert await worker.heartbeat(progress=1, running=[(item.id, item.lease)]) == []
        assert client.cancel_requests(ids) == ids
        assert await worker.heartbeat(progress=2, running=[(item.id, item.lease)]) == [item.id]
        await worker.close()

    asyncio.run(run())


def test_requests_for_a_model_no_engine_serves_fail_instead_of_waiting_forever(stack, client):
    ids = client.submit(UNSERVED, ["anyone?"], max_tokens=4)
    deadline = time.time() + UNSERVED_S + 20
    status = None
    while time.time() < deadline:
        status = raw_results(stack, ids)[ids[0]]
        if status["state"] == "done":
            break
        time.sleep(1)
    assert status["state"] == "done", status
    assert status["result"]["error"]["status"] == 503 and UNSERVED in status["result"]["error"]["message"]


def test_a_request_queued_after_a_quiet_spell_waits_its_own_unserved_period(stack, client):
    """No engine asked for the model for longer than ``unserved_s``; a request queued now is still
    served by the next worker, not failed at the next upkeep pass (it was, and a test that happened
    to follow a quiet test lost its request that way)."""
    time.sleep(UNSERVED_S + 1)  # no worker asks for the tiny model meanwhile
    ids = client.submit(TINY, ["after a quiet spell"], max_tokens=4)
    time.sleep(2.5)  # an upkeep pass (every 2 s) runs in between
    serve_one(stack, "after-quiet")
    (status,) = raw_results(stack, ids).values()
    assert status["state"] == "done" and status["result"].get("error") is None, status
