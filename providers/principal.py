"""Who is calling: the principal the stack's ``server.auth`` authenticated for this request. Queued
requests and their results belong to it."""

from llama_stack.core.request_headers import get_authenticated_user

ANONYMOUS = ""  # a server run without server.auth (not the distribution's run config): one shared owner


def principal() -> str:
    user = get_authenticated_user()
    return user.principal if user is not None else ANONYMOUS
