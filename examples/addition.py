"""A verifiable task for the flywheel: two-digit addition (``scalarlm loop examples/addition.py``).

Each round gets 64 new problems (seeded by the round), the held-out set is 64 problems none of the
rounds sees, and a completion earns 1 when the last number in it is the sum: SmolLM2 answers
"25 + 13 = 38", so the first number is the question's (greedy, it gets 6 of 64 held-out problems
right by this rule with 16 tokens, 0 by the first number's).
"""

import random
import re

PER_ROUND = 64
_HELDOUT_SEED = 10_000


def _problems(seed: int, count: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(count)]


def _prompt(a: int, b: int) -> str:
    return f"What is {a} + {b}? Answer with the number only."


def prompts(round_number: int) -> list[str]:
    held = set(_problems(_HELDOUT_SEED, PER_ROUND))
    return [_prompt(a, b) for a, b in _problems(round_number, PER_ROUND) if (a, b) not in held]


def heldout() -> list[str]:
    return [_prompt(a, b) for a, b in _problems(_HELDOUT_SEED, PER_ROUND)]


def reward(prompt: str, completion: str) -> float:
    a, b = map(int, re.findall(r"\d+", prompt)[:2])
    numbers = re.findall(r"-?\d+", completion)
    return float(bool(numbers) and int(numbers[-1]) == a + b)
