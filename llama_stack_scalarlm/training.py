"""Training jobs from submission to SLURM: validate, hash, record, sbatch, reconcile.

The post_training provider and ScalarLM's own routes both come here. Nothing is submitted unless
every check passes; a job is recorded before sbatch, so when SLURM is down the caller gets a 503
and the job is submitted by :meth:`TrainingService.submit_pending` once SLURM is back.

One launcher per job: whoever launches, relaunches or cancels a job holds its directory's lock
from the check of its state to the record of the result, and looks the job's SLURM name up in
squeue before submitting: a live SLURM job of that name (left by an sbatch whose reply was lost)
is adopted, not submitted again. An sbatch that timed out leaves its ``.launching`` mark, and for
:data:`_IN_FLIGHT_S` after it the job is looked for instead of submitted.

SLURM's view comes from a background thread (:meth:`TrainingService.start_background`) that reads
every tracked job's state once a second and writes what it means into status.json: status reads
only read files, so no route waits on squeue.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

from llama_stack_api import ConflictError

from .config import ScalarLMConfig
from .errors import InvalidFieldError
from .models.builtin import BUILDERS
from .models.catalogue import LATEST
from .models.store import ModelStore
from .registry.datasets import validate_jsonl
from .registry.jobs import JobRegistry, job_id_for
from .registry.schema import RUN_SETTINGS, TERMINAL_STATES, Hyperparameters, JobStatus, LoraSettings, TrainingJob
from .registry.uploads import UploadStore
from .slurm import JOB_STATES, UNKNOWN, Slurm, SlurmTimeoutError, SlurmUnavailableError
from .trainer import TRAINER_VERSION
from .trainer.launch import render_sbatch_script, slurm_job_name
from .trainer.megatron_fit import megatron_problems

log = logging.getLogger(__name__)

_REFRESH_S = 1.0
_PENDING_S = 5.0
_STOP_TIMEOUT_S = 90.0
_BUILD_TIMEOUT_S = 600.0
_IN_FLIGHT_S = 60.0
"""How long after a timed-out sbatch its job may still show up in squeue (a slow controller answers
late; a site's sbatch wrapper may outlive the call): until then it is looked for, not submitted again."""
_SILENT_S = 300.0
"""A job SLURM no longer knows (in neither squeue nor its jobcomp log) whose trainer has not written
status.json for this long is FAILED: no trainer is running it."""
_RESUME = "submit the job again to resume from its newest checkpoint"


class _JobConflict(ConflictError):
    """A 409 whose message is given whole (the stack's ConflictError composes its own)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


class JobBusyError(_JobConflict):
    """409: SLURM has not settled the job yet (its previous run is still stopping, or a submission is unconfirmed)."""


class JobRunningError(_JobConflict):
    """409: new run settings for a job that SLURM holds (queued or training) with the ones it was launched with."""


class JobNameTakenError(_JobConflict):
    """409: a ``job_uuid`` that already names another job (a name names one job; the job keeps it)."""


class TrainingService:
    def __init__(self, config: ScalarLMConfig, slurm: Slurm | None = None):
        self.config = config
        self.registry = JobRegistry(config.jobs_dir)
        self.uploads = UploadStore(config.uploads_dir, config.limits.max_upload_bytes, config.limits.upload_ttl_s)
        self.models = ModelStore(config.models_dir)
        self.slurm = slurm or Slurm()
        self._parents: dict[str, str | None] = {}  # job id -> parent: part of the id, so read once
        self._stop = threading.Event()

    # --- background -------------------------------------------------------------------------

    def start_background(self) -> None:
        """The threads that fold SLURM's view into status.json, and that submit jobs recorded while
        SLURM was down once it answers again."""
        for name, period, action in (("scalarlm-slurm-state", _REFRESH_S, self.refresh),
                                     ("scalarlm-pending", _PENDING_S, self._submit_pending_logged)):
            threading.Thread(target=self._every, args=(period, action), name=name, daemon=True).start()

    def stop_background(self) -> None:
        self._stop.set()

    def _every(self, period_s: float, action: Callable[[], None]) -> None:
        while not self._stop.wait(period_s):
            try:
                action()
            except SlurmUnavailableError as exc:
                log.debug("SLURM unavailable: %s", exc)
            except Exception:
                log.exception("%s failed", threading.current_thread().name)

    def _submit_pending_logged(self) -> None:
        if sent := self.submit_pending():
            log.info("submitted %d job(s) recorded while SLURM was down", sent)

    def refresh(self) -> None:
        """Write what SLURM says of every job it runs for us into its status.json (one squeue for all)."""
        tracked = [s for s in map(self.registry.recorded_status, self.registry.job_ids())
                   if s.state not in TERMINAL_STATES and s.slurm_job_id is not None]
        if not tracked:
            return
        states = self.slurm.state([s.slurm_job_id for s in tracked])
        for seen in tracked:
            with self.registry.launch_lock(seen.job_id, blocking=False) as held:
                if held:  # else a launcher or a cancel is at it and will record the outcome
                    status = self.registry.recorded_status(seen.job_id)
                    if status.slurm_job_id == seen.slurm_job_id:
                        self._reconcile(status, states[seen.slurm_job_id])

    def _reconcile(self, status: JobStatus, slurm_state: str) -> None:
        """Fold one SLURM state into a live job's record (the launch lock is held)."""
        if status.state in TERMINAL_STATES:
            return
        kind = JOB_STATES.get(slurm_state)
        slurm_id = status.slurm_job_id
        if slurm_state == UNKNOWN:
            silent_s = time.time() - status.updated
            if silent_s >= _SILENT_S:
                self._fail(status, f"SLURM job {slurm_id} is unknown to SLURM (in neither squeue nor its jobcomp "
                                   f"log) and the trainer has not reported for {silent_s:.0f} s; {_RESUME}")
        elif kind is None:
            log.warning("job %s: SLURM state %s is not in JOB_STATES; left to the trainer", status.job_id, slurm_state)
        elif kind == "requeued" and status.state == "TRAINING":
            self.registry.update_status(status.job_id, state="QUEUED",
                                        error=f"requeued by SLURM ({slurm_state}); resumes from its newest checkpoint")
        elif kind == "cancelled":
            self.registry.update_status(status.job_id, state="CANCELLED")
        elif kind == "ended_ok":  # the trainer records COMPLETED before it exits: it did not finish
            self._fail(status, f"SLURM job {slurm_id} ended COMPLETED before the trainer finished; {_RESUME}")
        elif kind == "failed":
            self._fail(status, f"SLURM job {slurm_id} ended {slurm_state}; {_RESUME}")

    def _fail(self, status: JobStatus, error: str) -> None:
        self.registry.update_status(status.job_id, state="FAILED", error=error,
                                    log_tail=self.registry.log_tail(status.job_id))

    # --- submit -----------------------------------------------------------------------------

    def submit(self, base_model: str, dataset_sha256: str, hyperparameters: Hyperparameters,
               name: str | None = None) -> JobStatus:
        """The job's status; the same job submitted twice is the same job, trained once. ``name``
        (Llama Stack's ``job_uuid``) is another name for it, unless it names another job already.

        The job id covers what determines the weights; :data:`RUN_SETTINGS` (time limit, checkpoint
        cadence, resources) are its configuration, which a resubmission may change. A stopped job
        (FAILED, CANCELLED, or never submitted) is launched with the new settings, recorded in
        job.json, and resumes from its newest checkpoint. A job that SLURM holds (queued or training)
        keeps the settings it was launched with, because SLURM has its resources and time limit:
        other settings are a 409 (cancel it, then submit again). A completed job is not run again.
        """
        start = self._starting_point(base_model.removeprefix("scalarlm/"), hyperparameters)
        if not self.uploads.has(dataset_sha256):
            raise InvalidFieldError("dataset_id", f"no dataset with sha256 {dataset_sha256}")
        dataset = self.uploads.blob(dataset_sha256)
        validate_jsonl(dataset, hyperparameters.method, max_line_bytes=self.config.limits.max_dataset_line_bytes)
        self._check_backend(start["base_model"], hyperparameters)
        self._check_resources(hyperparameters)
        self._check_layout(hyperparameters)
        job_id = job_id_for(dataset_sha256, TRAINER_VERSION, start["base_model"], start["base_model_sha256"],
                            hyperparameters, start["parent_job_id"])
        if name is not None and (named := self.registry.resolve(name)) not in (None, job_id):
            raise JobNameTakenError(f"job_uuid: {name!r} names job {named}, another job; "
                                    "choose another name (nothing was submitted)")
        job = TrainingJob(job_id=job_id, dataset_sha256=dataset_sha256, trainer_version=TRAINER_VERSION,
                          hyperparameters=hyperparameters, **start)
        self.registry.create(job, dataset)
        if name is not None:
            self.registry.add_alias(name, job_id)
        with self.registry.launch_lock(job.job_id):
            status = self.registry.recorded_status(job.job_id)
            self._configure(job, status)
            if status.state in ("FAILED", "CANCELLED"):  # relaunch; the trainer resumes from its newest checkpoint
                self._wait_gone(status.slurm_job_id)  # never two trainers on one job directory
                status = self.registry.update_status(job.job_id, state="QUEUED", slurm_job_id=None, error=None)
            if _unsubmitted(status):
                self._launch(job.job_id)
        return self.status(job.job_id)

    def _configure(self, job: TrainingJob, status: JobStatus) -> None:
        """Record the submitted configuration where the job may take it (the launch lock is held)."""
        recorded = self.registry.job(job.job_id)
        if recorded == job or status.state == "COMPLETED":
            return
        old, new = recorded.hyperparameters, job.hyperparameters
        changed = sorted(k for k in RUN_SETTINGS if getattr(old, k) != getattr(new, k))
        if self._in_slurm(status):
            if changed:
                settings = ", ".join(f"{k}={getattr(old, k)}" for k in changed)
                raise JobRunningError(f"{job.job_id} is in SLURM with {settings}: cancel it to change that "
                                      "(submitted again, it resumes from its newest checkpoint)")
            return
        if self.registry.checkpoints(job.job_id) and old.world_size != new.world_size:
            field = "nodes" if old.nodes != new.nodes else "processes_per_node"
            raise InvalidFieldError(field, f"the job's checkpoints were written by {old.world_size} processes "
                                           "(nodes × processes_per_node); resuming needs as many")
        self.registry.write_job(job)

    def _in_slurm(self, status: JobStatus) -> bool:
        """Queued in SLURM or training, or submitted without a confirmation yet."""
        if status.state not in ("QUEUED", "TRAINING"):
            return False
        return not _unsubmitted(status) or self.registry.launching_since(status.job_id) is not None

    def submit_pending(self) -> int:
        """Submit recorded jobs that never reached SLURM (it was down); returns how many went."""
        sent = 0
        for job_id in self.registry.job_ids():
            if not _unsubmitted(self.registry.recorded_status(job_id)):
                continue
            with self.registry.launch_lock(job_id, blocking=False) as held:
                if not held or not _unsubmitted(self.registry.recorded_status(job_id)):
                    continue  # another launcher has it, or had it
                try:
                    sent += self._launch(job_id)
                except SlurmUnavailableError:
                    break
        return sent

    def _launch(self, job_id: str) -> bool:
        """Put the job in SLURM, once (the launch lock is held and the job is unsubmitted): adopt a live
        SLURM job of its name, wait while an unconfirmed sbatch may still queue it, or submit it.
        True when it is in SLURM."""
        name = slurm_job_name(job_id)
        live = [i for i, st in self.slurm.jobs_named(name).items() if JOB_STATES.get(st) in ("live", "requeued")]
        if live:
            self.registry.update_status(job_id, slurm_job_id=live[-1])
            self.registry.clear_launching(job_id)
            log.info("job %s: adopted SLURM job %s, which carries its name", job_id, live[-1])
            return True
        since = self.registry.launching_since(job_id)
        if since is not None and time.time() - since < _IN_FLIGHT_S:
            return False
        job_dir = self.registry.dir(job_id)
        script = job_dir / "train.sbatch"
        script.write_text(render_sbatch_script(self.registry.job(job_id), job_dir, python=sys.executable))
        self.registry.mark_launching(job_id)
        try:  # the script's #SBATCH lines decide the resources
            slurm_id = self.slurm.sbatch(script, workdir=job_dir, env=self.config.to_env())
        except SlurmTimeoutError:
            raise  # it may be queued all the same: the mark stays, and the next launcher looks for it
        except BaseException:
            self.registry.clear_launching(job_id)
            raise
        self.registry.update_status(job_id, slurm_job_id=slurm_id)
        self.registry.clear_launching(job_id)
        log.info("job %s submitted to SLURM as %s", job_id, slurm_id)
        return True

    # --- read, cancel -----------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        """The job's status as recorded, SLURM's view included by the background thread: no SLURM call."""
        if not self.registry.exists(job_id):
            raise KeyError(job_id)
        return self._reported(self.registry.status(job_id))

    def jobs(self) -> list[JobStatus]:
        return [self._reported(self.registry.status(job_id)) for job_id in self.registry.job_ids()]

    def _reported(self, status: JobStatus) -> JobStatus:
        """The status with what the trainer does not write: the job's parent, and a failed job's log."""
        if status.job_id not in self._parents:
            self._parents[status.job_id] = self.registry.job(status.job_id).parent_job_id
        status.parent_job_id = self._parents[status.job_id]
        if status.state == "FAILED" and status.log_tail is None:
            status.log_tail = self.registry.log_tail(status.job_id)  # the trainer recorded the error; show its log too
        return status

    def cancel(self, job_id: str) -> JobStatus:
        """Stop the job; returns once its SLURM job has ended (its trainer checkpointed on SIGTERM)."""
        if not self.registry.exists(job_id):
            raise KeyError(job_id)
        with self.registry.launch_lock(job_id):
            status = self.registry.recorded_status(job_id)
            if status.state not in TERMINAL_STATES:
                runs = self._slurm_runs(status)
                for slurm_id in runs:
                    self.slurm.cancel(slurm_id)
                for slurm_id in runs:
                    self._wait_gone(slurm_id)
                self.registry.clear_launching(job_id)
                self.registry.update_status(job_id, state="CANCELLED")
        return self.status(job_id)

    def _slurm_runs(self, status: JobStatus) -> list[str]:
        """The SLURM jobs running (or about to run) this job: the recorded one and any live one of its name."""
        since = self.registry.launching_since(status.job_id)
        if status.slurm_job_id is None and since is None:
            return []  # never reached SLURM
        named = self.slurm.jobs_named(slurm_job_name(status.job_id))
        runs = {i for i, st in named.items() if JOB_STATES.get(st) in ("live", "requeued")}
        runs |= {status.slurm_job_id} - {None}
        if not runs and since is not None and time.time() - since < _IN_FLIGHT_S:
            raise JobBusyError(f"{status.job_id}: its submission to SLURM is not confirmed yet; try again in a minute")
        return sorted(runs, key=int)

    def _wait_gone(self, slurm_job_id: str | None, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        if slurm_job_id is None:
            return
        deadline = time.monotonic() + timeout_s
        while JOB_STATES.get(self.slurm.state([slurm_job_id])[slurm_job_id]) in ("live", "requeued"):
            if time.monotonic() > deadline:
                raise JobBusyError(f"SLURM job {slurm_job_id} is still stopping; try again shortly")
            time.sleep(0.2)

    # --- checks -----------------------------------------------------------------------------

    def _starting_point(self, model: str, hp: Hyperparameters) -> dict:
        """The :class:`TrainingJob` fields that say which weights a job starts from: a store model,
        or a completed job (its id, its Llama Stack ``job_uuid``, or ``latest``). A full fine-tune
        starts from the parent's final weights (a LoRA parent's merged in); a LoRA job on a LoRA
        job continues the parent's adapter, so it keeps the parent's LoRA settings; a LoRA job on a
        full fine-tune trains an adapter on its weights and is exported merged."""
        if model != LATEST and (self.models.is_ready(model) or model in BUILDERS):
            return {"base_model": model, "base_model_path": str(self.models.path(model)),
                    "base_model_sha256": self._base_model_hash(model), "parent_job_id": None}
        try:
            parent_id = self.registry.newest_trained() if model == LATEST else self.registry.resolve(model)
        except InvalidFieldError:
            parent_id = None
        if parent_id is None:
            raise InvalidFieldError("model", f"{model!r} is not in the model store, a built-in model, nor a trained job")
        state = self.registry.recorded_status(parent_id).state
        if state != "COMPLETED":
            raise InvalidFieldError("model", f"{model!r} is job {parent_id}, which is {state}: a job trains "
                                             "from a completed one")
        parent, final = self.registry.job(parent_id), self.registry.latest_checkpoint(parent_id)
        start = {"base_model": parent.base_model, "base_model_sha256": parent.base_model_sha256,
                 "parent_job_id": parent_id, "parent_kind": parent.kind}
        if parent.kind == "full":
            return {**start, "base_model_path": final.path}
        if hp.backend == "megatron":
            raise InvalidFieldError("model", f"{parent_id} is a LoRA job: the megatron backend starts from full "
                                             "weights (train its continuation with fsdp or ddp)")
        if hp.lora is not None and hp.lora != parent.hyperparameters.lora:
            name = next(k for k in LoraSettings.model_fields if getattr(hp.lora, k) != getattr(parent.hyperparameters.lora, k))
            raise InvalidFieldError(f"lora.{name}", f"{getattr(hp.lora, name)!r} given; a LoRA job on the LoRA job "
                                                    f"{parent_id} continues its adapter, whose {name} is "
                                                    f"{getattr(parent.hyperparameters.lora, name)!r}")
        return {**start, "base_model_path": parent.base_model_path, "init_adapter_path": final.path}

    def _base_model_hash(self, name: str) -> str:
        """The base model's content hash. A built-in model no worker has built yet is built first, in a
        child process: the hash needs its bytes, and this process loads no torch."""
        if not self.models.is_ready(name):
            built = subprocess.run([sys.executable, "-m", "llama_stack_scalarlm.models.builtin", str(self.models.root),
                                    name], capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S,
                                   stdin=subprocess.DEVNULL)
            if built.returncode != 0:
                raise RuntimeError(f"building the built-in model {name} failed: {built.stderr[-2000:]}")
        return self.models.content_hash(name)

    def _check_backend(self, base_model: str, hp: Hyperparameters) -> None:
        """A model megatron cannot split is refused now, not when the trainer starts."""
        if hp.backend != "megatron":
            return
        config = json.loads((self.models.path(base_model) / "config.json").read_text())
        problems = megatron_problems(SimpleNamespace(**config), hp.tensor_parallel, hp.max_seq_len)
        if problems:
            message = "; ".join(problem for _, problem in problems)
            raise InvalidFieldError(problems[0][0], f"the megatron backend cannot train {base_model}: {message}")

    def _check_resources(self, hp: Hyperparameters) -> None:
        try:
            cluster = self.slurm.cluster_resources()
        except SlurmUnavailableError:
            return  # checked again when SLURM is back and sbatch refuses what it cannot run
        if hp.nodes > cluster.nodes:
            raise InvalidFieldError("nodes", f"{hp.nodes} requested, the cluster has {cluster.nodes}")
        if hp.gpus_per_node > cluster.gpus_per_node:
            raise InvalidFieldError("gpus_per_node", f"{hp.gpus_per_node} requested, nodes have {cluster.gpus_per_node}")
        if hp.gpus_per_node == 0 and hp.processes_per_node > cluster.cpus_per_node:
            raise InvalidFieldError(
                "processes_per_node", f"{hp.processes_per_node} requested, nodes have {cluster.cpus_per_node} CPUs"
            )

    @staticmethod
    def _check_layout(hp: Hyperparameters) -> None:
        """Every replica takes an equal share of a step's rows, so the layout (a run setting) cannot
        change which rows a step trains on, nor the weights."""
        if hp.batch_size % hp.data_parallel:
            raise InvalidFieldError("batch_size", f"{hp.batch_size} is not a multiple of the {hp.data_parallel} "
                                                  "data-parallel processes (nodes × processes_per_node)")


def _unsubmitted(status: JobStatus) -> bool:
    """Recorded for SLURM but not (known to be) in it: the pending thread's work."""
    return status.state == "QUEUED" and status.slurm_job_id is None
