"""What crosses the wire for an AILuminate run: the request, its progress, its record."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from ..strict import StrictModel
from .grading import Grades
from .hazards import HAZARDS, hazards_of

OFFICIAL_NOTE = ("Only MLCommons' official evaluator gives official AILuminate grades; these grades come from the "
                 "evaluator named here.")


class GuardEvaluator(StrictModel):
    """A Llama Guard-format guard judging each (prompt, response) pair: the response is the turn judged."""

    type: Literal["guard"] = "guard"
    model: str = Field(..., description="a served guard model: base, trained job id or 'latest'")

    @property
    def name(self) -> str:
        return f"guard:{self.model}"


class JudgeEvaluator(StrictModel):
    """Any served model asked, in plain words, whether the reply to the request is safe."""

    type: Literal["judge"] = "judge"
    model: str = Field(..., description="a served model: base, trained job id or 'latest'")

    @property
    def name(self) -> str:
        return f"judge:{self.model}"


Member = Annotated[GuardEvaluator | JudgeEvaluator, Field(discriminator="type")]


class VoteEvaluator(StrictModel):
    """Several evaluators' votes, combined by MLCommons' ensemble rules (``safety/vote.py``)."""

    type: Literal["vote"] = "vote"
    evaluators: list[Member] = Field(..., min_length=2)

    @property
    def name(self) -> str:
        return "vote(" + ",".join(member.name for member in self.evaluators) + ")"


Evaluator = Annotated[GuardEvaluator | JudgeEvaluator | VoteEvaluator, Field(discriminator="type")]


def evaluator_of(guards: list[str], judges: list[str]) -> Evaluator:
    """The one evaluator named, or the vote of several (``--guard``/``--judge``, a safety gate)."""
    members = [GuardEvaluator(model=m) for m in guards] + [JudgeEvaluator(model=m) for m in judges]
    if not members:
        raise ValueError("no evaluator named: a guard or a judge")
    return members[0] if len(members) == 1 else VoteEvaluator(evaluators=members)


class AILuminateRunRequest(StrictModel):
    model: str = Field(..., description="the model graded: a base model or a trained job id")
    evaluator: Evaluator
    prompt_set: Literal["demo", "practice", "official"] = "demo"
    locale: str = Field("en_us", description="en_us, fr_fr or zh_cn (the demo set: en_us, fr_fr)")
    per_group: int | None = Field(None, ge=1, description="prompts per (hazard, persona); None: all")
    hazards: list[str] = Field(default_factory=lambda: list(HAZARDS), description="[] = all")
    seed: int = 0
    max_tokens: int = Field(256, ge=1, description="of each response")
    temperature: float = Field(0.01, ge=0, le=2, description="modelbench asks its systems at 0.01")

    @field_validator("hazards")
    @classmethod
    def _known(cls, hazards: list[str]) -> list[str]:
        return hazards_of(hazards)


class AILuminateBenchmark(StrictModel):
    """A Llama Stack benchmark's ``metadata`` (eval API): the prompt set and sample a run_eval uses;
    the evaluator here, or the run's ``scoring_params``."""

    prompt_set: Literal["demo", "practice", "official"] = "demo"
    locale: str = "en_us"
    per_group: int | None = Field(None, ge=1)
    hazards: list[str] = Field(default_factory=lambda: list(HAZARDS))
    seed: int = 0
    evaluator: Evaluator | None = None

    @field_validator("hazards")
    @classmethod
    def _known(cls, hazards: list[str]) -> list[str]:
        return hazards_of(hazards)


class Progress(BaseModel):
    items: int
    responses: int
    annotations: int


class HazardCounts(BaseModel):
    responses: int = 0
    empty_responses: int = 0
    response_errors: int = 0
    annotation_errors: int = 0


class AILuminateRecord(BaseModel):
    run_id: str
    model: str
    evaluator: str
    note: str = OFFICIAL_NOTE
    prompt_set: str
    prompt_set_sha256: str
    locale: str
    per_group: int | None
    seed: int
    items: int
    grades: Grades
    counts: dict[str, HazardCounts]
    consistency: list[str] = Field(..., description="problems that make the run unfit to grade (empty: consistent)")
    finished: float
    seconds: float


class AILuminateRun(BaseModel):
    run_id: str
    state: Literal["running", "completed", "failed", "cancelled"]
    progress: Progress
    error: str | None = None
    record: AILuminateRecord | None = None
