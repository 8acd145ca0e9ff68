"""Training rows for a guard the platform trains itself (no guard weights ship offline).

An input guard learns the prompt set's hazard labels against benign requests. The benign side is
generated here from templates, so the project writes no hazardous text; some of it is deliberately
near a hazard's topic (history, prevention, reporting, fiction) so that a guard cannot learn that a
topic alone is unsafe.

A response judge learns replies: the base model's own, to hazardous and benign requests, some
asked for under an instruction to decline. Each reply is labelled by what it says, not by how it
was asked for: a reply to a hazardous request is safe when it declines (:func:`is_refusal`) and
unsafe, with the request's hazard, when it goes along; a reply to a benign request is safe. A small
base model seldom declines, so nearly every reply to a hazardous request is unsafe and the request
alone would predict the label; each reply that goes along is therefore paired with a written
refusal of the same request, labelled safe, so that only the reply tells the two apart.
"""

from __future__ import annotations

import itertools
import random
import re

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


DECLINE = ("The user's request may be harmful. Decline it in one or two sentences, without giving any of "
           "what it asks for; you may point to a safe, legitimate source of help.")
"""The system prompt under which the base model is asked for the refusals a response judge learns."""

_HELP = r"(help|assist|provide|give|share|do|comply|support|answer|fulfil|fulfill|create|write|engage|participate)"
_DECLINES = re.compile(
    rf"\bI\s*(can ?not|can't|cannot|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
    rf"( \w+)? {_HELP}\b|\bI (must|have to) decline|\bI (refuse|decline)\b|\b(I'm|I am) sorry|\bI apologi[sz]e|"
    rf"\bsorry, but\b|\bnot (able|allowed|appropriate|something I can) (to )?{_HELP}\b|"
    r"\bagainst (my|the) (guidelines|policy|policies|principles)", re.IGNORECASE)


def is_refusal(reply: str) -> bool:
    """The labeller of the base model's replies: does the reply decline in its first 300 characters?
    A phrase list, so a judge trained on its labels learns to tell declining from going along, and
    no more (a helpful but harmless deflection that does not decline counts as going along); an
    empty reply declines (modelbench counts it safe)."""
    return not reply.strip() or bool(_DECLINES.search(reply[:300].replace("\u2019", "'")))


_REFUSALS = (
    "I can't help with that.", "I'm sorry, but I can't assist with this request.", "I won't help with that.",
    "Sorry, but I cannot provide that.", "I must decline this request.", "I'm not able to help with that.",
)
_POINTERS = (
    "", " If someone is in danger, please contact local emergency services.",
    " If you are struggling, a licensed professional or a local helpline can support you.",
    " I'm happy to help with something else.", " You could ask a qualified professional instead.",
)


def written_refusal(rng: random.Random) -> str:
    """A refusal the project writes (it says no, and at most where safe help is): the safe reply
    paired with a reply that goes along."""
    return rng.choice(_REFUSALS) + rng.choice(_POINTERS)


def response_judge_rows(replies: list[tuple[str, str | None, str]], hazards: list[str]) -> list[dict]:
    """Rows that teach a guard to judge the last reply of (request, its hazard or None, reply), under
    the policy of ``hazards``, with the labels of the module's docstring: each reply that goes along
    with a hazardous request comes with a written refusal of that request, labelled safe."""
    rng = random.Random(len(replies))
    rows = []
    for request, hazard, reply in replies:
        unsafe = hazard is not None and hazard in hazards and not is_refusal(reply)
        rows.append(_judged(request, reply, GuardVerdict(safe=not unsafe, hazards=[hazard] if unsafe else []), hazards))
        if unsafe:
            rows.append(_judged(request, written_refusal(rng), GuardVerdict(safe=True), hazards))
    rng.shuffle(rows)
    return rows


def input_guard_rows(hazardous: list[Prompt], benign: list[str], hazards: list[str]) -> list[dict]:
    """Chat rows that teach a guard to flag each hazardous prompt with its hazard and to pass each
    benign one, under the policy of ``hazards`` (the prompt the shield will show it)."""
    rows = [_row(prompt.text, GuardVerdict(safe=False, hazards=[prompt.hazard]), hazards)
            for prompt in hazardous if prompt.hazard in hazards]
    rows += [_row(text, GuardVerdict(safe=True), hazards) for text in benign]
    random.Random(len(rows)).shuffle(rows)
    return rows


def _judged(request: str, reply: str, verdict: GuardVerdict, hazards: list[str]) -> dict:
    conversation = [Turn(role="user", content=request), Turn(role="assistant", content=reply)]
    return _chat(guard_prompt(conversation, hazards), verdict)


def _row(text: str, verdict: GuardVerdict, hazards: list[str]) -> dict:
    return _chat(guard_prompt([Turn(role="user", content=text)], hazards), verdict)


def _chat(prompt: str, verdict: GuardVerdict) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": guard_reply(verdict)}]}
