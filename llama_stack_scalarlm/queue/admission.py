"""What a client may ask, checked before anything is queued: the OpenAI path and the bulk path
refuse the same things the same way (400 naming the field, nothing stored)."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Limits
from ..errors import InvalidFieldError
from .schema import GenerationRequest


def check_count(field: str, count: int, limit: int, limit_name: str) -> None:
    if count > limit:
        raise InvalidFieldError(field, f"{count} items is more than the limit of {limit} (limits.{limit_name})")


def check_requests(requests: Sequence[GenerationRequest], limits: Limits, max_model_len: int) -> None:
    for request in requests:
        if request.n > limits.max_n:
            raise InvalidFieldError("n", f"{request.n} is more than the limit of {limits.max_n}")
        if (request.temperature or 0) > limits.max_temperature:
            raise InvalidFieldError("temperature", f"{request.temperature} is above {limits.max_temperature}")
        if request.max_tokens is not None and request.max_tokens >= max_model_len:
            raise InvalidFieldError("max_tokens", f"{request.max_tokens} does not fit the context of {max_model_len}")
        check_count("stop", len(request.stop), limits.max_list, "max_list")
        size = len(request.prompt or "") + sum(len(str(m.get("content") or "")) for m in request.messages or [])
        if size > limits.max_prompt_chars:
            field = "messages" if request.kind == "chat" else "prompt"
            raise InvalidFieldError(field, f"{size} characters is more than the limit of {limits.max_prompt_chars}")
