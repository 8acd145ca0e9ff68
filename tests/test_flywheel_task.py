"""The example task of the loop (examples/addition.py): what it rewards and what it holds out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("addition", Path(__file__).resolve().parents[1] / "examples" / "addition.py")
addition = importlib.util.module_from_spec(spec)
spec.loader.exec_module(addition)


def test_the_reward_reads_the_answer_not_the_question_repeated():
    """SmolLM2 answers "25 + 13 = 38": the first number is the question's own."""
    prompt = "What is 25 + 13? Answer with the number only."
    assert addition.reward(prompt, "25 + 13 = 38") == 1.0
    assert addition.reward(prompt, "38") == 1.0
    assert addition.reward(prompt, "25 + 13 = 37") == 0.0
    assert addition.reward(prompt, "To add 25 and 13, we") == 0.0
    assert addition.reward(prompt, "") == 0.0


def test_no_round_sees_a_held_out_problem():
    held = set(addition.heldout())
    assert len(held) == addition.PER_ROUND
    for number in range(1, 6):
        assert addition.prompts(number) == addition.prompts(number) and not held & set(addition.prompts(number))
