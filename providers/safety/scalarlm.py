"""Llama Stack's safety API over ScalarLM's guard verdicts (``llama_stack_scalarlm.safety``)."""

from __future__ import annotations

import uuid

from llama_stack_api import (
    GetShieldRequest,
    ModerationObject,
    ModerationObjectResults,
    RunModerationRequest,
    RunShieldRequest,
    RunShieldResponse,
    SafetyViolation,
    Shield,
    ViolationLevel,
)

from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.runtime import ServerRuntime
from llama_stack_scalarlm.safety.guard import GuardVerdict, Turn
from llama_stack_scalarlm.safety.judge import GuardFailure, judge
from llama_stack_scalarlm.safety.shields import REFUSAL, ShieldParams, conversations, parse_params

from ..principal import principal

_UNCHECKED = "The safety check failed, so this was not let through."


class ScalarLMSafetyProvider:
    def __init__(self, config: ScalarLMConfig):
        self.runtime = ServerRuntime.get(ScalarLMConfig.load(config.model_dump(exclude_unset=True)))
        self.shield_store = None

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def register_shield(self, shield: Shield) -> None:
        params = parse_params(shield.params)  # bad params: a 400 naming the field, and nothing registered
        for other in await self._ours(shield.provider_resource_id):
            if other.identifier != shield.identifier and parse_params(other.params) != params:
                # moderations find a shield by this id: two with other params would make it a guess
                raise InvalidFieldError("provider_shield_id", f"{shield.provider_resource_id!r} already names shield "
                                        f"{other.identifier!r}, with other params: give this shield an id of its own "
                                        "and name its guard in params.guard_model")

    async def unregister_shield(self, identifier: str) -> None:
        return None

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        shield = await self.shield_store.get_shield(GetShieldRequest(identifier=request.shield_id))
        params = parse_params(shield.params)
        messages = [message.model_dump(mode="json") for message in request.messages]
        asked = conversations(messages, params.check)
        verdicts = await self._judge(shield, params, asked)
        failures = [verdict.error for verdict in verdicts if isinstance(verdict, GuardFailure)]
        if failures:  # an unchecked turn is not a safe one
            return RunShieldResponse(violation=SafetyViolation(
                violation_level=ViolationLevel.ERROR, user_message=_UNCHECKED,
                metadata={"guard_failed": failures, "guard_model": self._guard(shield, params)}))
        flagged = [(turns[-1].role, verdict) for turns, verdict in zip(asked, verdicts, strict=True) if not verdict.safe]
        if not flagged:
            return RunShieldResponse(violation=None)
        hazards = list(dict.fromkeys(hazard for _, verdict in flagged for hazard in verdict.hazards))
        return RunShieldResponse(violation=SafetyViolation(
            violation_level=ViolationLevel.ERROR, user_message=REFUSAL,
            metadata={"hazards": hazards, "roles": [role for role, _ in flagged],
                      "unsafe_probability": max((v.unsafe_probability or 0.0) for _, v in flagged),
                      "guard_model": self._guard(shield, params)}))

    async def run_moderation(self, request: RunModerationRequest) -> ModerationObject:
        """One result per input: each judged alone, as a user turn (or as an agent's reply when the
        shield checks only assistant turns). Scores: see :func:`_scores`."""
        shield = await self._shield_of_model(request.model)
        params = parse_params(shield.params)
        inputs = [request.input] if isinstance(request.input, str) else request.input
        role = "assistant" if params.check == "assistant" else "user"
        asked = [[Turn(role=role, content=text)] for text in inputs]
        verdicts = await self._judge(shield, params, asked)
        return ModerationObject(id=f"modr-{uuid.uuid4().hex}", model=request.model,
                                results=[_result(verdict, params.hazards)
                                         for verdict in verdicts])

    # -- helpers ----------------------------------------------------------------------------------

    async def _judge(self, shield: Shield, params: ShieldParams, asked: list[list[Turn]]):
        model = self.runtime.catalogue.resolve(self._guard(shield, params))
        return await judge(self.runtime, principal(), model, asked, params.hazards)

    @staticmethod
    def _guard(shield: Shield, params: ShieldParams) -> str:
        return params.guard_model or shield.provider_resource_id

    async def _ours(self, model: str | None) -> list[Shield]:
        """This provider's shields whose provider_shield_id is ``model`` (all alike: ``register_shield``)."""
        return [shield for shield in (await self.shield_store.list_shields()).data
                if shield.provider_id == self.__provider_id__ and shield.provider_resource_id == model]

    async def _shield_of_model(self, model: str | None) -> Shield:
        ours = await self._ours(model)
        if not ours:
            raise InvalidFieldError("model", f"no ScalarLM shield judges with {model!r}")
        return ours[0]


def _result(verdict: GuardVerdict | GuardFailure, hazards: list[str]) -> ModerationObjectResults:
    """A category per hazard. Its score is the guard's probability of "unsafe" (its first token's
    log-probabilities) for the hazards it names, 0 for the others; a guard failure is flagged with
    no category, and its reason in ``metadata``: unchecked is never safe."""
    if isinstance(verdict, GuardFailure):
        return ModerationObjectResults(flagged=True, categories={h: False for h in hazards}, category_scores={},
                                       user_message=_UNCHECKED, metadata={"guard_failed": verdict.error})
    p = verdict.unsafe_probability
    return ModerationObjectResults(
        flagged=not verdict.safe,
        categories={h: h in verdict.hazards for h in hazards},
        category_scores={h: (p or 0.0) if h in verdict.hazards else 0.0 for h in hazards},
        category_applied_input_types={h: ["text"] for h in verdict.hazards},
        user_message=REFUSAL if not verdict.safe else None,
        metadata={"unsafe_probability": p},
    )
