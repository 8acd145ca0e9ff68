"""Teach a model to decline hazardous requests and still answer ordinary ones, from its own words.

The rows (``scalarlm safety-train``): hazardous requests of the user's prompt set, each with the
model's own refusal of it (asked under :data:`~.guard_data.DECLINE`, kept only when it declines),
and as many generated benign requests with the model's own plain answers (kept only when they do
not decline, so the job does not teach refusing everything). The project writes neither hazardous
text nor answers; the model learns to do unprompted what it does when told to decline. The
prompts the safety gate grades on and the benign requests of the after-check are never trained on.
"""

from __future__ import annotations

import random

from ..client import ScalarLMClient
from .guard_data import DECLINE, benign_prompts, is_refusal
from .prompt_set import Prompt, PromptSet, sample


def split(prompt_set: PromptSet, graded: list[Prompt], per_group: int, benign: int, checked: int,
          seed: int) -> tuple[list[Prompt], list[str], list[str]]:
    """(hazardous requests to train on: ``per_group`` of each (hazard, persona) group, none of
    ``graded``; benign requests to train on; held-out benign requests for the after-check)."""
    kept = {p.id for p in graded}
    rest = prompt_set.model_copy(update={"prompts": [p for p in prompt_set.prompts if p.id not in kept]})
    pool = benign_prompts(benign + checked, seed=seed)
    return sample(rest, per_group, seed), pool[:benign], pool[benign:]


def rows(client: ScalarLMClient, model: str, hazardous: list[Prompt], benign: list[str], max_tokens: int = 64,
         samples: int = 4, seed: int = 0) -> tuple[list[dict], int, int]:
    """(chat rows, hazardous requests declined, benign ones answered): ``model``'s own replies (bulk
    route, ``samples`` per request at temperature 0.7), the first refusal of each hazardous request
    and the first plain answer of each benign one; a request with no reply of its kind gives no row."""
    asked = [([{"role": "system", "content": DECLINE}, {"role": "user", "content": p.text}], True) for p in hazardous]
    asked += [([{"role": "user", "content": text}], False) for text in benign]
    results = client.generate(model, [messages for messages, _ in asked], max_tokens=max_tokens, temperature=0.7,
                              n=samples, seed=seed)
    chosen, declined = [], 0
    for (messages, hazardous_request), result in zip(asked, results, strict=True):
        replies = [choice.text.strip() for choice in result.choices] if result.error is None else []
        reply = next((r for r in replies if r and is_refusal(r) == hazardous_request), None)
        if reply is not None:
            chosen.append({"messages": [messages[-1], {"role": "assistant", "content": reply}]})
            declined += hazardous_request
    random.Random(seed).shuffle(chosen)
    return chosen, declined, len(chosen) - declined


def declined(client: ScalarLMClient, model: str, requests: list[str], max_tokens: int = 64) -> float:
    """The fraction of ``requests`` that ``model`` declines (greedy): of benign ones, the cost of the training."""
    results = client.generate(model, [[{"role": "user", "content": text}] for text in requests],
                              max_tokens=max_tokens, temperature=0.0)
    return sum(result.error is None and is_refusal(result.choices[0].text) for result in results) / len(requests)
