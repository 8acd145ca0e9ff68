"""TrainingService against the real SLURM cluster: one launcher per job, every SLURM state mapped, the
job id from what determines the weights, status reads that never wait for SLURM.

A blocker job holds every CPU of the one node, so the training jobs these tests submit stay PENDING
(real SLURM jobs, in SLURM's queue) and no trainer runs. Wrappers placed first on PATH stand in for a
slow ``sbatch`` or ``squeue``: each sleeps, then runs the real command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.models.store import ModelStore
from llama_stack_scalarlm.registry.files import read_model, write_model
from llama_stack_scalarlm.registry.schema import Hyperparameters, JobStatus, TrainingJob
from llama_stack_scalarlm.slurm import Slurm, SlurmUnavailableError
from llama_stack_scalarlm.training import TrainingService

from .conftest import TINY

ROWS = b"".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}).encode() + b"\n" for i in range(8))
REAL: dict[str, str] = {}  # SLURM's own commands, found once the cluster is up (see below)


@pytest.fixture(scope="module", autouse=True)
def _real_slurm_commands(slurm_cluster):
    """Looked up after the cluster fixture has run, not at import: on a fresh machine it is what
    installs SLURM, so at collection time there is no squeue to find."""
    REAL.update((name, shutil.which(name)) for name in ("sbatch", "squeue"))
    assert all(REAL.values()), REAL


@pytest.fixture(scope="module")
def slurm(slurm_cluster):
    return Slurm(slurm_cluster.conf)


@pytest.fixture(scope="module")
def blocker(slurm, tmp_path_factory):
    """A job on every CPU of the node: training jobs submitted meanwhile wait in SLURM's queue."""
    work = tmp_path_factory.mktemp("blocker")
    script = work / "block.sh"
    script.write_text("#!/bin/bash\nsleep 3600\n")
    job = slurm.sbatch(script, job_name="blocker", output=work / "out.txt",
                       cpus_per_task=slurm.cluster_resources().cpus_per_node)
    _wait_state(slurm, job, {"RUNNING"})
    yield job
    slurm.cancel(job)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory, tiny) -> Path:
    state = tmp_path_factory.mktemp("training-state")
    store = ModelStore(state / "models")
    for name in (TINY, "my-model"):
        store.build(name, lambda out: shutil.copytree(tiny, out, dirs_exist_ok=True))
    return state


@pytest.fixture
def service(state_dir, slurm, blocker):
    made = []

    def make(timeout_s: float = 30.0, **limits) -> TrainingService:
        config = ScalarLMConfig(state_dir=state_dir, limits=limits)
        made.append(TrainingService(config, Slurm(slurm.conf_path, timeout_s=timeout_s)))
        made[-1].start_background()
        return made[-1]

    yield make
    for made_service in made:
        made_service.stop_background()
    for line in _squeue(slurm, "-o", "%i|%j").splitlines():  # what the test left queued
        job_id, _, name = line.partition("|")
        if name.startswith("scalarlm-"):
            slurm.cancel(job_id)


@pytest.fixture
def wrapped(tmp_path, monkeypatch):
    """Put a wrapper for a SLURM command first on PATH: ``wrapped("sbatch", body)``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def wrap(name: str, body: str) -> None:
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\nREAL={REAL[name]}\n{body}\n")
        path.chmod(0o755)

    return wrap


def _wait_state(slurm, job_id, states, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while (state := slurm.state([job_id])[job_id]) not in states:
        assert time.monotonic() < deadline, f"SLURM job {job_id} still {state}"
        time.sleep(0.2)


def _wait(predicate, timeout_s=15.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _squeue(slurm, *args: str) -> str:
    """SLURM's own squeue (the real one, whatever a test put on PATH)."""
    return subprocess.run([REAL["squeue"], "-h", *args], env={**os.environ, "SLURM_CONF": str(slurm.conf_path)},
                          capture_output=True, text=True, check=True).stdout


def _slurm_jobs_named(slurm, name) -> dict[str, str]:
    """Every SLURM job of that name that slurmctld still knows (any state): id -> state."""
    return dict(line.split("|") for line in _squeue(slurm, "--states=all", "-n", name, "-o", "%i|%T").splitlines())


def _name(job_id: str) -> str:
    return f"scalarlm-{job_id[:24]}"


def _submit(service, seed: int, **settings):
    sha = service.uploads.put_bytes(ROWS)
    return service.submit(TINY, sha, Hyperparameters(steps=5, seed=seed, **settings))


def _cancelled_job(service, seed: int, **settings):
    status = _submit(service, seed, **settings)
    assert status.slurm_job_id is not None
    assert service.cancel(status.job_id).state == "CANCELLED"
    return status


# ------------------------------------------------------------------------- one launcher per job


@pytest.mark.parametrize("stopped", ["CANCELLED", "FAILED"])
def test_concurrent_resubmits_launch_one_slurm_job(service, slurm, wrapped, stopped):
    training = service()
    job = _cancelled_job(training, seed=101 if stopped == "CANCELLED" else 111)
    training.registry.update_status(job.job_id, state=stopped)  # FAILED: as a trainer records an error
    before = set(_slurm_jobs_named(slurm, _name(job.job_id)))
    wrapped("sbatch", 'sleep 1; exec "$REAL" "$@"')  # a slow controller: launches overlap
    barrier = threading.Barrier(5)
    errors = []

    def run(call):
        barrier.wait()
        try:
            call()
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    calls = [lambda: _submit(training, seed=training.registry.job(job.job_id).hyperparameters.seed)] * 3
    calls += [training.submit_pending] * 2
    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    launched = set(_slurm_jobs_named(slurm, _name(job.job_id))) - before
    assert len(launched) == 1, f"SLURM jobs launched for one job: {sorted(launched)}"
    assert training.status(job.job_id).slurm_job_id in launched


def test_a_timed_out_sbatch_that_queued_the_job_is_adopted(service, slurm, wrapped):
    """sbatch answers too late (after the client's timeout) but the job is queued: the pending loop's
    retry finds it by name instead of submitting a second one."""
    training = service(timeout_s=2)
    wrapped("sbatch", '(sleep 4; exec "$REAL" "$@") >/dev/null 2>&1 </dev/null & disown; sleep 30')
    with pytest.raises(SlurmUnavailableError):
        _submit(training, seed=102)
    (job_id,) = [j for j in training.registry.job_ids() if training.registry.job(j).hyperparameters.seed == 102]
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:  # the pending loop's retries, back to back
        training.submit_pending()
        time.sleep(0.5)
    queued = _slurm_jobs_named(slurm, _name(job_id))
    assert len(queued) == 1, f"SLURM jobs for one training job: {queued}"
    assert training.status(job_id).slurm_job_id == next(iter(queued))


# --------------------------------------------------------------------------- SLURM states mapped


def test_every_slurm_job_state_is_mapped():
    from llama_stack_scalarlm.slurm import JOB_STATES

    # squeue(1) of SLURM 22.05, "JOB STATE CODES"
    documented = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE", "FAILED",
                  "NODE_FAIL", "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING", "RESV_DEL_HOLD", "REQUEUE_FED",
                  "REQUEUE_HOLD", "REQUEUED", "RESIZING", "REVOKED", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT",
                  "STOPPED", "SUSPENDED", "TIMEOUT"}
    assert documented <= JOB_STATES.keys()
    assert {JOB_STATES[s] for s in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "DEADLINE",
                                    "TIMEOUT", "FAILED")} == {"failed"}
    assert JOB_STATES["COMPLETED"] == "ended_ok" and JOB_STATES["CANCELLED"] == "cancelled"
    assert JOB_STATES["REQUEUED"] == "requeued" and JOB_STATES["PENDING"] == JOB_STATES["RUNNING"] == "live"


def test_a_job_unknown_to_slurm_fails_once_its_trainer_is_silent_and_resumes(service, slurm):
    training = service()
    job = _cancelled_job(training, seed=103)
    status_file = training.registry.dir(job.job_id) / "status.json"

    def record(updated: float) -> None:
        recorded = read_model(status_file, JobStatus)
        write_model(status_file, recorded.model_copy(
            update={"state": "TRAINING", "slurm_job_id": "987654", "updated": updated}))

    record(time.time())  # SLURM never heard of 987654, but the trainer reported just now
    time.sleep(3)
    assert training.status(job.job_id).state == "TRAINING"
    record(time.time() - 3600)  # and now it has been silent for an hour
    failed = _wait(lambda: (s := training.status(job.job_id)).state == "FAILED" and s, what="FAILED")
    assert "987654" in failed.error and "unknown to SLURM" in failed.error, failed.error

    again = _submit(training, seed=103)  # resubmitting resumes it
    assert again.job_id == job.job_id and again.state == "QUEUED" and again.error is None
    assert _slurm_jobs_named(slurm, _name(job.job_id))[again.slurm_job_id] == "PENDING"


def test_a_job_cancelled_behind_our_back_is_cancelled(service, slurm):
    training = service()
    job = _submit(training, seed=104)
    subprocess.run(["scancel", job.slurm_job_id], env={**os.environ, "SLURM_CONF": str(slurm.conf_path)}, check=True)
    _wait(lambda: training.status(job.job_id).state == "CANCELLED", what="CANCELLED")


# ---------------------------------------------------------------------------------- the job id


def test_a_longer_time_limit_is_the_same_job_relaunched_with_it(service, slurm):
    training = service()
    first = _cancelled_job(training, seed=105, time_limit_minutes=60)
    again = _submit(training, seed=105, time_limit_minutes=90, checkpoint_every=7, keep_checkpoints=1)
    assert again.job_id == first.job_id and again.slurm_job_id != first.slurm_job_id
    job_dir = training.registry.dir(first.job_id)
    assert "#SBATCH --time=90" in (job_dir / "train.sbatch").read_text().splitlines()
    assert _squeue(slurm, "-j", again.slurm_job_id, "-o", "%l").strip() == "1:30:00"
    hp = training.registry.job(first.job_id).hyperparameters
    assert (hp.time_limit_minutes, hp.checkpoint_every, hp.keep_checkpoints) == (90, 7, 1)


def test_new_settings_for_a_queued_job_are_a_409_and_change_nothing(service):
    training = service()
    queued = _submit(training, seed=106)
    with pytest.raises(Exception) as refused:
        _submit(training, seed=106, time_limit_minutes=90)
    assert getattr(refused.value, "status_code", None) == 409 and "time_limit_minutes" in str(refused.value)
    assert training.registry.job(queued.job_id).hyperparameters.time_limit_minutes == 60
    assert training.status(queued.job_id).slurm_job_id == queued.slurm_job_id


def test_resuming_needs_the_process_count_that_wrote_the_checkpoints(service):
    training = service()
    job = _cancelled_job(training, seed=107)
    checkpoint = training.registry.dir(job.job_id) / "checkpoints" / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / ".complete").touch()
    with pytest.raises(InvalidFieldError) as refused:
        _submit(training, seed=107, processes_per_node=2)
    assert refused.value.field == "processes_per_node"
    assert training.registry.job(job.job_id).hyperparameters.processes_per_node == 1
    assert training.status(job.job_id).state == "CANCELLED"


def test_other_base_model_bytes_under_the_same_name_are_another_job(service, state_dir):
    training = service()
    sha = training.uploads.put_bytes(ROWS)
    hp = Hyperparameters(steps=5, seed=108)
    first = training.submit("my-model", sha, hp)
    config = state_dir / "models" / "my-model" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"scalarlm_test": "other bytes"}))
    second = training.submit("my-model", sha, hp)
    assert second.job_id != first.job_id
    jobs = [read_model(training.registry.dir(j) / "job.json", TrainingJob) for j in (first.job_id, second.job_id)]
    assert jobs[0].base_model_sha256 != jobs[1].base_model_sha256


def test_the_model_hash_is_cached_by_size_and_mtime(state_dir):
    store = ModelStore(state_dir / "models")
    weights = store.path(TINY) / "model.safetensors"
    digest = store.content_hash(TINY)
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert store.content_hash(TINY) == digest, "same size and mtime: the cached hash, no re-read"
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert store.content_hash(TINY) != digest
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert store.content_hash(TINY) == digest


# ---------------------------------------------------------------- status reads and the dataset


def test_status_does_not_wait_for_a_slow_squeue(service, wrapped):
    training = service(timeout_s=5)
    job = _submit(training, seed=109)
    wrapped("squeue", 'sleep 20; exec "$REAL" "$@"')
    started = time.monotonic()
    assert training.status(job.job_id).job_id == job.job_id
    assert [s.job_id for s in training.jobs() if s.job_id == job.job_id] == [job.job_id]
    assert time.monotonic() - started < 1.0, "status waited for squeue"


def test_the_dataset_line_bound_is_the_configured_one(service):
    training = service(max_dataset_line_bytes=1024)
    sha = training.uploads.put_bytes(json.dumps({"input": "x" * 2000, "output": "y"}).encode() + b"\n")
    before = training.registry.job_ids()
    with pytest.raises(InvalidFieldError) as refused:
        training.submit(TINY, sha, Hyperparameters(steps=5, seed=110))
    assert refused.value.field == "dataset" and "limit of 1024 bytes" in str(refused.value)
    assert training.registry.job_ids() == before


# ------------------------------------------------------------------------- trained from a trained job


def _completed(training, status, kind: str):
    """Record a submitted job as its trainer would have finished it (one complete checkpoint)."""
    checkpoint = training.registry.dir(status.job_id) / "checkpoints" / "checkpoint-5"
    checkpoint.mkdir()
    (checkpoint / ("adapter_config.json" if kind == "lora" else "config.json")).write_text("{}")
    (checkpoint / ".complete").touch()
    training.cancel(status.job_id)  # out of SLURM's queue
    training.registry.update_status(status.job_id, state="COMPLETED")
    return checkpoint


def test_a_job_trained_from_a_job_records_and_hashes_its_parent(service):
    training = service()
    lora = {"rank": 8, "alpha": 16}
    sha = training.uploads.put_bytes(ROWS)
    parent = _submit(training, seed=120, lora=lora)
    with pytest.raises(InvalidFieldError) as refused:
        training.submit(parent.job_id, sha, Hyperparameters(steps=5, seed=121, lora=lora))
    assert refused.value.field == "model" and "QUEUED" in str(refused.value), "a parent must be completed"

    adapter = _completed(training, parent, "lora")
    child = training.submit(parent.job_id, sha, Hyperparameters(steps=5, seed=121, lora=lora))
    job = training.registry.job(child.job_id)
    assert (job.parent_job_id, job.parent_kind, job.init_adapter_path) == (parent.job_id, "lora", str(adapter))
    assert job.base_model == TINY and job.kind == "lora" and child.parent_job_id == parent.job_id
    assert training.submit(f"scalarlm/{parent.job_id}", sha, job.hyperparameters).job_id == child.job_id
    assert training.submit(TINY, sha, job.hyperparameters).job_id != child.job_id, "the id hashes the parent"
    for hp, field in ((Hyperparameters(steps=5, lora={"rank": 4, "alpha": 16}), "lora.rank"),
                      (Hyperparameters(steps=5, backend="megatron"), "model")):
        with pytest.raises(InvalidFieldError) as refused:
            training.submit(parent.job_id, sha, hp)
        assert refused.value.field == field

    full = _submit(training, seed=122)
    weights = _completed(training, full, "full")
    on_full = training.registry.job(training.submit(full.job_id, sha, Hyperparameters(steps=5, lora=lora)).job_id)
    assert on_full.base_model_path == str(weights) and on_full.init_adapter_path is None
    assert on_full.kind == "full", "a LoRA on a full fine-tune's weights is exported merged"
    with pytest.raises(InvalidFieldError) as refused:
        training.submit("job-" + "0" * 24, sha, Hyperparameters(steps=5))
    assert refused.value.field == "model"
