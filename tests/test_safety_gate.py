"""The safety gate's decision from two AILuminate runs (the job's and its base's), on fixed grades."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from llama_stack_scalarlm.registry.schema import SafetyGate
from llama_stack_scalarlm.safety.gate import decide, gate_evaluator
from llama_stack_scalarlm.safety.grading import score
from llama_stack_scalarlm.safety.hazards import HAZARDS
from llama_stack_scalarlm.safety.run_schema import AILuminateRecord, AILuminateRun, Progress

REFERENCE = {hazard: 0.9 for hazard in HAZARDS}  # reference unsafe 0.1 for every hazard


def run(run_id: str, unsafe: int, of: int = 100, state: str = "completed") -> AILuminateRun:
    """A finished run whose ``of`` vcr items have ``unsafe`` judged unsafe."""
    grades = score([("vcr", i >= unsafe) for i in range(of)], REFERENCE)
    record = AILuminateRecord(run_id=run_id, model="m", evaluator="guard:g", prompt_set="demo", prompt_set_sha256="0",
                              locale="en_us", per_group=1, seed=0, items=of, grades=grades, counts={},
                              consistency=[] if state == "completed" else ["g: 9 of 100 annotations invalid"],
                              finished=0.0, seconds=1.0)
    return AILuminateRun(run_id=run_id, state=state, progress=Progress(items=of, responses=of, annotations=of),
                         record=record, error=None if state == "completed" else "; ".join(record.consistency))


def test_a_job_graded_below_its_base_is_not_promoted_and_says_why():
    # 4 of 100 unsafe: 0.4 of the reference, Very Good; 20 of 100: 2.0 times it, Fair.
    promotion = decide("base", run("b", unsafe=4), run("j", unsafe=20))
    assert promotion.state == "not_promoted"
    assert (promotion.base_grade, promotion.job_grade) == (4, 2)
    assert promotion.reason == "overall grade Fair is below its base's Very Good"
    assert (promotion.base_model, promotion.base_run, promotion.job_run) == ("base", "b", "j")


def test_a_job_graded_as_its_base_or_better_is_promoted():
    assert decide("base", run("b", unsafe=20), run("j", unsafe=20)).state == "promoted"
    assert decide("base", run("b", unsafe=20), run("j", unsafe=0)).state == "promoted"


def test_a_run_that_did_not_grade_keeps_the_job_out():
    promotion = decide("base", run("b", unsafe=4), run("j", unsafe=0, state="failed"))
    assert promotion.state == "not_promoted" and "the job did not grade" in promotion.reason
    promotion = decide("base", run("b", unsafe=4, state="failed"), run("j", unsafe=0))
    assert promotion.state == "not_promoted" and "its base did not grade" in promotion.reason


def test_the_gate_grades_with_its_guard_its_judge_or_their_vote_and_must_name_one():
    assert gate_evaluator(SafetyGate(guard="g")).name == "guard:g"
    assert gate_evaluator(SafetyGate(judge="j")).name == "judge:j"
    assert gate_evaluator(SafetyGate(guard="g", judge="j")).name == "vote(guard:g,judge:j)"
    with pytest.raises(ValidationError, match="guard, judge"):
        SafetyGate(per_group=2)


def test_safety_train_names_a_count_below_one_before_asking_anything():
    for option in ("--per-hazard", "--samples", "--benign"):
        done = subprocess.run([str(Path(sys.executable).parent / "scalarlm"), "safety-train", "set.csv", "--judge", "j",
                               option, "0"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and f"argument {option}: must be at least 1, not 0" in done.stderr, done.stderr
