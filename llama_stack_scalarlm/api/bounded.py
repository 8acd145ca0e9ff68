"""Request bodies with a size bound, checked while they arrive: FastAPI reads a JSON body whole
into memory before any validation, so without this one 10 GiB call would exhaust the server."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute

BODY_LIMIT_FIELD = "limits.max_request_bytes"


def _too_large(size: int, limit: int) -> HTTPException:
    return HTTPException(413, f"body: {size} bytes is more than the limit of {limit} ({BODY_LIMIT_FIELD})")


class _BoundedRequest(Request):
    limit: int

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            parts, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > self.limit:
                    raise _too_large(size, self.limit)
                parts.append(chunk)
            self._body = b"".join(parts)
        return self._body


def bounded_route_class(limit: Callable[[], int]) -> type[APIRoute]:
    """An APIRoute whose requests refuse a body over ``limit()`` bytes with a 413 naming the limit
    (at once from Content-Length, or as soon as a chunked body passes it)."""

    class BoundedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def bounded(request: Request):
                cap = limit()
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise _too_large(int(declared), cap)
                wrapped = _BoundedRequest(request.scope, request.receive)
                wrapped.limit = cap
                return await handler(wrapped)

            return bounded

    return BoundedRoute
