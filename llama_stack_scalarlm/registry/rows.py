"""The shapes of a training row, one typed model for the server that checks an upload and the
trainer that renders it (no torch here).

- ``{"input": str, "output": str}``: one user turn and one assistant turn;
- ``{"messages": [...], "tools": [...]}``: a conversation in OpenAI's chat shape, ``tools``
  optional; assistant messages may carry ``tool_calls`` and ``tool`` messages their results;
- ``{"prompt", "chosen", "rejected"}``: a DPO pair, each a string or a list of messages;
- ``{"prompt" (or "messages"), "completions": [{"text", "reward", "logprobs"?}, ...]}``: scored
  samples for GRPO, at least two per prompt; ``logprobs`` are the sampling policy's, one per token
  of ``text`` (as the bulk route returns them).

Nothing a row carries is ignored: an unknown key is an error naming it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..strict import StrictModel


class RowError(ValueError):
    """A row that is not one of the shapes above; the message starts with the field's dotted path."""


class FunctionCall(StrictModel):
    name: str = Field(min_length=1)
    arguments: dict[str, Any]

    @field_validator("arguments", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """OpenAI sends arguments as a JSON string; a chat template gets them as an object, as vLLM hands them."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("a JSON object (or its text) is required") from None
        return value


class ToolCall(StrictModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(StrictModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1)
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls: only an assistant message calls tools")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("tool_call_id: only a tool message answers a call")
        if self.content is None and self.tool_calls is None:
            raise ValueError("content: a string is required")
        return self

    def for_template(self) -> dict[str, Any]:
        """The message as vLLM hands it to a chat template (content "" when a call has none)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls is not None:
            out["tool_calls"] = [call.model_dump(exclude_none=True) for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDefinition(StrictModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(StrictModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition

    def for_template(self) -> dict[str, Any]:
        """The tool as vLLM dumps a request's tools for the chat template, so training renders the
        same system text serving does (description and parameters even when null, strict only when set)."""
        function = self.function.model_dump(exclude={"strict"} if self.function.strict is None else set())
        return {"type": "function", "function": function}


class TextRow(StrictModel):
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)


class ChatRow(StrictModel):
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _trains_something(self) -> ChatRow:
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("messages: no assistant message to train on")
        return self


def _strings_as_turns(row: dict, roles: dict[str, str]) -> dict:
    """A copy of ``row`` where each key of ``roles`` given as a non-empty string is one turn of that role."""
    row = dict(row)
    for key, role in roles.items():
        if isinstance(row.get(key), str) and row[key]:
            row[key] = [{"role": role, "content": row[key]}]
    return row


class PreferenceRow(StrictModel):
    prompt: list[Message] = Field(min_length=1)
    chosen: list[Message] = Field(min_length=1)
    rejected: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _strings_are_turns(cls, row: Any) -> Any:
        if isinstance(row, dict):
            row = _strings_as_turns(row, {"prompt": "user", "chosen": "assistant", "rejected": "assistant"})
        return row


class Completion(StrictModel):
    text: str = Field(min_length=1)
    reward: float = Field(allow_inf_nan=False)
    logprobs: list[Annotated[float, Field(le=0, allow_inf_nan=False)]] | None = Field(None, min_length=1)


class ScoredRow(StrictModel):
    prompt: list[Message] = Field(min_length=1)
    completions: list[Completion]
    tools: list[Tool] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _prompt(cls, row: Any) -> Any:
        if isinstance(row, dict):
            if "messages" in row and "prompt" not in row:
                row = {("prompt" if k == "messages" else k): v for k, v in row.items()}
            row = _strings_as_turns(row, {"prompt": "user"})
        return row

    @field_validator("completions")
    @classmethod
    def _a_group(cls, completions: list[Completion]) -> list[Completion]:
        if len(completions) < 2:
            raise ValueError("the group-relative method needs at least 2 completions of each prompt")
        return completions


Row = TextRow | ChatRow | PreferenceRow | ScoredRow


def parse_row(row: Any, method: str) -> Row:
    """The row as its typed model; :class:`RowError` ("field.path: problem") when it is none of them."""
    if not isinstance(row, dict):
        raise RowError("expected a JSON object")
    model = (PreferenceRow if method == "dpo" else ScoredRow if method == "grpo"
             else ChatRow if "messages" in row else TextRow)
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        raise RowError(f"{where}: {message}" if where else message) from None
