"""Every bench runs end to end in its smoke mode (tiny sizes; no timing is asserted) and writes its
figures, so that ``make bench`` cannot break unnoticed when the code it drives changes."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from .ailuminate import ailuminate_dir

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def run_bench(name: str, tmp_path: Path, *flags: str, timeout_s: float) -> dict:
    """Run ``bench/<name>.py --smoke`` and return the section it wrote to its results file."""
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--results", str(results), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{name} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    [section] = [s for s in json.loads(results.read_text()).values() if s["bench"] == name]
    assert section["parameters"]["smoke"] and section["figures"]
    for figure in section["figures"]:
        numbers = figure["values"] if "values" in figure else [v for p in figure["pairs"] for v in p.values()]
        assert numbers and all(math.isfinite(v) for v in numbers), figure
    return section


@pytest.mark.parametrize(("name", "timeout_s"), [("queue_bench", 120), ("trainer_bench", 300),
                                                 ("upload_bench", 300), ("full_path_bench", 600)])
def test_bench_smoke(name, timeout_s, tmp_path):
    run_bench(name, tmp_path, timeout_s=timeout_s)


def test_hot_pickup_bench_smoke(slurm_cluster, tmp_path):
    """Needs SLURM: runs on the tests' cluster (started as root; skipped otherwise, saying why)."""
    run_bench("hot_pickup_bench", tmp_path, "--slurm-state", str(slurm_cluster.state_dir), timeout_s=900)


def test_tool_calls_bench_smoke(slurm_cluster, tmp_path):
    run_bench("tool_calls_bench", tmp_path, "--slurm-state", str(slurm_cluster.state_dir), timeout_s=600)


def test_adapter_churn_bench_smoke(slurm_cluster, tmp_path):
    run_bench("adapter_churn_bench", tmp_path, "--slurm-state", str(slurm_cluster.state_dir), timeout_s=900)


def test_loop_bench_smoke(slurm_cluster, tmp_path):
    run_bench("loop_bench", tmp_path, "--slurm-state", str(slurm_cluster.state_dir), timeout_s=900)


def test_safety_bench_smoke(slurm_cluster, tmp_path):
    folder = ailuminate_dir()
    run_bench("safety_bench", tmp_path, "--slurm-state", str(slurm_cluster.state_dir), "--ailuminate-dir",
              str(folder), timeout_s=600)


def test_harness_alternates_pairs_and_keeps_other_sections(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_harness", BENCH / "harness.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    calls = []
    measured = harness.pairs(lambda: calls.append("b") or 1.0, lambda: calls.append("s") or 2.0, 3)
    assert measured == [(1.0, 2.0)] * 3 and calls == ["b", "s", "s", "b", "b", "s"]
    path = tmp_path / "results.json"
    one, two, again = ({"bench": "b", "variant": v, "figures": [i]} for i, v in enumerate(["x", "y", "x"]))
    for section in (one, two, again):
        harness.write_section(path, section)
    assert json.loads(path.read_text()) == {"b/x": again, "b/y": two}
