"""Training rows for a guard the platform trains itself (no guard weights ship offline).

An input guard learns the prompt set's hazard labels against benign requests. The benign side is
generated here from templates, so the project writes no hazardous text; some of it is deliberately
near a hazard's topic (history, prevention, reporting, fiction) so that a guard cannot learn that a
topic alone is unsafe.
"""

from __future__ import annotations

import itertools
import random

from .guard import GuardVerdict, Turn, guard_prompt, guard_reply
from .prompt_set import Prompt

_TEMPLATES = (
    "How do I {task}?", "Can you explain how to {task}?", "What is the best way to {task}?",
    "Give me three tips to {task}.", "I want to {task}. Where should I start?", "Is it hard to {task}?",
    "Write a short paragraph about {topic}.", "What is the history of {topic}?", "Summarize {topic} in two sentences.",
    "Tell me an interesting fact about {topic}.", "Why do people care about {topic}?", "Explain {topic} to a child.",
)
_TASKS = (
    "bake sourdough bread", "learn to swim", "plant tomatoes", "fix a flat bicycle tire", "write a cover letter",
    "train for a 10k run", "keep houseplants alive", "learn basic Spanish", "make a budget spreadsheet",
    "paint a room", "brew green tea", "clean a cast iron pan", "start a vegetable garden", "tune a guitar",
    "prepare for a job interview", "report a phishing email", "spot the warning signs of a stroke",
    "store medicine safely away from children", "set up two-factor authentication", "recognize a scam phone call",
    "talk to a friend who seems sad", "find a licensed therapist", "report a fire hazard to my landlord",
    "teach a dog to sit", "sort recycling", "organize a birthday party", "change a car's oil", "knit a scarf",
)
_TOPICS = (
    "the water cycle", "the Roman Empire", "photosynthesis", "jazz music", "the moon landing", "volcanoes",
    "the printing press", "honeybees", "the Olympic Games", "black holes", "the French Revolution",
    "coral reefs", "electric cars", "the history of the police", "how courts handle a murder trial",
    "why vaccines are tested", "fire safety in schools", "the Geneva Conventions", "a detective novel's plot",
    "the life of Marie Curie", "chess openings", "the Great Wall of China", "rainbows", "how elections are counted",
)


_OPENERS = ("", "Quick question: ", "Hi! ", "Please help: ")


def benign_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct everyday requests (at most every opener, template and filler: 1,248), in a seeded order."""
    pool = sorted({opener + template.format(task=task, topic=topic)
                   for opener, template, task, topic in itertools.product(_OPENERS, _TEMPLATES, _TASKS, _TOPICS)})
    if n > len(pool):
        raise ValueError(f"{n} benign requests asked for; the generator makes {len(pool)}")
    random.Random(seed).shuffle(pool)
    return pool[:n]


def input_guard_rows(hazardous: list[Prompt], benign: list[str], hazards: list[str]) -> list[dict]:
    """Chat rows that teach a guard to flag each hazardous prompt with its hazard and to pass each
    benign one, under the policy of ``hazards`` (the prompt the shield will show it)."""
    rows = [_row(prompt.text, GuardVerdict(safe=False, hazards=[prompt.hazard]), hazards)
            for prompt in hazardous if prompt.hazard in hazards]
    rows += [_row(text, GuardVerdict(safe=True), hazards) for text in benign]
    random.Random(len(rows)).shuffle(rows)
    return rows


def _row(text: str, verdict: GuardVerdict, hazards: list[str]) -> dict:
    return {"messages": [{"role": "user", "content": guard_prompt([Turn(role="user", content=text)], hazards)},
                         {"role": "assistant", "content": guard_reply(verdict)}]}
