"""llama_stack_scalarlm.slurm against a real single-node cluster (slurm/cluster.sh)."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from llama_stack_scalarlm.slurm import Slurm, SlurmUnavailableError

from .slurm_fixtures import _cluster


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


@pytest.fixture
def slurm(slurm_cluster):
    return Slurm(slurm_cluster.conf)


def wait_for(slurm, job_id, states, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while (st := slurm.state([job_id])[job_id]) not in states:
        assert time.monotonic() < deadline, f"job {job_id} still {st}, wanted {states}"
        time.sleep(0.2)
    return st


def script(tmp_path, body):
    path = tmp_path / "job.sh"
    path.write_text(f"#!/bin/bash\n{body}\n")
    return path


def test_job_completes_with_output(slurm, tmp_path):
    out = tmp_path / "out.txt"
    job = slurm.sbatch(script(tmp_path, 'echo "hello $GREETING from $SLURM_JOB_ID"'), job_name="hello",
                       output=out, workdir=tmp_path, env={"GREETING": "world"}, time_limit_minutes=5)
    assert wait_for(slurm, job, FINAL) == "COMPLETED"
    assert out.read_text().strip() == f"hello world from {job}"


def test_failing_job_is_failed(slurm, tmp_path):
    job = slurm.sbatch(script(tmp_path, "exit 3"), output=tmp_path / "out.txt")
    assert wait_for(slurm, job, FINAL) == "FAILED"


def test_running_job_shows_in_queue_then_cancelled(slurm, tmp_path):
    job = slurm.sbatch(script(tmp_path, "sleep 300"), job_name="sleeper", output=tmp_path / "out.txt")
    wait_for(slurm, job, {"RUNNING"})
    [entry] = [e for e in slurm.queue() if e.job_id == job]
    assert (entry.name, entry.state, entry.nodes) == ("sleeper", "RUNNING", 1)
    slurm.cancel(job)
    assert wait_for(slurm, job, FINAL) == "CANCELLED"
    slurm.cancel(job)  # cancelling an ended job is a no-op


def test_requeue_puts_a_running_job_back_in_the_queue(slurm, tmp_path):
    job = slurm.sbatch(script(tmp_path, "sleep 300"), output=tmp_path / "out.txt")
    wait_for(slurm, job, {"RUNNING"})
    slurm.requeue(job)
    wait_for(slurm, job, {"PENDING"})
    slurm.cancel(job)
    assert wait_for(slurm, job, FINAL) == "CANCELLED"


def test_unknown_job_state(slurm):
    assert slurm.state(["999999"]) == {"999999": "UNKNOWN"}


def test_cluster_resources_match_this_machine(slurm):
    res = slurm.cluster_resources()
    assert res.nodes == 1
    assert res.cpus_per_node == int(subprocess.check_output(["nproc"]))
    assert res.memory_mb_per_node > 0


def test_unreachable_controller(slurm_cluster, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "slurm.conf"
    conf.write_text(slurm_cluster.conf.read_text() + f"SlurmctldPort={port}\n")
    dead = Slurm(conf)
    assert Slurm(slurm_cluster.conf).available()
    assert not dead.available()
    with pytest.raises(SlurmUnavailableError) as err:
        dead.sbatch(script(tmp_path, "true"))
    assert err.value.status_code == 503
    with pytest.raises(SlurmUnavailableError):
        Slurm(tmp_path / "missing.conf").state(["1"])


def test_rendered_training_script_logs_into_a_job_dir_with_a_space(slurm, tmp_path):
    """sbatch reads the #SBATCH lines itself (bash -n skips them): a path with a space or a '%' (a
    filename-pattern symbol) must still name the job's own log file."""
    from llama_stack_scalarlm.registry.schema import Hyperparameters, TrainingJob
    from llama_stack_scalarlm.trainer.launch import render_sbatch_script

    job_dir = tmp_path / "state dir 100%j" / "job-abc"
    job_dir.mkdir(parents=True)
    job = TrainingJob(job_id="job-abc", base_model="m", base_model_path="/m", dataset_sha256="0" * 64,
                      trainer_version="v", hyperparameters=Hyperparameters(time_limit_minutes=5))
    script = job_dir / "train.sbatch"
    script.write_text(render_sbatch_script(job, job_dir, python="/bin/false"))  # the "trainer" exits 1 at once
    job_id = slurm.sbatch(script, workdir=job_dir)
    assert wait_for(slurm, job_id, FINAL) == "FAILED"
    log = (job_dir / "slurm.log").read_text()
    assert f"job {job_id} restart 0" in log and "trainer exited with 1" in log, log
    assert sorted(p.name for p in job_dir.iterdir()) == [".sbatch-started", "slurm.log", "train.sbatch"]


def _impostor(tmp_path, name: str, *args: str) -> subprocess.Popen:
    """A process named like a SLURM daemon (an executable file called ``name``) with a site's own SLURM_CONF."""
    site_conf = tmp_path / "site-slurm.conf"
    site_conf.write_text("ClusterName=site\n")
    exe = tmp_path / name
    os.symlink(args[0], exe)
    return subprocess.Popen([str(exe), *args[1:]], env={**os.environ, "SLURM_CONF": str(site_conf)},
                            start_new_session=True, stdout=subprocess.PIPE, text=True)


def test_start_leaves_a_slurm_daemon_it_did_not_start_alone(slurm_cluster, tmp_path):
    impostor = _impostor(tmp_path, "slurmd", shutil.which("sleep"), "300")
    try:
        done = _cluster("start", slurm_cluster.env, timeout_s=120)
        assert done.returncode == 0, done.stderr
        assert impostor.poll() is None, f"cluster.sh stopped a slurmd it did not start: {done.stderr}"
        assert Slurm(slurm_cluster.conf).available()
    finally:
        impostor.kill()
        impostor.wait()


def test_start_names_a_foreign_daemon_holding_slurms_port(slurm_cluster, tmp_path):
    assert _cluster("stop", slurm_cluster.env, timeout_s=120).returncode == 0
    listen = "import socket, time; s = socket.create_server(('', 6817)); print('up', flush=True); time.sleep(300)"
    impostor = _impostor(tmp_path, "slurmctld", sys.executable, "-c", listen)
    try:
        assert impostor.stdout.readline().strip() == "up"
        done = _cluster("start", slurm_cluster.env, timeout_s=120)
        assert done.returncode == 1
        assert f"port 6817 is held by slurmctld (pid {impostor.pid}" in done.stderr, done.stderr
        assert impostor.poll() is None
    finally:
        impostor.kill()
        impostor.wait()
        assert _cluster("start", slurm_cluster.env, timeout_s=120).returncode == 0
