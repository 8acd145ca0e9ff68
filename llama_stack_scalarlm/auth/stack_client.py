"""The stack's token checks, answered in this process when they are addressed to this server.

Llama Stack 0.7.3's ``custom`` auth provider (``llama_stack.core.server.auth_providers``) checks
every request's token with an HTTP POST to its endpoint, through a new ``httpx.AsyncClient`` each
time. The distribution's endpoint is this server's own ``/v1/scalarlm/auth/validate``, so each
user call cost the server a second call to itself on the same event loop: building the client
took 37 ms of CPU (the CA bundle), and with one shared client the loopback round trip through the
stack's middleware still took ~3 ms, twice per bulk poll or chat. Here the provider's client is one
long-lived client whose transport answers a POST to the validate route on a loopback port that
this process listens on, in process, with exactly what the route answers (200 and the principal,
or 401); any other endpoint (a token service elsewhere, another server on this host) goes over
the network as upstream sends it. The provider's request and its parsing of the answer stay
upstream's own.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from contextlib import asynccontextmanager

import httpx

from ..listening import own_ports

VALIDATE_PATH = "/v1/scalarlm/auth/validate"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
INVALID_TOKEN = "invalid or revoked token (scalarlm token create)"


def api_key_of(body: bytes) -> str | None:
    """The token in a validate call's body (``{api_key, request}``), or None when there is none."""
    try:
        token = json.loads(body)["api_key"]
    except (ValueError, KeyError, TypeError):
        return None
    return token if isinstance(token, str) else None


class _OwnValidation(httpx.AsyncBaseTransport):
    """Answers this server's own token checks by calling ``principal(token)``; passes the rest on."""

    def __init__(self, principal: Callable[[str], str | None]):
        self._principal = principal
        self._network = httpx.AsyncHTTPTransport()
        self._ports: frozenset[int] = frozenset()

    def _is_own(self, url: httpx.URL) -> bool:
        """A loopback address on a port this process listens on (looked up once it listens)."""
        if url.host not in _LOOPBACK:
            return False
        if not self._ports:
            self._ports = own_ports()
        return url.port in self._ports

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != VALIDATE_PATH or not self._is_own(request.url):
            return await self._network.handle_async_request(request)
        token = api_key_of(await request.aread())
        name = None if token is None else self._principal(token)
        if name is None:
            return httpx.Response(401, json={"detail": INVALID_TOKEN})
        return httpx.Response(200, json={"principal": name})

    async def aclose(self) -> None:
        await self._network.aclose()


def answer_own_token_checks(principal: Callable[[str], str | None]) -> None:
    """Idempotent: the stack's auth module sees an ``httpx`` whose ``AsyncClient()`` is one
    long-lived client answering this server's token checks with ``principal``."""
    from llama_stack.core.server import auth_providers

    if getattr(auth_providers.httpx, "_scalarlm_shared", False):
        return
    shared: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def client(*args, **kwargs):
        if args or kwargs:  # a caller that configures its client gets its own, as before
            async with httpx.AsyncClient(*args, **kwargs) as own:
                yield own
            return
        if not shared or shared[0].is_closed:
            shared[:] = [httpx.AsyncClient(transport=_OwnValidation(principal))]
        yield shared[0]

    facade = types.ModuleType("httpx")
    facade.__dict__.update(vars(httpx))
    facade.AsyncClient = client
    facade._scalarlm_shared = True
    auth_providers.httpx = facade
