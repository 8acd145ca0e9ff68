"""The only code that talks to SLURM: sbatch / squeue / scancel (plus scontrol and sinfo to look).

Every command gets ``SLURM_CONF`` (the conf ``slurm/cluster.sh`` renders under the state dir) and
a timeout. Without slurmdbd there is no ``sacct``: jobs that slurmctld has already forgotten
(``MinJobAge``) are read back from the ``jobcomp/filetxt`` file.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Literal

from llama_stack_api import ConflictError
from pydantic import BaseModel

# Client commands retry a refused connection for ~MessageTimeout (10 s): ping first where speed matters.
_UNREACHABLE = ("Unable to contact slurm controller", "Connection refused", "Socket timed out",
                "Zero Bytes were transmitted")
_USABLE = {"idle", "mix", "alloc", "comp", "plnd"}  # sinfo %t states that take (or will take) jobs
_GONE = ("Invalid job id specified", "already completing or completed")

JobStateKind = Literal["live", "requeued", "ended_ok", "failed", "cancelled"]
JOB_STATES: dict[str, JobStateKind] = {
    # live: the job holds, waits for or is giving back an allocation; its trainer reports for itself
    "PENDING": "live", "CONFIGURING": "live", "RUNNING": "live", "SUSPENDED": "live", "STOPPED": "live",
    "RESIZING": "live", "SIGNALING": "live", "COMPLETING": "live", "STAGE_OUT": "live",
    # requeued: it will run again (held ones once released), resuming from its newest checkpoint
    "REQUEUED": "requeued", "REQUEUE_FED": "requeued", "REQUEUE_HOLD": "requeued", "SPECIAL_EXIT": "requeued",
    "RESV_DEL_HOLD": "requeued",
    "COMPLETED": "ended_ok",
    # failed: ended without finishing (PREEMPTED: preempted and not requeued; REVOKED: a federation
    # sibling ran instead); submitting the job again resumes it
    "FAILED": "failed", "TIMEOUT": "failed", "NODE_FAIL": "failed", "BOOT_FAIL": "failed",
    "OUT_OF_MEMORY": "failed", "DEADLINE": "failed", "PREEMPTED": "failed", "REVOKED": "failed",
    "CANCELLED": "cancelled",
}
"""Every job state SLURM 22.05 reports (squeue(1), "JOB STATE CODES"), by what it means for a training job."""

UNKNOWN = "UNKNOWN"
""":meth:`Slurm.state` of a job id neither squeue nor the jobcomp log knows."""


class SlurmError(RuntimeError):
    """A SLURM command failed; the message carries its stderr."""


class SlurmUnavailableError(SlurmError, ConflictError):
    """The controller cannot be reached (no cluster started, or it is down): a 503.

    A ConflictError too ("cannot be done in the current state"), because the stack answers those
    through a registered handler and keeps the connection; its catch-all handler drops it.
    """

    status_code = 503

    def __init__(self, message: str):
        Exception.__init__(self, message)


class SlurmTimeoutError(SlurmUnavailableError):
    """A command gave no answer in time and was killed: whether it acted (an sbatch queued its job) is unknown."""


class ClusterResources(BaseModel):
    nodes: int  # schedulable nodes
    cpus_per_node: int  # the smallest node's, so a job sized by it fits anywhere
    gpus_per_node: int
    memory_mb_per_node: int


class QueueEntry(BaseModel):
    job_id: str
    name: str
    user: str
    state: str  # SLURM's name: PENDING, RUNNING, COMPLETING, ...
    partition: str
    nodes: int
    elapsed: str  # as squeue prints it, e.g. "1:02:03"
    where: str  # node list when running, "(Reason)" when pending


def default_conf_path() -> Path:
    state_dir = Path(os.environ.get("SCALARLM_STATE_DIR") or "~/.scalarlm").expanduser()
    return state_dir / "slurm" / "conf" / "slurm.conf"


class Slurm:
    def __init__(self, conf_path: Path | None = None, *, timeout_s: float = 30.0):
        self.conf_path = Path(conf_path) if conf_path else default_conf_path()
        self.timeout_s = timeout_s

    # --- commands ---------------------------------------------------------------------------

    def _run(self, args: list[str], *, env: dict[str, str] | None = None, timeout_s: float | None = None,
             ok_if_gone: bool = False) -> str:
        if not self.conf_path.is_file():  # clients would retry a missing conf for 60 s
            raise SlurmUnavailableError(f"no SLURM cluster: {self.conf_path} does not exist (run slurm/cluster.sh start)")
        full_env = {**os.environ, **(env or {}), "SLURM_CONF": str(self.conf_path)}
        try:
            proc = subprocess.run(args, env=full_env, capture_output=True, text=True,
                                  timeout=timeout_s or self.timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise SlurmTimeoutError(f"{args[0]}: no answer in {e.timeout:.0f}s") from e
        except FileNotFoundError as e:
            raise SlurmUnavailableError(f"{args[0]} is not installed (run slurm/cluster.sh start)") from e
        if proc.returncode != 0:
            err = proc.stderr.strip() or proc.stdout.strip()
            if ok_if_gone and any(s in err for s in _GONE):
                return ""
            if any(s in err for s in _UNREACHABLE):
                raise SlurmUnavailableError(f"{args[0]}: {err}")
            raise SlurmError(f"{' '.join(args[:2])} failed ({proc.returncode}): {err}")
        return proc.stdout

    def available(self, timeout_s: float = 5.0) -> bool:
        """True if slurmctld answers (``scontrol ping`` is quick even when it is down)."""
        try:
            return "is UP" in self._run(["scontrol", "ping"], timeout_s=timeout_s)
        except SlurmError:
            return False

    def _require(self) -> None:
        if not self.available():
            raise SlurmUnavailableError(f"slurmctld is not reachable (SLURM_CONF={self.conf_path})")

    def sbatch(self, script: Path, *, job_name: str | None = None, output: Path | None = None,
               nodes: int | None = None, ntasks_per_node: int | None = None, cpus_per_task: int | None = None,
               gpus_per_node: int = 0, time_limit_minutes: int | None = None, workdir: Path | None = None,
               env: dict[str, str] | None = None, requeue: bool | None = None, signal: str | None = None) -> str:
        """Submit a batch script; returns the job id. Options left None are not passed, so the
        script's own ``#SBATCH`` lines decide (command-line options override them). ``env`` is added
        to this process's environment, which the job inherits (``--export=ALL``). ``signal``
        (``SIG@seconds``) warns job steps before the time limit; prefix ``B:`` to signal the batch shell."""
        self._require()
        args = ["sbatch", "--parsable", "--export=ALL"]
        for flag, value in (("--job-name", job_name), ("--nodes", nodes), ("--ntasks-per-node", ntasks_per_node),
                            ("--cpus-per-task", cpus_per_task)):
            if value is not None:
                args.append(f"{flag}={value}")
        if requeue is not None:
            args.append("--requeue" if requeue else "--no-requeue")
        if output is not None:
            args.append(f"--output={output}")
        if gpus_per_node:
            args.append(f"--gpus-per-node={gpus_per_node}")
        if time_limit_minutes is not None:
            args.append(f"--time={time_limit_minutes}")
        if workdir is not None:
            args.append(f"--chdir={workdir}")
        if signal:
            args.append(f"--signal={signal}")
        out = self._run([*args, str(script)], env=env)
        job_id = out.strip().split(";")[0]  # "id" or "id;cluster"
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {out!r}")
        return job_id

    def state(self, job_ids: list[str]) -> dict[str, str]:
        """SLURM state name per job (:data:`JOB_STATES`): live ones from squeue, forgotten ones from the
        jobcomp file, :data:`UNKNOWN` for ids found in neither."""
        wanted = set(job_ids)
        states: dict[str, str] = {}
        if wanted:
            # all jobs, filtered here: `squeue -j` fails outright when one id is unknown
            for line in self._run(["squeue", "-h", "--states=all", "-o", "%i|%T"]).splitlines():
                job_id, _, st = line.partition("|")
                if job_id in wanted:
                    states[job_id] = st.strip()
        missing = wanted - states.keys()
        if missing:
            finished = self._jobcomp_states()
            for job_id in missing:
                states[job_id] = finished.get(job_id, UNKNOWN)
        return {j: states[j] for j in job_ids}

    def jobs_named(self, name: str) -> dict[str, str]:
        """State of every job of that exact name that slurmctld still holds, by job id (oldest first)."""
        self._require()
        out = self._run(["squeue", "-h", "--states=all", "-n", name, "-o", "%i|%T"])
        return dict(sorted((line.split("|") for line in out.splitlines()), key=lambda entry: int(entry[0])))

    def _jobcomp_states(self) -> dict[str, str]:
        """Last recorded state per job id (a requeued job has a line per run)."""
        path = self._conf_value("JobCompLoc")
        if not path or not Path(path).is_file():
            return {}
        found: dict[str, str] = {}
        with open(path, errors="replace") as f:
            for line in f:
                m = re.search(r"\bJobId=(\d+)\b.*?\bJobState=(\w+)", line)
                if m:
                    found[m.group(1)] = m.group(2)
        return found

    def _conf_value(self, key: str) -> str | None:
        for line in self.conf_path.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep and k.strip().lower() == key.lower():
                return v.split("#")[0].strip()
        return None

    def cancel(self, job_id: str, signal: str | None = None) -> None:
        """Cancel a job, or with ``signal`` (e.g. ``"USR1"``) only signal it: the batch shell and all
        its steps. A job that has already ended is not an error."""
        args = ["scancel", *([f"--signal={signal}", "--full"] if signal else []), str(job_id)]
        self._run(args, ok_if_gone=True)

    def requeue(self, job_id: str) -> None:
        """Stop a running job and queue it again (it restarts after ~cred_expire, 30 s here)."""
        self._run(["scontrol", "requeue", str(job_id)])

    def cluster_resources(self) -> ClusterResources:
        """What a job can use: nodes that are up and schedulable (not down, drained or not
        responding), and the smallest such node's CPUs, GPUs and memory."""
        nodes: dict[str, tuple[int, int, int]] = {}
        for line in self._run(["sinfo", "-h", "-N", "-o", "%N|%t|%c|%m|%G"]).splitlines():
            name, st, cpus, mem, gres = line.split("|", 4)
            if "*" not in st and st.rstrip("~#!%$@^-") in _USABLE:
                nodes[name] = (int(cpus), int(mem.rstrip("+")), _gpus(gres))
        if not nodes:
            return ClusterResources(nodes=0, cpus_per_node=0, gpus_per_node=0, memory_mb_per_node=0)
        return ClusterResources(nodes=len(nodes), cpus_per_node=min(n[0] for n in nodes.values()),
                                memory_mb_per_node=min(n[1] for n in nodes.values()),
                                gpus_per_node=min(n[2] for n in nodes.values()))

    def queue(self) -> list[QueueEntry]:
        """Pending and running jobs, as ``squeue`` shows them (the name goes last: it may hold '|')."""
        entries = []
        for line in self._run(["squeue", "-h", "-o", "%i|%u|%T|%P|%D|%M|%R|%j"]).splitlines():
            job_id, user, st, part, nodes, elapsed, where, name = line.split("|", 7)
            entries.append(QueueEntry(job_id=job_id, name=name, user=user, state=st, partition=part,
                                      nodes=int(nodes), elapsed=elapsed, where=where))
        return entries


def _gpus(gres: str) -> int:
    """GPU count from sinfo's %G, e.g. ``gpu:4``, ``gpu:a100:8(S:0-1)``, ``(null)``."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            total += int(parts[-1])
    return total
