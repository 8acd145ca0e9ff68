"""Training jobs from submission to SLURM: validate, hash, record, sbatch, reconcile.

The post_training provider and ScalarLM's own routes both come here. Nothing is submitted unless
every check passes; a job is recorded before sbatch, so when SLURM is down the caller gets a 503
and the job is submitted by :meth:`submit_pending` once SLURM is back.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import SimpleNamespace

from llama_stack_api import ConflictError

from .config import ScalarLMConfig
from .errors import InvalidFieldError
from .models.builtin import BUILDERS
from .models.store import ModelStore
from .registry.datasets import validate_jsonl
from .registry.jobs import JobRegistry, job_id_for
from .registry.schema import TERMINAL_STATES, Hyperparameters, JobStatus, TrainingJob
from .registry.uploads import UploadStore
from .slurm import Slurm, SlurmUnavailableError
from .trainer import TRAINER_VERSION
from .trainer.launch import render_sbatch_script
from .trainer.megatron_fit import megatron_problems

log = logging.getLogger(__name__)

_SLURM_LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
               "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED"}
_STOP_TIMEOUT_S = 90.0
_PENDING_S = 5.0
_SLURM_FAILED = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class JobStillStoppingError(ConflictError):
    """409: the job's previous SLURM run has not ended yet."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


class TrainingService:
    def __init__(self, config: ScalarLMConfig, slurm: Slurm | None = None):
        self.config = config
        self.registry = JobRegistry(config.jobs_dir)
        self.uploads = UploadStore(config.uploads_dir, config.limits.max_upload_bytes, config.limits.upload_ttl_s)
        self.models = ModelStore(config.models_dir)
        self.slurm = slurm or Slurm()
        self._stop = threading.Event()

    def start_background(self) -> None:
        """The thread that submits jobs recorded while SLURM was down, once it answers again."""
        threading.Thread(target=self._submit_pending_loop, name="scalarlm-pending", daemon=True).start()

    def stop_background(self) -> None:
        self._stop.set()

    def _submit_pending_loop(self) -> None:
        while not self._stop.wait(_PENDING_S):
            try:
                if sent := self.submit_pending():
                    log.info("submitted %d job(s) recorded while SLURM was down", sent)
            except Exception:
                log.exception("submitting pending jobs failed")

    def submit(self, base_model: str, dataset_sha256: str, hyperparameters: Hyperparameters) -> JobStatus:
        """The job's status; the same job submitted twice is the same job, trained once."""
        base_model = base_model.removeprefix("scalarlm/")
        if base_model not in self.models.names() and base_model not in BUILDERS:
            raise InvalidFieldError("model", f"{base_model!r} is not in the model store nor a built-in model")
        if not self.uploads.has(dataset_sha256):
            raise InvalidFieldError("dataset_id", f"no dataset with sha256 {dataset_sha256}")
        validate_jsonl(self.uploads.blob(dataset_sha256), hyperparameters.method)
        self._check_backend(base_model, hyperparameters)
        self._check_resources(hyperparameters)
        job = TrainingJob(
            job_id=job_id_for(dataset_sha256, TRAINER_VERSION, base_model, hyperparameters),
            base_model=base_model,
            base_model_path=str(self.models.path(base_model)),
            dataset_sha256=dataset_sha256,
            trainer_version=TRAINER_VERSION,
            hyperparameters=hyperparameters,
        )
        created = self.registry.create(job, self.uploads.blob(dataset_sha256))
        status = self.status(job.job_id)
        if created or status.state in ("FAILED", "CANCELLED"):
            # New, or stopped before: (re)launch; the trainer resumes from the newest checkpoint.
            # Never two trainers on one job directory: the previous SLURM job must be gone first.
            self._wait_gone(status.slurm_job_id)
            self.registry.update_status(job.job_id, state="QUEUED", slurm_job_id=None, error=None)
            self._launch(job.job_id)
        return self.status(job.job_id)

    def status(self, job_id: str) -> JobStatus:
        """The job's status, with what SLURM knows folded in (a job SLURM ended cannot still be training)."""
        if not self.registry.exists(job_id):
            raise KeyError(job_id)
        return self._statuses([job_id])[0]

    def jobs(self) -> list[JobStatus]:
        return self._statuses(self.registry.job_ids())

    def _statuses(self, job_ids: list[str]) -> list[JobStatus]:
        """Statuses as recorded, with one SLURM query for all the jobs recorded as live."""
        recorded = [self.registry.status(job_id) for job_id in job_ids]
        live = [s.slurm_job_id for s in recorded if s.state not in TERMINAL_STATES and s.slurm_job_id is not None]
        try:
            slurm_states = self.slurm.state(live) if live else {}
        except SlurmUnavailableError:
            slurm_states = {}
        return [self._reconcile(status, slurm_states.get(status.slurm_job_id)) for status in recorded]

    def _reconcile(self, status: JobStatus, slurm_state: str | None) -> JobStatus:
        job_id = status.job_id
        if status.state == "FAILED" and status.log_tail is None:
            status.log_tail = self.registry.log_tail(job_id)  # the trainer recorded the error; show its log too
        if status.state in TERMINAL_STATES or slurm_state is None:
            return status
        if slurm_state in _SLURM_FAILED or (slurm_state == "COMPLETED" and status.state != "COMPLETED"):
            tail = self.registry.log_tail(job_id)
            error = status.error or f"SLURM job {status.slurm_job_id} ended {slurm_state}"
            status = self.registry.update_status(job_id, state="FAILED", error=error, log_tail=tail)
            status.checkpoints = self.registry.checkpoints(job_id)
        elif slurm_state == "CANCELLED":
            status = self.registry.update_status(job_id, state="CANCELLED")
            status.checkpoints = self.registry.checkpoints(job_id)
        return status

    def cancel(self, job_id: str) -> JobStatus:
        """Stop the job; returns once its SLURM job has ended (its trainer checkpointed on SIGTERM)."""
        status = self.status(job_id)
        if status.state in TERMINAL_STATES:
            return status
        if status.slurm_job_id is not None:
            self.slurm.cancel(status.slurm_job_id)
            self._wait_gone(status.slurm_job_id)
        return self.registry.update_status(job_id, state="CANCELLED")

    def submit_pending(self) -> int:
        """Submit recorded jobs that never reached SLURM (it was down); returns how many went."""
        sent = 0
        for job_id in self.registry.job_ids():
            status = self.registry.status(job_id)
            if status.state == "QUEUED" and status.slurm_job_id is None:
                try:
                    self._launch(job_id)
                    sent += 1
                except SlurmUnavailableError:
                    break
        return sent

    def _wait_gone(self, slurm_job_id: str | None, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        if slurm_job_id is None:
            return
        deadline = time.monotonic() + timeout_s
        while self.slurm.state([slurm_job_id]).get(slurm_job_id) in _SLURM_LIVE:
            if time.monotonic() > deadline:
                raise JobStillStoppingError(f"SLURM job {slurm_job_id} is still stopping; try again shortly")
            time.sleep(0.2)

    def _launch(self, job_id: str) -> None:
        job_dir = self.registry.dir(job_id)
        script = job_dir / "train.sbatch"
        script.write_text(render_sbatch_script(self.registry.job(job_id), job_dir, python=sys.executable))
        slurm_id = self.slurm.sbatch(script, workdir=job_dir, env=self.config.to_env())  # the script's #SBATCH lines decide
        self.registry.update_status(job_id, slurm_job_id=slurm_id)
        log.info("job %s submitted to SLURM as %s", job_id, slurm_id)

    def _check_backend(self, base_model: str, hp: Hyperparameters) -> None:
        """A model megatron cannot split is refused now, not when the trainer starts. (A built-in
        model not built yet has no config here; the trainer checks it.)"""
        config = self.models.path(base_model) / "config.json"
        if hp.backend != "megatron" or not config.exists():
            return
        problems = megatron_problems(SimpleNamespace(**json.loads(config.read_text())), hp.tensor_parallel, hp.max_seq_len)
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

