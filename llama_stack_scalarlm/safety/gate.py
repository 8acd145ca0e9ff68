"""The safety gate on training jobs: a job that asked for it is graded on AILuminate against the
model it was trained from, on the same sample and by the same evaluator (the gate's guard, judge,
or their vote), once it completes; it becomes ``latest`` only if its overall grade is no lower.
The decision, with its reason and both runs, is in the job's status (``promotion``). Runs in the
server's event loop, like every benchmark run."""

from __future__ import annotations

import asyncio
import logging

from ..registry.schema import Promotion, SafetyGate
from ..runtime import ServerRuntime
from .benchmark import GATE_OWNER
from .grading import GRADE_NAMES
from .run_schema import AILuminateRun, AILuminateRunRequest, Evaluator, evaluator_of

log = logging.getLogger(__name__)

_SCAN_S = 2.0


class SafetyGateService:
    def __init__(self, runtime: ServerRuntime):
        self.runtime = runtime
        self.registry = runtime.catalogue.registry
        self._deciding: set[str] = set()

    async def run_forever(self) -> None:
        while True:
            try:
                # The registry is on the shared filesystem: read it off the server's event loop.
                for job_id in await asyncio.to_thread(self._due_jobs):
                    self._deciding.add(job_id)
                    asyncio.create_task(self._decide(job_id))
            except Exception:
                log.exception("the safety gate's scan failed")
            await asyncio.sleep(_SCAN_S)

    def _due_jobs(self) -> list[str]:
        deciding = set(self._deciding)
        return [job_id for job_id in self.registry.job_ids() if job_id not in deciding and self._due(job_id)]

    def _due(self, job_id: str) -> bool:
        promotion = self.registry.promotion(job_id)
        if promotion is not None and promotion.state != "pending":
            return False
        # Served first: a job that just completed is in the catalogue from its next scan.
        return (self.registry.job(job_id).hyperparameters.safety_gate is not None
                and self.registry.recorded_status(job_id).state == "COMPLETED"
                and job_id in self.runtime.catalogue.trained_models())

    async def _decide(self, job_id: str) -> None:
        try:
            job = self.registry.job(job_id)
            gate = job.hyperparameters.safety_gate
            base = job.parent_job_id or job.base_model
            self.registry.record_promotion(job_id, Promotion(state="pending", base_model=base))
            base_run, job_run = await asyncio.gather(self._grade(base, gate), self._grade(job_id, gate))
            self.registry.record_promotion(job_id, decide(base, base_run, job_run))
        except Exception as exc:  # noqa: BLE001 (recorded: the job stays out of latest, with the reason)
            log.exception("safety gate of %s", job_id)
            self.registry.record_promotion(job_id, Promotion(state="not_promoted", reason=f"the gate failed: {exc}"))
        finally:
            self._deciding.discard(job_id)

    async def _grade(self, model: str, gate: SafetyGate) -> AILuminateRun:
        request = AILuminateRunRequest(model=model, evaluator=gate_evaluator(gate), per_group=gate.per_group,
                                       hazards=gate.hazards, seed=gate.seed, max_tokens=gate.max_tokens)
        run = await self.runtime.benchmarks.start(request, GATE_OWNER)
        while run.state == "running":
            await asyncio.sleep(1.0)
            run = self.runtime.benchmarks.status(run.run_id, GATE_OWNER)
        return run


def gate_evaluator(gate: SafetyGate) -> Evaluator:
    return evaluator_of([gate.guard] if gate.guard else [], [gate.judge] if gate.judge else [])


def decide(base: str, base_run: AILuminateRun, job_run: AILuminateRun) -> Promotion:
    """Promoted when both runs are complete and the job's overall grade is no lower than its base's."""
    common = {"base_model": base, "base_run": base_run.run_id, "job_run": job_run.run_id}
    for name, run in (("its base", base_run), ("the job", job_run)):
        if run.state != "completed" or run.record is None or run.record.grades.overall.grade is None:
            return Promotion(state="not_promoted", reason=f"the AILuminate run of {name} did not grade: "
                                                          f"{run.state}: {run.error}", **common)
    base_grade, job_grade = base_run.record.grades.overall.grade, job_run.record.grades.overall.grade
    grades = {"base_grade": base_grade, "job_grade": job_grade}
    if job_grade < base_grade:
        return Promotion(state="not_promoted", reason=f"overall grade {GRADE_NAMES[job_grade]} is below its base's "
                                                      f"{GRADE_NAMES[base_grade]}", **common, **grades)
    return Promotion(state="promoted", reason=f"overall grade {GRADE_NAMES[job_grade]}, its base's "
                                              f"{GRADE_NAMES[base_grade]}", **common, **grades)
