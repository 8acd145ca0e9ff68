"""An ``Agent`` whose turns pass shields: llama-stack-client's ``Agent`` takes no guardrails, the
Responses API it runs on does (``guardrails=[shield_id]``: the stack moderates the turn's input
context once and its output as it streams, and a flagged turn ends in a refusal). This passes the
agent's shields on every response the Agent creates; all else is the Agent's own."""

from __future__ import annotations

from typing import Any

from llama_stack_client import Agent


class _GuardedResponses:
    def __init__(self, responses: Any, guardrails: list[str]):
        self._responses, self._guardrails = responses, guardrails

    def create(self, **kwargs: Any) -> Any:
        return self._responses.create(**kwargs, guardrails=self._guardrails)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._responses, name)


class _GuardedClient:
    def __init__(self, client: Any, guardrails: list[str]):
        self._client = client
        self.responses = _GuardedResponses(client.responses, guardrails)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class GuardedAgent(Agent):
    """``Agent(client, ..., guardrails=["my-shield"])``: the shields (their ids) guard each turn."""

    def __init__(self, client: Any, *, guardrails: list[str], **agent: Any):
        if not guardrails:
            raise ValueError("guardrails: name at least one shield")
        super().__init__(_GuardedClient(client, list(guardrails)), **agent)
