"""One HTTP client for the stack's token checks, instead of one per request.

Llama Stack 0.7.3's ``custom`` auth provider (``llama_stack.core.server.auth_providers``) opens a
new ``httpx.AsyncClient`` for every request it authenticates; building one loads the CA bundle,
37 ms of CPU on the server's event loop per call (measured: 38 ms per authenticated request
against 2 ms for the public health route). The provider's requests, endpoint and answers stay
exactly as upstream makes them; only the client they go through is shared and kept open.
"""

from __future__ import annotations

import types
from contextlib import asynccontextmanager


def share_auth_client() -> None:
    """Idempotent: the stack's auth module sees an ``httpx`` whose ``AsyncClient()`` is one long-lived client."""
    import httpx
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
            shared[:] = [httpx.AsyncClient()]
        yield shared[0]

    facade = types.ModuleType("httpx")
    facade.__dict__.update(vars(httpx))
    facade.AsyncClient = client
    facade._scalarlm_shared = True
    auth_providers.httpx = facade
