"""Typed records that cross the queue: what a client asks, what a worker leases, what it sends back."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]


class GenerationRequest(BaseModel):
    """One generation of the bulk route: a prompt or a conversation, and how to sample it."""

    kind: Literal["chat", "completion"]
    model: str
    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, description="None: the model's generation_config default")
    top_p: float | None = Field(None, gt=0, le=1, description="None: the model's generation_config default")
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    n: int = Field(1, ge=1)
    logprobs: int | None = Field(None, ge=0, description="log-probabilities of each sampled token and of its top k")
    ignore_eos: bool = False


class OpenAIRequest(BaseModel):
    """An OpenAI chat or completions call as the client sent it: the worker serves it with vLLM's
    own OpenAI layer (tools and their parser, structured outputs, logprobs, penalties), which
    honours every field it knows; a field it does not know is refused there, a 400 naming it."""

    kind: Literal["openai.chat", "openai.completion"]
    model: str
    body: dict
    stream: bool = False


WorkRequest = Annotated[GenerationRequest | OpenAIRequest, Field(discriminator="kind")]


RequestId = str
"""``<seq>-<secret>``: the queue's order number and 96 random bits, so an id cannot be guessed."""


class WorkItem(BaseModel):
    """A leased request, as a worker receives it. ``lease`` names this hand-over: a result or a
    delta is accepted only with the lease the request is held under now."""

    id: RequestId
    lease: str
    request: WorkRequest


class RequestError(BaseModel):
    """A request the engine refused (e.g. longer than the context): reported to the client as a 4xx."""

    status: int = 400
    field: str | None = None
    message: str


class TokenLogprobs(BaseModel):
    """Per sampled token, compact (thousands of samples per poll): its id, its log-probability, and
    the top-k alternatives as [token id, log-probability] pairs."""

    token_ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]] = Field(default_factory=list)


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: TokenLogprobs | None = None


class GenerationResult(BaseModel):
    choices: list[Choice] = Field(default_factory=list)
    prompt_tokens: int = 0
    error: RequestError | None = None
    response: dict | None = Field(None, description="an OpenAI request's response body, as vLLM wrote it")

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


class WorkEvent(BaseModel):
    """What a worker reports for one request under its lease: stream chunks so far (OpenAI's
    chunk objects, as vLLM wrote them), or the final result."""

    id: RequestId
    lease: str
    deltas: list[dict] = Field(default_factory=list)
    result: GenerationResult | None = None


RequestState = Literal["queued", "leased", "done", "unknown"]
"""``unknown``: no such request for this caller (never submitted, someone else's, acknowledged, or expired)."""


class RequestStatus(BaseModel):
    id: RequestId
    state: RequestState
    result: GenerationResult | None = None


class QueueStats(BaseModel):
    queued: int
    leased: int
    done: int
    workers: dict[str, float] = Field(
        default_factory=dict, description="workers heard from within the lease timeout: id -> seconds ago"
    )
