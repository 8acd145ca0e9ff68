"""Who may call what, through a real `llama stack run`: tokens, the loopback bind, the worker credential.

Each test here failed against the distribution before authentication (commit ee9fb14): every
route answered anyone, the server listened on every interface, and any caller could lease work.
"""

import asyncio
import re
import subprocess
import sys

import httpx
import psutil
import pytest

from llama_stack_scalarlm.auth.worker import read_worker_credential
from llama_stack_scalarlm.client import ScalarLMClient
from llama_stack_scalarlm.engine.gateway import WorkerGateway

from .conftest import TINY
from .stack import StackServer, free_port

PUBLIC = {("get", "/v1/health"), ("get", "/v1/version")}  # Llama Stack's own public routes (for monitoring)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """No engine workers: these tests play the worker's part themselves, over the real protocol."""
    server = StackServer(tmp_path_factory.mktemp("auth"), served_models=[TINY], workers=0).start()
    yield server
    server.stop()


def cli(stack, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_stack_scalarlm.cli", *args], env=stack.env(),
                          input=stdin, capture_output=True, text=True, timeout=60)


def routes(stack) -> list[tuple[str, str]]:
    """Every route of the server's OpenAPI document, with path parameters filled in, plus the
    worker protocol (left out of the document)."""
    document = httpx.get(f"{stack.url}/openapi.json", headers=stack.headers, timeout=30).json()
    found = [(method, re.sub(r"\{[^}]+\}", "x", path))
             for path, item in document["paths"].items() for method in item if method in ("get", "post", "put", "delete")]
    found += [("post", f"/v1/scalarlm/worker/{name}") for name in ("lease", "events", "heartbeat")]
    return found


def test_without_a_token_every_route_but_health_is_a_401(stack):
    all_routes = routes(stack)
    assert len(all_routes) > 50 and ("post", "/v1/chat/completions") in all_routes
    for method, path in all_routes:
        status = httpx.request(method, f"{stack.url}{path}", json={}, timeout=30).status_code
        if (method, path) in PUBLIC:
            assert status == 200, (method, path)
        else:
            assert status == 401, (method, path, status)


def test_a_bad_token_is_a_401_and_a_revoked_one_stops_working_at_once(stack):
    assert httpx.get(f"{stack.url}/v1/models", headers={"Authorization": "Bearer slm-guess"}).status_code == 401
    made = cli(stack, "token", "create", "--name", "short-lived")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{stack.url}/v1/models", headers=headers).status_code == 200
    assert "short-lived" in cli(stack, "token", "list").stdout
    assert token not in (stack.state_dir / "auth" / "tokens.json").read_text(), "only the token's hash is kept"
    assert cli(stack, "token", "revoke", "short-lived").returncode == 0
    assert httpx.get(f"{stack.url}/v1/models", headers=headers).status_code == 401
    assert cli(stack, "token", "revoke", "short-lived").returncode == 1


def test_a_token_the_cluster_already_holds_is_added_from_stdin(stack):
    secret = "k8s-secret-value-0123456789"
    added = cli(stack, "token", "add", "from-secret", stdin=secret + "\n")
    assert added.returncode == 0, added.stderr
    assert httpx.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert cli(stack, "token", "add", "empty", stdin="").returncode == 2
    assert cli(stack, "token", "add", "from-secret", stdin="another").returncode == 2, "a name holds one token"
    assert cli(stack, "token", "revoke", "from-secret").returncode == 0


def test_the_server_listens_on_loopback_only(stack):
    listening = {c.laddr.ip for c in psutil.Process(stack.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, listening


def test_one_user_cannot_read_or_cancel_another_users_requests(stack):
    alice = ScalarLMClient(stack.url, api_key=stack.token)
    bob_token = cli(stack, "token", "create", "--name", "bob").stdout.strip()
    bob = ScalarLMClient(stack.url, api_key=bob_token)
    ids = alice.submit(TINY, ["alice's private prompt"], max_tokens=4)
    seq, _, secret = ids[0].partition("-")
    assert len(secret) >= 24, "ids carry 96 random bits"
    assert bob.poll(ids) == {} and bob.cancel_requests(ids) == []
    (status,) = httpx.post(f"{stack.url}/v1/scalarlm/generate/results", json={"request_ids": ids},
                           headers={"Authorization": f"Bearer {bob_token}"}).json()["results"]
    assert status["state"] == "unknown", "another user's request is indistinguishable from none"
    guessed = f"{seq}-{'0' * len(secret)}"
    assert alice.poll([guessed]) == {} and alice.cancel_requests([guessed]) == [], "a guessed id is nobody's"
    assert httpx.post(f"{stack.url}/v1/scalarlm/generate/results", json={"request_ids": ids},
                      headers=stack.headers).json()["results"][0]["state"] == "queued"
    assert alice.cancel_requests(ids) == ids


def test_only_workers_may_lease_and_only_the_lease_holder_may_answer(stack):
    client = ScalarLMClient(stack.url, api_key=stack.token)
    (request_id,) = client.submit(TINY, ["who answers me?"], max_tokens=4)
    lease = {"worker_id": "outsider", "models": [TINY], "capacity": 8}
    for headers in ({}, stack.headers):  # no token, then a valid user token: neither is a worker
        assert httpx.post(f"{stack.url}/v1/scalarlm/worker/lease", json=lease, headers=headers).status_code == 401
        events = {"worker_id": "outsider", "events": [{"id": request_id, "lease": "x", "result": {"choices": []}}]}
        assert httpx.post(f"{stack.url}/v1/scalarlm/worker/events", json=events, headers=headers).status_code == 401

    from llama_stack_scalarlm.queue.schema import Choice, GenerationResult, WorkEvent

    def answer(text):
        return GenerationResult(choices=[Choice(index=0, text=text, finish_reason="stop", completion_tokens=1)])

    async def play():
        credential = read_worker_credential(stack.state_dir)
        holder, other = WorkerGateway(stack.url, "holder", credential), WorkerGateway(stack.url, "other", credential)
        try:
            (item,) = await holder.lease([TINY], 8, wait_s=5)
            assert item.id == request_id
            # Another worker, even with the lease token, and the holder with a wrong one, are refused.
            assert await other.report([WorkEvent(id=item.id, lease=item.lease, result=answer("forged"))]) == [item.id]
            assert await holder.report([WorkEvent(id=item.id, lease="0" * 16, result=answer("stale"))]) == [item.id]
            assert client.poll([request_id]) == {}
            assert await holder.report([WorkEvent(id=item.id, lease=item.lease, result=answer("real"))]) == []
        finally:
            await holder.close()
            await other.close()

    asyncio.run(play())
    (result,) = client.poll([request_id], wait_s=10).values()
    assert result.choices[0].text == "real"


def test_a_second_server_on_the_same_queue_is_refused(stack, tmp_path):
    second = StackServer(stack.state_dir)
    with pytest.raises(RuntimeError, match="exited"):
        second.start(timeout_s=120)
    assert "owned by another server process" in (stack.state_dir / "server.log").read_text()


def test_token_checks_to_this_process_are_answered_in_it_and_others_go_over_the_network():
    """The stack's auth client answers a validate call addressed to a port this process listens
    on without a connection (the listener here never accepts one); a call to a port it does not
    listen on goes out over the network, as upstream sends it."""
    from llama_stack_scalarlm.auth.stack_client import INVALID_TOKEN, VALIDATE_PATH, _OwnValidation

    async def check():
        listener = await asyncio.start_server(lambda r, w: pytest.fail("connected"), "127.0.0.1", 0)
        own = listener.sockets[0].getsockname()[1]
        async with httpx.AsyncClient(transport=_OwnValidation({"good": "alice"}.get)) as client:
            url = f"http://127.0.0.1:{own}{VALIDATE_PATH}"
            ok = await client.post(url, json={"api_key": "good", "request": {}})
            bad = await client.post(url, json={"api_key": "bad"})
            malformed = await client.post(url, content=b"not json")
            elsewhere = free_port()
            with pytest.raises(httpx.ConnectError):
                await client.post(f"http://127.0.0.1:{elsewhere}{VALIDATE_PATH}", json={"api_key": "good"})
        listener.close()
        return ok, bad, malformed

    ok, bad, malformed = asyncio.run(check())
    assert (ok.status_code, ok.json()) == (200, {"principal": "alice"})
    assert bad.status_code == malformed.status_code == 401 and bad.json() == {"detail": INVALID_TOKEN}
