"""Typed records that cross the queue: what a client asks, what a worker leases, what it sends back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]


class GenerationRequest(BaseModel):
    """One generation, normalized from an OpenAI chat or completion call or a bulk prompt."""

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
    stream: bool = False


RequestId = str
"""``<seq>-<secret>``: the queue's order number and 96 random bits, so an id cannot be guessed."""


class WorkItem(BaseModel):
    """A leased request, as a worker receives it. ``lease`` names this hand-over: a result or a
    delta is accepted only with the lease the request is held under now."""

    id: RequestId
    lease: str
    request: GenerationRequest


class RequestError(BaseModel):
    """A request the engine refused (e.g. longer than the context): reported to the client as a 4xx."""

    status: int = 400
    field: str | None = None
    message: str


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int


class GenerationResult(BaseModel):
    choices: list[Choice] = Field(default_factory=list)
    prompt_tokens: int = 0
    error: RequestError | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


class ChoiceDelta(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = None


class WorkEvent(BaseModel):
    """What a worker reports for one request under its lease: streamed text so far, or the final result."""

    id: RequestId
    lease: str
    deltas: list[ChoiceDelta] = Field(default_factory=list)
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
