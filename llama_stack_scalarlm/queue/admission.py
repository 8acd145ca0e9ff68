"""What a client may ask, checked before anything is queued: the OpenAI path and the bulk path
refuse the same things the same way (400 naming the field, nothing stored)."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Limits
from ..errors import InvalidFieldError
from .schema import GenerationRequest, OpenAIRequest, WorkRequest


def check_count(field: str, count: int, limit: int, limit_name: str) -> None:
    if count > limit:
        raise InvalidFieldError(field, f"{count} items is more than the limit of {limit} (limits.{limit_name})")


def check_requests(requests: Sequence[WorkRequest], limits: Limits, max_model_len: int) -> None:
    for request in requests:
        n, temperature, max_tokens, stop, size, field = _bounded(request)
        if n > limits.max_n:
            raise InvalidFieldError("n", f"{n} is more than the limit of {limits.max_n}")
        if (temperature or 0) > limits.max_temperature:
            raise InvalidFieldError("temperature", f"{temperature} is above {limits.max_temperature}")
        if max_tokens is not None and max_tokens >= max_model_len:
            raise InvalidFieldError("max_tokens", f"{max_tokens} does not fit the context of {max_model_len}")
        check_count("stop", len(stop), limits.max_list, "max_list")
        if size > limits.max_prompt_chars:
            raise InvalidFieldError(field, f"{size} characters is more than the limit of {limits.max_prompt_chars}")


def _bounded(request: WorkRequest) -> tuple:
    """What the limits bound, from either shape of request: n, temperature, max_tokens, stop,
    the prompt's size in characters and the field that holds it."""
    if isinstance(request, OpenAIRequest):
        body = request.body
        stop = body.get("stop") or []
        prompt = body.get("prompt") if request.kind == "openai.completion" else body.get("messages")
        return (body.get("n") or 1, body.get("temperature"),
                body.get("max_completion_tokens") or body.get("max_tokens"), [stop] if isinstance(stop, str) else stop,
                len(str(prompt or "")), "prompt" if request.kind == "openai.completion" else "messages")
    size = len(request.prompt or "") + sum(len(str(m.get("content") or "")) for m in request.messages or [])
    return (request.n, request.temperature, request.max_tokens, request.stop, size,
            "messages" if request.kind == "chat" else "prompt")
