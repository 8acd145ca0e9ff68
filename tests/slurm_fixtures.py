"""A real SLURM cluster for tests: ``slurm/cluster.sh`` with its state in a pytest tmp dir.

SLURM daemons are machine-wide (fixed ports), so ``cluster.sh start`` first stops any cluster
another state dir left running; the fixture stops its own at the end.
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).resolve().parents[1] / "slurm" / "cluster.sh"


@dataclass
class SlurmCluster:
    state_dir: Path
    conf: Path
    env: dict[str, str]


def _cluster(action: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), action], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("starting munged and the SLURM daemons needs root")
    state_dir = tmp_path_factory.mktemp("slurm-state")
    conf = state_dir / "slurm" / "conf" / "slurm.conf"
    env = {"SCALARLM_STATE_DIR": str(state_dir), "SLURM_CONF": str(conf)}
    proc = _cluster("start", env, timeout_s=600)  # the first run may apt-get install SLURM
    if proc.returncode != 0:
        _cluster("stop", env, timeout_s=120)
        pytest.fail(f"slurm/cluster.sh start failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    yield SlurmCluster(state_dir=state_dir, conf=conf, env=env)
    stop = _cluster("stop", env, timeout_s=120)
    assert stop.returncode == 0, stop.stderr
