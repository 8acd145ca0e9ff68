"""What a ScalarLM shield is: a guard model, the hazards it enforces, and the turns it checks; and
which conversations a shield call asks its guard about."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator

from ..errors import InvalidFieldError
from ..strict import StrictModel
from .guard import Turn
from .hazards import HAZARDS, hazards_of

REFUSAL = "I can't answer that. Can I help with something else?"  # Llama Stack's own shields' message


class ShieldParams(StrictModel):
    """A shield's ``params``. The guard model is the shield's ``provider_shield_id`` (as for Llama
    Stack's own Llama Guard shield) unless ``guard_model`` names another; ``moderations`` finds a
    shield by its ``provider_shield_id``."""

    guard_model: str | None = Field(None, description="a served model: base, trained job id, or 'latest'")
    hazards: list[str] = Field(default_factory=lambda: list(HAZARDS), description="AILuminate hazards enforced; [] = all")
    check: Literal["user", "assistant", "both"] = Field("both", description="which turns of a conversation")

    @field_validator("hazards")
    @classmethod
    def _known(cls, hazards: list[str]) -> list[str]:
        return hazards_of(hazards)


def parse_params(params: dict | None) -> ShieldParams:
    try:
        return ShieldParams.model_validate(params or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(["params", *map(str, error["loc"])])
        raise InvalidFieldError(field, error["msg"]) from None


def conversations(messages: list[dict], check: str) -> list[list[Turn]]:
    """The conversations to judge: up to the last user turn, the last assistant turn, or both, as
    ``check`` says (none when the call has no such turn). Llama Guard's conversation holds only
    user and agent turns: system, developer and tool messages are not shown to the guard."""
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        if message["role"] in ("user", "assistant"):
            turns.append(Turn(role=message["role"], content=_text(message.get("content"), f"messages.{index}.content")))
    roles = ("user", "assistant") if check == "both" else (check,)
    ends = [max((i for i, turn in enumerate(turns) if turn.role == role), default=None) for role in roles]
    return [turns[:end + 1] for end in ends if end is not None]


def _text(content: str | list | None, field: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidFieldError(field, f"a shield checks text; a {part.get('type')!r} part cannot be checked")
        texts.append(part["text"])
    return "\n".join(texts)
