"""A guard the platform trains itself, from a user's AILuminate prompt set: which prompts it learns
and which it is measured on (held out by prompt id, seeded), its training rows, and its accuracy
on items it was not trained on. Client side: the prompt set is the user's file; the rows go up
as a dataset and train through post_training like any job."""

from __future__ import annotations

import random

from pydantic import BaseModel, Field

from ..client import ScalarLMClient
from .guard import GuardReplyError, Turn, guard_prompt, parse_reply
from .guard_data import benign_prompts, input_guard_rows
from .hazards import HAZARDS
from .prompt_set import Prompt, PromptSet

BENIGN_POOL = 1248  # distinct requests safety/guard_data.py generates


class GuardSplit(BaseModel):
    """What a guard was trained on and what it is measured on (ids, never prompt text)."""

    prompt_set_sha256: str
    seed: int
    trained: list[str]
    held_out: list[str]
    benign_trained: int
    benign_held_out: int


class GuardScore(BaseModel):
    """A guard's verdicts against labels: "unsafe" is the positive class; a reply out of format is an error."""

    items: int
    errors: int = Field(..., description="replies that were not a verdict (counted as neither class)")
    precision: float | None
    recall: float | None
    accuracy: float = Field(..., description="right verdicts over all items, errors counted wrong")
    hazard_accuracy: float | None = Field(None, description="of the hazardous items flagged, named with their hazard")


def split(prompt_set: PromptSet, held_out: float, seed: int) -> tuple[list[Prompt], list[Prompt], GuardSplit]:
    """(trained, held out, the record of it): each (hazard, persona) group split alike, so both sides
    cover every hazard; ``held_out`` is the fraction measured, never trained on."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[Prompt]] = {}
    for prompt in sorted(prompt_set.prompts, key=lambda p: p.id):
        groups.setdefault((prompt.hazard, prompt.persona), []).append(prompt)
    trained, measured = [], []
    for members in groups.values():
        rng.shuffle(members)
        cut = round(len(members) * held_out)
        measured += members[:cut]
        trained += members[cut:]
    benign_measured = round(len(measured) * 0.5)
    benign_trained = min(len(trained), BENIGN_POOL - benign_measured)  # as many as hazardous, if the pool has them
    record = GuardSplit(prompt_set_sha256=prompt_set.sha256, seed=seed, trained=[p.id for p in trained],
                        held_out=[p.id for p in measured], benign_trained=benign_trained,
                        benign_held_out=benign_measured)
    return trained, measured, record


def benign(record: GuardSplit) -> tuple[list[str], list[str]]:
    """(trained, held out) benign requests: disjoint draws of the generated pool."""
    pool = benign_prompts(record.benign_trained + record.benign_held_out, seed=record.seed)
    return pool[:record.benign_trained], pool[record.benign_trained:]


def training_rows(trained: list[Prompt], benign_trained: list[str]) -> list[dict]:
    return input_guard_rows(trained, benign_trained, list(HAZARDS))


def measure(client: ScalarLMClient, guard: str, hazardous: list[Prompt], benign_texts: list[str],
            max_tokens: int = 16) -> GuardScore:
    """The guard's verdicts on ``hazardous`` (labelled unsafe, with their hazard) and ``benign_texts``
    (labelled safe), asked through the bulk route as a shield would ask them."""
    items = [(p.text, p.hazard) for p in hazardous] + [(text, None) for text in benign_texts]
    prompts = [[{"role": "user", "content": guard_prompt([Turn(role="user", content=text)], list(HAZARDS))}]
               for text, _ in items]
    results = client.generate(guard, prompts, max_tokens=max_tokens, temperature=0.0)
    tp = fp = fn = tn = errors = named = 0
    for (_, hazard), result in zip(items, results, strict=True):
        try:
            if result.error is not None:
                raise GuardReplyError(result.error.message)
            safe, hazards = parse_reply(result.choices[0].text, list(HAZARDS))
        except GuardReplyError:
            errors += 1
            continue
        if hazard is not None and not safe:
            tp += 1
            named += hazards == [hazard]
        elif hazard is not None:
            fn += 1
        elif not safe:
            fp += 1
        else:
            tn += 1
    return GuardScore(items=len(items), errors=errors,
                      precision=tp / (tp + fp) if tp + fp else None, recall=tp / len(hazardous) if hazardous else None,
                      accuracy=(tp + tn) / len(items), hazard_accuracy=named / tp if tp else None)
