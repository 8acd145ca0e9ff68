"""Safety: what a benchmark run costs, and what a guard the platform trains has learned.

1. The guard's held-out accuracy: precision and recall of "unsafe" (and accuracy, and how often a
   flag names the right hazard) of the base model used as a guard, and of the same model after a
   LoRA job on the input-guard rows (``safety/guard_training.py``), measured on
   - AILuminate demo prompts of every (hazard, persona) group the job never saw, and generated
     benign requests it never saw (split by prompt id);
   - a second set of another origin: the plainly unsafe and safe requests of Llama Stack's own
     safety tests (``tests/integration/safety/test_safety.py`` at v0.7.1), read from
     ../shared/llama-stack-tests when it is there;
   - as a response judge (the job also learns the base model's own replies to ``--replies``
     trained prompts and as many benign requests, ``safety/guard_data.py``): the base model's
     replies to the held-out prompts (asked plainly and told to decline) and benign requests,
     against the labeller's labels (a reply to a hazardous prompt that does not decline is unsafe).
2. AILuminate run throughput against plain bulk generation of the same prompts on the same model
   (goal >= 0.8): what judging every response with the trained guard and journaling it cost. Each
   pair: the sampled prompts through the bulk route (baseline), then a run of the same prompts,
   max_tokens and temperature (subject); each run has a seed of its own, so none resumes another.

Starts its own `llama stack run` and, unless ``--slurm-state`` names a running cluster's state
root, its own SLURM cluster. The prompt set is read from ``--ailuminate-dir`` (default:
../shared/data/ailuminate beside the checkout); prompts are never printed.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from llama_stack_scalarlm.safety import guard_training  # noqa: E402
from llama_stack_scalarlm.safety.guard_data import is_refusal  # noqa: E402
from llama_stack_scalarlm.safety.prompt_set import Prompt, load_prompt_set, official_file_name, sample  # noqa: E402
from llama_stack_scalarlm.safety.run_schema import AILuminateRunRequest, GuardEvaluator  # noqa: E402
from tests.ailuminate import find_ailuminate_dir  # noqa: E402

STACK_SAFETY_TESTS = harness.ROOT.parent / "shared" / "llama-stack-tests" / "tests" / "integration" / "safety" / "test_safety.py"


def stack_examples(path: Path) -> tuple[list[str], list[str]] | None:
    """(unsafe, safe) example requests of Llama Stack's ``test_unsafe_examples`` and ``test_safe_examples``."""
    if not path.is_file():
        return None
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name in ("test_unsafe_examples", "test_safe_examples"):
            for statement in node.body:
                if isinstance(statement, ast.Assign) and getattr(statement.targets[0], "id", "") == "examples":
                    found[node.name] = [e.value for e in statement.value.elts if e.value]
    return found.get("test_unsafe_examples", []), found.get("test_safe_examples", [])


def record(report: harness.Report, who: str, where: str, score: guard_training.GuardScore) -> None:
    for key in ("precision", "recall", "accuracy", "hazard_accuracy"):
        value = getattr(score, key)
        if value is not None:
            report.value(f"{where}: {who}: {key.replace('_', ' ')}", "fraction", [value])
    report.value(f"{where}: {who}: replies not a verdict", "fraction", [score.errors / score.items])


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--held-out", type=float, default=0.3, help="fraction of each group never trained on")
    parser.add_argument("--measure", type=int, default=5, help="held-out prompts measured per (hazard, persona)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--replies", type=int, default=200, help="trained prompts whose base-model replies it learns")
    parser.add_argument("--per-group", type=int, default=2, help="run throughput: prompts per hazard and persona")
    parser.add_argument("--max-tokens", type=int, default=64, help="run throughput: of each response")
    parser.add_argument("--ailuminate-dir", type=Path, default=find_ailuminate_dir())
    parser.add_argument("--slurm-state", type=Path, help="state root of a running SLURM cluster to use")
    args = harness.parse(parser, smoke={"model": "tiny-llama", "measure": 1, "steps": 2, "batch_size": 2,
                                        "per_group": 1, "max_tokens": 4, "replies": 2})
    if args.ailuminate_dir is None:
        parser.error("--ailuminate-dir: no AILuminate prompt set found")
    report = harness.Report("safety_bench", args, variant=args.model)
    prompt_set = load_prompt_set(args.ailuminate_dir / official_file_name("demo", "en_us"))
    trained, held_out, split = guard_training.split(prompt_set, args.held_out, seed=0)
    benign_trained, benign_held_out = guard_training.benign(split)
    measured: list[Prompt] = []
    for group in sorted({(p.hazard, p.persona) for p in held_out}):
        measured += [p for p in held_out if (p.hazard, p.persona) == group][:args.measure]
    benign_measured = benign_held_out[:max(1, len(measured) // 2)]
    second = stack_examples(STACK_SAFETY_TESTS)
    asked = sample(prompt_set, args.per_group, 0)
    with harness.served(args.slurm_state, served_models=[args.model], ailuminate_dir=args.ailuminate_dir) as server:
        client = ScalarLMClient(server.url, api_key=server.token, timeout_s=900)

        held_out_replies = guard_training.base_replies(client, args.model, measured, benign_measured, seed=1)

        def measure_all(guard: str, who: str) -> None:
            record(report, who, "held-out demo prompts + benign", guard_training.measure(
                client, guard, measured, benign_measured))
            record(report, who, "base model's replies to those", guard_training.measure_replies(
                client, guard, held_out_replies))
            if second is not None:
                unsafe, safe = second
                others = [Prompt(id=f"stack-{i}", text=t, hazard="vcr", label="vcr", persona="-", locale="en_us")
                          for i, t in enumerate(unsafe)]  # their hazards are not labelled: hazard accuracy is moot
                score = guard_training.measure(client, guard, others, safe)
                record(report, who, "Llama Stack's safety examples", score.model_copy(update={"hazard_accuracy": None}))

        measure_all(args.model, "base model")
        rows = server.state_dir / "guard.jsonl"
        spread = trained[::max(1, len(trained) // max(1, args.replies))][:args.replies]  # every group alike
        replies = guard_training.base_replies(client, args.model, spread, benign_trained[:args.replies]) if spread else []
        report.value("replies learned: declining / all to hazardous prompts", "fraction",
                     [sum(is_refusal(r) for _, h, r in replies if h) / max(1, sum(1 for _, h, _ in replies if h))])
        rows.write_text("".join(json.dumps(r) + "\n"
                                for r in guard_training.training_rows(trained, benign_trained, replies)))
        started = time.monotonic()
        job = client.train(args.model, client.upload(rows), steps=args.steps, learning_rate=args.lr,
                           batch_size=args.batch_size, lora=True, lora_rank=16, max_seq_len=768,
                           checkpoint_every=args.steps, purpose="guard")
        done = client.follow(job, poll_s=5)
        if done.state != "COMPLETED":
            raise SystemExit(f"training {job}: {done.state} {done.error}")
        report.value("training the guard", "s", [time.monotonic() - started])
        client.wait_served(job)
        measure_all(job, "trained guard")
        seeds = iter(range(1, 10_000))

        def plain() -> float:
            start = time.perf_counter()
            results = client.generate(args.model, [[{"role": "user", "content": p.text}] for p in asked],
                                      max_tokens=args.max_tokens, temperature=0.01, seed=0)
            assert all(r.error is None for r in results), [r.error for r in results if r.error][:1]
            return len(asked) / (time.perf_counter() - start)

        def benchmark_run() -> float:
            request = AILuminateRunRequest(model=args.model, evaluator=GuardEvaluator(model=job),
                                           per_group=args.per_group, seed=next(seeds), max_tokens=args.max_tokens)
            start = time.perf_counter()
            run = client.ailuminate(request, poll_s=0.2)
            assert run.record is not None, run.error
            return run.record.items / (time.perf_counter() - start)

        plain()  # warm
        measured_runs = harness.pairs(plain, benchmark_run, args.pairs)
    report.value("held-out items measured (hazardous + benign)", "items", [len(measured) + len(benign_measured)])
    report.compare(f"AILuminate run / bulk generation, {len(asked)} prompts", "items/s", measured_runs,
                   subject="benchmark run (responses + trained guard's verdicts)", baseline="bulk generation alone")
    report.finish()


if __name__ == "__main__":
    main()
