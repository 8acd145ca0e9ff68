"""What every bench shares: N interleaved (baseline, subject) pairs measured in one process, their
medians and the spread of the per-pair ratios, the printed table, and the bench's section of the
results file (``bench/out/results.json``, where the README's figures come from).

One run on a shared 2-core machine can be moved by other processes' load: the spread of the
per-pair ratios (and the load average, recorded beside them) shows whether it was.

``python bench/harness.py [results.json]`` prints the table of every bench in the file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "out" / "results.json"
DEFAULT_PAIRS = 5
WAIT_S = 900  # the longest any one step of a bench may take before it gives up
B = TypeVar("B")
S = TypeVar("S")


# ------------------------------------------------------------------------------------ arguments


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The bench's argument parser, with the flags every bench takes."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="(baseline, subject) pairs measured")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: checks that the bench runs end to end (its figures mean nothing)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file (JSON) to write into")
    return parser


def parse(parser: argparse.ArgumentParser, smoke: dict) -> argparse.Namespace:
    """Parse the command line; with ``--smoke`` the ``smoke`` sizes (and 1 pair) replace the
    defaults, while flags given on the command line still win."""
    if "--smoke" in sys.argv[1:]:
        parser.set_defaults(**{"pairs": 1, **smoke})
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs: at least 1")
    return args


# ------------------------------------------------------------------------------------ measuring


def pairs(baseline: Callable[[], B], subject: Callable[[], S], n: int) -> list[tuple[B, S]]:
    """``n`` pairs, each side measured right after the other, the order alternating (baseline first,
    then subject first, ...) so that a drift in the machine's load falls on both sides alike."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            b = baseline()
            s = subject()
        else:
            s = subject()
            b = baseline()
        out.append((b, s))
    return out


def until(ready: Callable[[], object], what: str, poll_s: float = 0.05):
    """``ready()``'s first truthy value; an error if it takes longer than WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not (value := ready()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {WAIT_S} s")
        time.sleep(poll_s)
    return value


# ------------------------------------------------------------------------------------ the cluster


@contextlib.contextmanager
def slurm(state: Path, running: Path | None = None) -> Iterator[None]:
    """A SLURM cluster for a bench's server: one already running under ``running`` (its conf linked
    into ``state``), or one started here (slurm/cluster.sh) and stopped at the end."""
    state.mkdir(parents=True)
    if running is not None:
        (state / "slurm").symlink_to(running.resolve() / "slurm")
        yield
        return
    env = {**os.environ, "SCALARLM_STATE_DIR": str(state)}
    cluster = ["bash", str(ROOT / "slurm" / "cluster.sh")]
    subprocess.run([*cluster, "start"], env=env, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*cluster, "stop"], env=env, check=False, capture_output=True)


@contextlib.contextmanager
def served(running: Path | None, timeout_s: float = 600, **settings) -> Iterator:
    """A `llama stack run` server (one engine worker, ``settings`` as in ``tests.stack``) on a SLURM
    cluster (see :func:`slurm`), in a state root of its own that is removed at the end."""
    import tempfile

    from tests.stack import StackServer

    with tempfile.TemporaryDirectory() as tmp, slurm(Path(tmp) / "state", running):
        server = StackServer(Path(tmp) / "state", workers=1, **settings)
        server.start(wait_for_workers=1, timeout_s=timeout_s)
        try:
            yield server
        finally:
            server.stop()


# ------------------------------------------------------------------------------------ reporting


class Report:
    """One bench's figures: comparisons (pairs, their ratio) and plain values; ``finish`` prints
    them and replaces the bench's section of the results file."""

    def __init__(self, bench: str, args: argparse.Namespace, variant: str = ""):
        """``variant`` (e.g. the model) keeps runs of one bench with other settings in sections of their own."""
        self.bench = bench
        self.variant = variant
        self.results = args.results
        self.parameters = {k: v for k, v in vars(args).items() if k != "results"}
        self.load_start = os.getloadavg()[0]
        self.figures: list[dict] = []

    def compare(self, name: str, unit: str, measured: list[tuple[float, float]], subject: str,
                baseline: str) -> None:
        """``measured``: (baseline, subject) per pair, in ``unit``; the ratio is subject / baseline."""
        ratios = [s / b for b, s in measured]
        self.figures.append({
            "name": name, "unit": unit, "subject": subject, "baseline": baseline,
            "pairs": [{"baseline": b, "subject": s, "ratio": r} for (b, s), r in zip(measured, ratios, strict=True)],
            "subject_median": statistics.median(s for _, s in measured),
            "baseline_median": statistics.median(b for b, _ in measured),
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        })

    def value(self, name: str, unit: str, values: list[float]) -> None:
        """A figure with no baseline of its own (a breakdown, a latency), over one or more runs."""
        self.figures.append({"name": name, "unit": unit, "values": values, "median": statistics.median(values),
                             "min": min(values), "max": max(values)})

    def finish(self) -> None:
        section = {"bench": self.bench, "variant": self.variant, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "machine": machine(), "load_avg_1min": {"start": self.load_start, "end": os.getloadavg()[0]},
                   "parameters": self.parameters, "figures": self.figures}
        print(table(section))
        write_section(self.results, section)


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    return {"cpus": os.cpu_count(), "cpu_model": model}


def write_section(path: Path, section: dict) -> None:
    """Replace the bench's own section, keeping the others; a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results["/".join(filter(None, (section["bench"], section["variant"])))] = section
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=1, default=str) + "\n")  # default: paths among the parameters
    os.replace(partial, path)


def table(section: dict) -> str:
    p = section["parameters"]
    load = section["load_avg_1min"]
    name = " ".join(filter(None, (section["bench"], section["variant"])))
    lines = [f"{name}: {p['pairs']} pair(s){' (smoke: figures mean nothing)' if p['smoke'] else ''}; "
             f"{section['machine']['cpus']} CPUs ({section['machine']['cpu_model']}); load avg {load['start']:.2f} "
             f"-> {load['end']:.2f}; {section['timestamp']}",
             f"  {'figure':58} {'ratio':>7} {'(min-max)':>15}   medians: subject / baseline"]
    for f in section["figures"]:
        if "ratio" in f:
            r = f["ratio"]
            spread = f"({r['min']:.3f}-{r['max']:.3f})"
            lines.append(f"  {f['name']:58} {r['median']:7.3f} {spread:>15}   {_num(f['subject_median'])} / "
                         f"{_num(f['baseline_median'])} {f['unit']}   ({f['subject']} / {f['baseline']})")
        else:
            spread = f"({_num(f['min'])}-{_num(f['max'])})" if len(f["values"]) > 1 else ""
            figure = " ".join(part for part in (_num(f["median"]), f["unit"], spread) if part)
            lines.append(f"  {f['name']:58} {'':7} {'':15}   {figure}")
    return "\n".join(lines)


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    print("\n\n".join(table(section) for section in json.loads(path.read_text()).values()))


if __name__ == "__main__":
    main()
