"""Which full fine-tunes hold an engine (dev mode): a bounded pool, plus one spare.

A full fine-tune needs a vLLM engine of its own, and an engine takes ~15-30 s to start on CPU:
longer than a job takes to write its first checkpoint. So engines are kept where they will be
needed, within ``engine.full_finetune_engines``, in this order:

1. trained jobs with requests queued or running, which otherwise wait for an engine, oldest first;
2. jobs queued or training (their engines stand by for the checkpoints to come), newest first;
3. one spare engine on the base model of the newest full fine-tune (or, before there is one,
   ``spare_fallback``), standing by to become the next job's engine in a second (a new job, or a
   trained one asked for again);
4. trained jobs idle since, most recently used first.

A job that falls out of the plan has its engine stopped; its requests wait in the queue and bring
it back. Pure policy: no processes, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FullFinetune:
    job_id: str
    base_model: str
    created: float
    updated: float  # status time: for a finished job, when it last trained
    training: bool  # queued or training: a first or newer checkpoint is coming
    trained: bool  # has a checkpoint to serve


@dataclass
class EnginePlan:
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> base model, highest priority first
    spare: str | None = None  # base model of the spare engine, if one is kept


def plan_engines(jobs: list[FullFinetune], active: set[str], last_used: dict[str, float], limit: int,
                 spare: bool, spare_fallback: str | None = None) -> EnginePlan:
    wanted = sorted((j for j in jobs if j.trained and j.job_id in active), key=lambda j: j.created)
    training = sorted((j for j in jobs if j.training and j not in wanted), key=lambda j: j.created, reverse=True)
    idle = sorted((j for j in jobs if j.trained and not j.training and j not in wanted),
                  key=lambda j: max(last_used.get(j.job_id, 0.0), j.updated), reverse=True)
    chosen = (wanted + training)[:limit]
    plan = EnginePlan()
    if spare and len(chosen) < limit:
        plan.spare = max(jobs, key=lambda j: j.created).base_model if jobs else spare_fallback
    room = limit - len(chosen) - (plan.spare is not None)
    plan.jobs = {j.job_id: j.base_model for j in chosen + idle[:room]}
    return plan
