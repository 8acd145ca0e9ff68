"""The sbatch script of a training job: srun starts one torchrun per node, torchrun the trainer ranks.
A job of one process on one node has srun start the trainer itself: torchrun would add ~3 s of
start-up (its own torch import, a rendezvous store) and the trainer runs as one process without it.

No torch here: the control plane renders the script. Signals: SLURM sends SIGUSR1 to the batch
shell 60 s before the time limit (``--signal=B:USR1@60``) and SIGTERM on a cancel or preemption.
The script forwards either to srun, srun to the torchrun on each node, torchrun (``--signals-to-handle``) to
the trainer ranks (or srun straight to a lone trainer), which checkpoint at the next step boundary and exit with
:data:`PREEMPTED_EXIT_CODE`, recording state QUEUED / "preempted" in ``status.json``. torchrun
reports any worker exit as 1, so the script also reads that record before it requeues itself
(``scontrol requeue``; ``--requeue`` permits it); the requeued job resumes from the checkpoint.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..registry.schema import TrainingJob
from . import PREEMPTED_ERROR, PREEMPTED_EXIT_CODE

SIGNAL_LEAD_S = 60
"""Seconds before the time limit that SLURM warns the job: enough to write one checkpoint."""


def slurm_job_name(job_id: str) -> str:
    """The SLURM job name of a training job: how a submission whose reply was lost is found again."""
    return f"scalarlm-{job_id[:24]}"


def sbatch_path(path: Path) -> str:
    """A path as an ``#SBATCH --output`` value. sbatch splits those lines itself: double quotes group
    (a backslash escapes the next character), and slurmd expands ``%`` symbols (``%%`` is a literal
    ``%``) unless the name holds a backslash, which it then drops: such a path cannot be given."""
    text = str(path)
    if "\\" in text or "\n" in text:
        raise ValueError(f"SLURM cannot write a log under {text!r} (a backslash or newline in the path)")
    return '"' + text.replace('"', '\\"').replace("%", "%%") + '"'


def render_sbatch_script(job: TrainingJob, job_dir: Path, python: str, cpus_per_task: int | None = None) -> str:
    """A bash script for ``sbatch``. ``cpus_per_task`` defaults to one per process on CPUs, four per GPU."""
    hp = job.hyperparameters
    job_dir = Path(job_dir)
    procs = hp.processes_per_node
    cpus = cpus_per_task or (4 * hp.gpus_per_node if hp.gpus_per_node else procs)
    log = job_dir / "slurm.log"
    status = job_dir / "status.json"
    q = shlex.quote
    sbatch = [
        f"--job-name={slurm_job_name(job.job_id)}",
        f"--nodes={hp.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus}",
        *([f"--gres=gpu:{hp.gpus_per_node}"] if hp.gpus_per_node else []),
        f"--time={hp.time_limit_minutes}",
        "--requeue",
        f"--signal=B:USR1@{SIGNAL_LEAD_S}",
        f"--output={sbatch_path(log)}",
        f"--error={sbatch_path(log)}",
        "--open-mode=append",
    ]
    header = "\n".join(f"#SBATCH {line}" for line in sbatch)
    trainer = ["-m", "llama_stack_scalarlm.trainer", '"$JOB_DIR"']
    launcher = " ".join([q(python), *trainer]) if hp.nodes == 1 and procs == 1 else " ".join([
        q(python), "-m", "torch.distributed.run",
        f"--nnodes={hp.nodes}", f"--nproc-per-node={procs}",
        "--rdzv-backend=c10d", '--rdzv-endpoint="$HEAD:$PORT"', '--rdzv-id="$SLURM_JOB_ID"',
        "--max-restarts=0",
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        f"--shutdown-timeout={10 * SIGNAL_LEAD_S}",
        *trainer,
    ])
    return f"""#!/bin/bash
{header}
# ScalarLM training job {job.job_id} (trainer {job.trainer_version}); rendered by llama_stack_scalarlm.trainer.launch.

JOB_DIR={q(str(job_dir))}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
THREADS=$(( ${{SLURM_CPUS_PER_TASK:-{cpus}}} / {procs} ))
export OMP_NUM_THREADS=$(( THREADS > 0 ? THREADS : 1 ))  # CPU threads per trainer process
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))
echo "[scalarlm] $(date -u +%FT%TZ) job $SLURM_JOB_ID restart ${{SLURM_RESTART_COUNT:-0}}: $SLURM_JOB_NODELIST"

SRUN_PID=""
SIGNAL=""
forward() {{
  SIGNAL=$1
  echo "[scalarlm] $(date -u +%FT%TZ) got SIG$1: asking the trainer to checkpoint"
  [ -n "$SRUN_PID" ] && kill -s "$1" "$SRUN_PID" 2>/dev/null
}}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

: > "$JOB_DIR/.sbatch-started"
srun --kill-on-bad-exit=1 --ntasks-per-node=1 {launcher} &
SRUN_PID=$!
while :; do
  wait "$SRUN_PID"; rc=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done

# SIGTERM is SLURM ending the job (scancel, or a preemption that SLURM itself requeues): the
# checkpoint is written, and what happens next is SLURM's call, so a cancel stays cancelled.
if [ "$SIGNAL" = TERM ]; then
  echo "[scalarlm] $(date -u +%FT%TZ) stopped by SLURM after checkpointing (trainer exit $rc)"
  exit 0
fi
# Requeue only on a preemption recorded by this run (a stale record must not requeue a broken job forever).
if [ "$rc" -eq {PREEMPTED_EXIT_CODE} ] || {{ [ {q(str(status))} -nt "$JOB_DIR/.sbatch-started" ] &&
    grep -q '"error": "{PREEMPTED_ERROR}' {q(str(status))}; }}; then
  echo "[scalarlm] $(date -u +%FT%TZ) trainer checkpointed for preemption: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  exit {PREEMPTED_EXIT_CODE}  # where RequeueExit={PREEMPTED_EXIT_CODE} is configured, SLURM requeues it on this
fi
echo "[scalarlm] $(date -u +%FT%TZ) trainer exited with $rc"
exit "$rc"
"""
