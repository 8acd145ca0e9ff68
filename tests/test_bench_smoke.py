"""Every bench runs end to end in its smoke mode (tiny sizes; no timing is asserted) and writes its
figures, so that ``make bench`` cannot break unnoticed when the code it drives changes.

The smokes spend most of their time waiting (engines starting, SLURM jobs, checkpoints), so they
run ``LANES`` at a time, longest first, from the module's first test on; each test checks its own."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from .ailuminate import ailuminate_dir

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
LANES = 2
# name: (timeout_s, needs the tests' SLURM cluster), longest first
SMOKES = {"hot_pickup_bench": (900, True), "safety_bench": (900, True), "adapter_churn_bench": (900, True),
          "loop_bench": (900, True), "tool_calls_bench": (900, True), "full_path_bench": (600, False),
          "trainer_bench": (300, False), "upload_bench": (300, False), "queue_bench": (120, False)}


def run_bench(name: str, folder: Path, *flags: str, timeout_s: float) -> dict:
    """Run ``bench/<name>.py --smoke`` and return the section it wrote to its results file."""
    results = folder / "results.json"
    done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--results", str(results), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{name} exited with {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    [section] = [s for s in json.loads(results.read_text()).values() if s["bench"] == name]
    assert section["parameters"]["smoke"] and section["figures"]
    for figure in section["figures"]:
        numbers = figure["values"] if "values" in figure else [v for p in figure["pairs"] for v in p.values()]
        assert numbers and all(math.isfinite(v) for v in numbers), figure
    return section


@pytest.fixture(scope="module")
def smokes(request, tmp_path_factory):
    """Each runnable smoke's future, all started at once on ``LANES`` lanes; the reason for the others."""
    try:
        cluster = request.getfixturevalue("slurm_cluster")
    except pytest.skip.Exception as skipped:
        cluster, no_slurm = None, str(skipped)
    try:
        ailuminate = ailuminate_dir()
    except pytest.skip.Exception as skipped:
        ailuminate, no_ailuminate = None, str(skipped)
    futures: dict[str, Future | str] = {}
    with ThreadPoolExecutor(LANES) as lanes:
        for name, (timeout_s, needs_slurm) in SMOKES.items():
            flags = []
            if needs_slurm:
                if cluster is None:
                    futures[name] = no_slurm
                    continue
                flags += ["--slurm-state", str(cluster.state_dir)]
            if name == "safety_bench":
                if ailuminate is None:
                    futures[name] = no_ailuminate
                    continue
                flags += ["--ailuminate-dir", str(ailuminate)]
            futures[name] = lanes.submit(run_bench, name, tmp_path_factory.mktemp(name), *flags, timeout_s=timeout_s)
        yield futures
        for future in futures.values():
            if isinstance(future, Future):
                future.cancel()


@pytest.mark.parametrize("name", SMOKES)
def test_bench_smoke(name, smokes):
    """SLURM ones run on the tests' cluster (started as root; skipped otherwise, saying why)."""
    outcome = smokes[name]
    if isinstance(outcome, str):
        pytest.skip(outcome)
    outcome.result()


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
