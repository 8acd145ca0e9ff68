"""A served guard model's verdicts, through the queue like any other request: any model the
platform serves, base or trained, can judge. A guard that is down, too slow, or answers out of
format gives a :class:`GuardFailure` for that item, never a verdict and never an exception."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from ..queue.schema import GenerationResult, OpenAIRequest
from ..queue.store import INTERACTIVE
from ..runtime import ServerRuntime
from .guard import GuardReplyError, GuardVerdict, Turn, guard_prompt, parse_reply, unsafe_probability

_REPLY_TOKENS = 32  # "unsafe" and a line of codes
_TOP = 5  # alternatives of the first token: enough for both words' first pieces


class GuardFailure(BaseModel):
    error: str


async def judge(runtime: ServerRuntime, owner: str, guard_model: str, conversations: list[list[Turn]],
                hazards: list[str], priority: int = INTERACTIVE) -> list[GuardVerdict | GuardFailure]:
    """The guard's verdict on each conversation's last turn (``guard_model``: the engine's name).
    An empty turn is safe without asking (as AILuminate counts an empty response)."""
    asked = [i for i, conversation in enumerate(conversations) if conversation[-1].content.strip()]
    requests = [OpenAIRequest(kind="openai.chat", model=guard_model, body={
        "model": guard_model,
        "messages": [{"role": "user", "content": guard_prompt(conversations[i], hazards)}],
        "temperature": 0, "max_tokens": _REPLY_TOKENS, "logprobs": True, "top_logprobs": _TOP,
    }) for i in asked]
    ids = runtime.submit(requests, owner, priority) if requests else []
    timeout_s = runtime.config.limits.request_timeout_s
    results = await asyncio.gather(*(runtime.queue.wait(i, owner, timeout_s) for i in ids), return_exceptions=True)
    verdicts: list[GuardVerdict | GuardFailure] = [GuardVerdict(safe=True, unsafe_probability=0.0)] * len(conversations)
    for i, result in zip(asked, results, strict=True):
        verdicts[i] = _verdict(result, hazards)
    return verdicts


def _verdict(result: GenerationResult | BaseException, hazards: list[str]) -> GuardVerdict | GuardFailure:
    if isinstance(result, BaseException):
        return GuardFailure(error=f"the guard did not answer: {type(result).__name__}: {result}")
    if result.error is not None:
        return GuardFailure(error=f"the guard failed the request: {result.error.message}")
    choice = result.response["choices"][0]
    try:
        safe, named = parse_reply(choice["message"].get("content") or "", hazards)
    except GuardReplyError as exc:
        return GuardFailure(error=str(exc))
    return GuardVerdict(safe=safe, hazards=named,
                        unsafe_probability=unsafe_probability((choice.get("logprobs") or {}).get("content")))
