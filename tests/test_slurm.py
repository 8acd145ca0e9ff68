"""llama_stack_scalarlm.slurm against a real single-node cluster (slurm/cluster.sh)."""

import socket
import subprocess
import time

import pytest

from llama_stack_scalarlm.slurm import Slurm, SlurmUnavailableError


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
