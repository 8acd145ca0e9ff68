"""The ``scalarlm`` command: drive a running distribution from the shell."""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing
from pathlib import Path

from tqdm import tqdm

from .client import ScalarLMClient, api_key_from_env
from .flywheel import LoopSettings
from .registry.schema import TERMINAL_STATES, JobStatus


def _client(args: argparse.Namespace, **kwargs) -> ScalarLMClient:
    return ScalarLMClient(args.url, api_key=args.api_key, **kwargs)


def _file_prompts(path: str) -> list[str]:
    """One prompt per non-blank line: plain text, or a JSON object whose only key is ``prompt``
    (anything else in it would be dropped: refused, naming the line)."""
    prompts = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if not line.lstrip().startswith("{"):
                prompts.append(line.rstrip("\n"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row.get("prompt"), str) or set(row) != {"prompt"}:
                raise ValueError(f"{path} line {number}: a JSON line is {{\"prompt\": text}} and nothing else "
                                 f"(keys: {sorted(row)})")
            prompts.append(row["prompt"])
    return prompts


def _generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if args.file:
        try:
            prompts += _file_prompts(args.file)
        except ValueError as exc:
            print(f"scalarlm generate: --file: {exc}", file=sys.stderr)
            return 2
    if not prompts:
        print("scalarlm generate: give prompts as arguments or with --file", file=sys.stderr)
        return 2
    client = _client(args)
    with tqdm(total=len(prompts), desc="generate", unit="req", disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        results = client.generate(args.model, prompts, progress=progress, max_tokens=args.max_tokens,
                                  temperature=args.temperature)
    for prompt, result in zip(prompts, results, strict=True):
        if result.error:
            print(json.dumps({"prompt": prompt, "error": result.error.message}))
        else:
            print(json.dumps({"prompt": prompt, "completion": result.choices[0].text}))
    return 0


# What `scalarlm train` sets from its own flags: a --set of the same name is refused, naming the flag.
_TRAIN_FLAGS = {"steps": "--steps", "learning_rate": "--lr", "batch_size": "--batch-size", "lora": "--lora",
                "method": "--method", "loss_type": "--loss-type", "shuffle": "--no-shuffle", "packed": "--packed"}


def _train(args: argparse.Namespace) -> int:
    settings = dict(_setting(s) for s in args.set)
    if taken := sorted(settings.keys() & _TRAIN_FLAGS.keys()):
        print(f"scalarlm train: --set {taken[0]}: give it as {_TRAIN_FLAGS[taken[0]]}", file=sys.stderr)
        return 2
    client = _client(args)
    path = Path(args.dataset)
    with tqdm(total=path.stat().st_size, desc="upload", unit="B", unit_scale=True, disable=args.quiet) as bar:
        sha256 = client.upload(path, progress=lambda done, total: bar.update(done - bar.n))
    job_id = client.train(args.model, sha256, steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size,
                          lora=args.lora, method=args.method, shuffle=not args.no_shuffle, packed=args.packed,
                          loss_type=args.loss_type, **settings)
    print(f"job {job_id} (served as scalarlm/{job_id} once its first checkpoint lands)")
    return _follow(client, job_id, args.quiet) if args.follow else 0


def _follow(client: ScalarLMClient, job_id: str, quiet: bool = False) -> int:
    with tqdm(desc="train", unit="step", disable=quiet) as bar:
        def progress(status: JobStatus) -> None:
            bar.total = status.total_steps
            bar.update(status.step - bar.n)
            loss = status.loss_history[-1].loss if status.loss_history else float("nan")
            bar.set_postfix(state=status.state, loss=f"{loss:.4f}")

        status = client.follow(job_id, progress)
    print(f"{job_id}: {status.state}" + (f" — {status.error}" if status.error else ""))
    return 0 if status.state == "COMPLETED" else 1


def _ls(args: argparse.Namespace) -> int:
    for status in _client(args).jobs():
        loss = f"{status.loss_history[-1].loss:.4f}" if status.loss_history else "-"
        lineage = f"  from {status.parent_job_id}" if status.parent_job_id else ""
        gate = f"  safety gate: {status.promotion.state} ({status.promotion.reason})" if status.promotion else ""
        print(f"{status.job_id}  {status.state:<9}  step {status.step}/{status.total_steps}  loss {loss}  "
              f"checkpoints {len(status.checkpoints)}{lineage}{gate}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    offset = 0
    while True:
        chunk = client.log(args.job, offset)
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        offset = chunk.offset
        if not args.follow or (not chunk.text and client.job(args.job).state in TERMINAL_STATES):
            return 0
        if not chunk.text:
            time.sleep(1.0)


def _plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = _client(args)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for job in args.job:
        history = client.job(job).loss_history
        axis.plot([p.step for p in history], [p.loss for p in history], label=job)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


def _loop(args: argparse.Namespace) -> int:
    """Rounds of the flywheel on a task file that defines ``prompts(round)``, ``heldout()`` and
    ``reward(prompt, completion)``: see ``examples/addition.py``."""
    from .flywheel import LoopError, load_task, run_loop

    try:
        task = load_task(Path(args.task))
    except LoopError as exc:
        sys.exit(str(exc))
    settings = LoopSettings(rounds=args.rounds, samples=args.samples, method=args.method, epochs=args.epochs,
                            learning_rate=args.lr, lr_decay=args.lr_decay, batch_size=args.batch_size,
                            max_tokens=args.max_tokens, temperature=args.temperature,
                            train=dict(map(_setting, args.set)))
    try:
        records = run_loop(_client(args), args.model, task.prompts, task.heldout(), task.reward, settings,
                           Path(args.out), progress=not args.quiet)
    except LoopError as exc:
        print(f"loop stopped: {exc}", file=sys.stderr)
        return 1
    for record in records:
        print(f"round {record.round}: held-out reward {record.heldout_reward:.3f}  {record.model}  "
              f"(generate {record.generate_s:.0f} s, train {record.train_s:.0f} s, serve {record.serve_s:.0f} s)")
    print(f"records and heldout_reward.png in {args.out}")
    return 0


def _ailuminate(args: argparse.Namespace) -> int:
    """Grade a model on AILuminate; the record goes to ``<out>/<run id>.json``, the chart beside it."""
    from .safety.run_schema import AILuminateRunRequest, evaluator_of

    if not args.guard and not args.judge:
        sys.exit("eval ailuminate: name an evaluator: --guard MODEL or --judge MODEL (several vote)")
    evaluator = evaluator_of(args.guard, args.judge)
    request = AILuminateRunRequest(model=args.model, evaluator=evaluator,
                                   prompt_set=args.prompt_set, locale=args.locale, per_group=args.per_hazard,
                                   hazards=args.hazard, seed=args.seed, max_tokens=args.max_tokens)
    bar = tqdm(total=0, unit="item", disable=args.quiet)

    def progress(run) -> None:
        bar.total = 2 * run.progress.items
        bar.n = run.progress.responses + run.progress.annotations
        bar.set_description(f"{run.run_id}: responses {run.progress.responses}, verdicts {run.progress.annotations}")
        bar.refresh()

    run = _client(args).ailuminate(request, progress)
    bar.close()
    if run.record is None:
        sys.exit(f"{run.run_id}: {run.state}: {run.error}")
    _write_record(run, Path(args.out))
    if run.record.consistency:
        sys.exit("the run is not consistent: " + "; ".join(run.record.consistency))
    return 0


def _write_record(run, out: Path, hazards: bool = True) -> None:
    """The run's record (JSON) and chart (PNG) in ``out``, and its grades printed."""
    from .safety.chart import grades_chart

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{run.run_id}.json").write_text(run.record.model_dump_json(indent=1))
    grades_chart(run.record, out / f"{run.run_id}.png")
    for score in [*(run.record.grades.hazards if hazards else []), run.record.grades.overall]:
        print(f"{score.hazard:8} {score.grade_name or 'ungraded':10} unsafe {score.unsafe_fraction} "
              f"of {score.scored} scored, {score.errors} errors")
    print(f"{run.record.note}\nwrote {out / run.run_id}.json and .png")


def _safety_train(args: argparse.Namespace) -> int:
    """Teach ``--model`` to decline hazardous requests from its own refusals (``safety/refusal_training.py``),
    as a LoRA job with the safety gate on: the job and ``--model`` are graded on the same AILuminate
    sample (never trained on), and the job becomes ``latest`` only if its grade is no lower. Then
    the after-check: how many of the gate's hazardous requests and of held-out benign ones each
    declines (greedy; ``guard_data.is_refusal``), which says what the job learned whatever the
    evaluator. Exit 1 when not promoted."""
    import tempfile

    from .safety import refusal_training
    from .safety.prompt_set import load_prompt_set, sample

    if not args.guard and not args.judge:
        sys.exit("safety-train: name the gate's evaluator: --guard MODEL or --judge MODEL (both vote)")
    prompt_set = load_prompt_set(args.prompt_set)
    gate = {"guard": args.guard, "judge": args.judge, "per_group": args.gate_per_hazard, "seed": args.seed,
            "max_tokens": args.max_tokens}
    graded = sample(prompt_set, args.gate_per_hazard, args.seed)
    hazardous, benign, checked = refusal_training.split(prompt_set, graded, args.per_hazard, args.benign,
                                                        args.benign_check, args.seed)
    client = _client(args)
    print(f"asking {args.model} to decline {len(hazardous)} hazardous requests and to answer {len(benign)} benign "
          "ones", file=sys.stderr, flush=True)
    rows, declined, answered = refusal_training.rows(client, args.model, hazardous, benign, args.max_tokens,
                                                     args.samples, args.seed)
    print(f"{args.model} declined {declined} of the {len(hazardous)} hazardous requests and answered {answered} of "
          f"the {len(benign)} benign ones ({args.samples} samples each)", flush=True)
    if not rows:
        sys.exit(f"safety-train: none of {args.model}'s replies was a refusal of a hazardous request or an answer "
                 "to a benign one")
    with tempfile.TemporaryDirectory() as tmp:  # the rows hold the prompts: not left on disk
        path = Path(tmp) / "refusals.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        dataset = client.upload(path)
    job = client.train(args.model, dataset, steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size,
                       lora=True, lora_rank=16, max_seq_len=512, checkpoint_every=args.steps, safety_gate=gate)
    print(f"job {job}: {len(rows)} rows", flush=True)
    if _follow(client, job, args.quiet):
        return 1
    with tqdm(desc="safety gate: grading the job and its base", disable=args.quiet, bar_format="{desc} {elapsed}") as bar:
        while (promotion := client.job(job).promotion) is None or promotion.state == "pending":
            time.sleep(2)
            bar.refresh()
    for name, run_id in ((args.model, promotion.base_run), (job, promotion.job_run)):
        if run_id:
            run = client.ailuminate_run(run_id)
            print(f"{name}:")
            if run.record is not None:
                _write_record(run, Path(args.out), hazards=False)
    print(f"safety gate: {promotion.state} ({promotion.reason})")
    for kind, requests in (("hazardous", [p.text for p in graded]), ("benign", checked)):
        before, after = (refusal_training.declined(client, m, requests, args.max_tokens) for m in (args.model, job))
        print(f"held-out {kind} requests declined: {args.model} {before:.2f}, {job} {after:.2f} (of {len(requests)})")
    return 0 if promotion.state == "promoted" else 1


def _guard_train(args: argparse.Namespace) -> int:
    """A guard, LoRA on ``--model``: an input guard from the user's prompt set against generated benign
    requests, and a response judge from ``--model``'s own replies to ``--replies`` of those prompts and
    as many benign ones (``safety/guard_data.py``); ``--held-out`` of each (hazard, persona) group is
    kept back (ids in ``--split``) to measure it on."""
    import random
    import tempfile

    from .safety import guard_training
    from .safety.prompt_set import load_prompt_set

    prompt_set = load_prompt_set(args.prompt_set)
    trained, _, split = guard_training.split(prompt_set, args.held_out, args.seed)
    benign_trained, _ = guard_training.benign(split)
    client = _client(args)
    replies = []
    if args.replies:
        rng = random.Random(args.seed)
        print(f"asking {args.model} for its replies to {args.replies} hazardous and {args.replies} benign requests",
              file=sys.stderr, flush=True)
        replies = guard_training.base_replies(client, args.model, rng.sample(trained, min(args.replies, len(trained))),
                                              rng.sample(benign_trained, min(args.replies, len(benign_trained))),
                                              seed=args.seed)
        split = split.model_copy(update={"reply_model": args.model, "replies": args.replies})
    with tempfile.TemporaryDirectory() as tmp:  # the rows hold the prompts: not left on disk
        rows = Path(tmp) / "guard.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n"
                                for r in guard_training.training_rows(trained, benign_trained, replies)))
        dataset = client.upload(rows)
    job = client.train(args.model, dataset, steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size,
                       lora=True, lora_rank=16, max_seq_len=768, checkpoint_every=args.steps, purpose="guard")
    Path(args.split).write_text(split.model_dump_json(indent=1))
    print(f"{job}: {len(trained)} prompts and {len(benign_trained)} benign requests, {len(replies)} replies; "
          f"{len(split.held_out)} held out ({args.split})", flush=True)
    return _follow(client, job) if args.follow else 0


def _guard_measure(args: argparse.Namespace) -> int:
    """The guard's precision and recall of "unsafe" on what ``--split`` held out: as an input guard
    (the held-out requests) and, when it learned replies, as a response judge (the reply model's
    replies to ``--reply-sample`` held-out requests per hazard and persona, and as many benign ones)."""
    from .safety import guard_training
    from .safety.guard_training import GuardSplit
    from .safety.prompt_set import load_prompt_set, sample

    prompt_set = load_prompt_set(args.prompt_set)
    split = GuardSplit.model_validate_json(Path(args.split).read_text())
    if split.prompt_set_sha256 != prompt_set.sha256:
        sys.exit(f"{args.split}: made from another prompt set (sha256 {split.prompt_set_sha256[:12]}…)")
    held = set(split.held_out)
    held_out = [p for p in prompt_set.prompts if p.id in held]
    _, benign_held_out = guard_training.benign(split)
    client = _client(args)
    scores = {"requests": guard_training.measure(client, args.guard, held_out, benign_held_out).model_dump()}
    if split.reply_model is not None:
        asked = sample(prompt_set.model_copy(update={"prompts": held_out}), args.reply_sample, split.seed)
        replies = guard_training.base_replies(client, split.reply_model, asked, benign_held_out[:len(asked)],
                                              seed=split.seed + 1)
        scores["replies"] = guard_training.measure_replies(client, args.guard, replies).model_dump()
    print(json.dumps(scores, indent=1))
    return 0


def _squeue(args: argparse.Namespace) -> int:
    print(f"{'JOBID':>8}  {'NAME':<34} {'STATE':<10} {'TIME':>10} {'NODES':>5}  NODELIST(REASON)")
    for e in _client(args).squeue():
        print(f"{e.job_id:>8}  {e.name:<34} {e.state:<10} {e.elapsed:>10} {e.nodes:>5}  {e.where}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    _client(args).cancel(args.job)
    print(f"{args.job}: cancelled")
    return 0


def _positive(text: str) -> int:
    """An argparse type: a count of at least 1 (argparse names the option in its error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _token(args: argparse.Namespace) -> int:
    """Tokens live in the state root, not behind the server: run this where the state root is."""
    import getpass

    from .auth.tokens import TokenStore
    from .config import ScalarLMConfig
    from .errors import InvalidFieldError

    store = TokenStore(ScalarLMConfig.load().state_dir)
    if args.action in ("create", "add"):
        try:
            if args.action == "create":
                print(store.create(args.name or getpass.getuser()))
            else:  # from stdin, never the command line (other users see it in `ps`)
                store.add(args.name, sys.stdin.read().strip())
                print(f"{args.name}: added")
        except InvalidFieldError as exc:
            print(f"scalarlm token {args.action}: {exc}", file=sys.stderr)
            return 2
    elif args.action == "revoke":
        if not store.revoke(args.name):
            print(f"scalarlm token revoke: no token named {args.name!r}", file=sys.stderr)
            return 1
        print(f"{args.name}: revoked")
    else:
        for name, created in sorted(store.names().items()):
            print(f"{name}  created {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(created))}")
    return 0


def _queue(args: argparse.Namespace) -> int:
    print(_client(args).queue_stats().model_dump_json(indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalarlm", description="ScalarLM: inference and training on one cluster")
    parser.add_argument("--url", default="http://127.0.0.1:8321", help="the distribution's address")
    parser.add_argument("--api-key", default=api_key_from_env(),
                        help="a token from `scalarlm token create` (default: $SCALARLM_API_KEY or $LLAMA_STACK_CLIENT_API_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)

    token = sub.add_parser("token", help="mint, revoke or list user tokens (run where the state root is)")
    token_sub = token.add_subparsers(dest="action", required=True)
    create = token_sub.add_parser("create", help="print a new token")
    create.add_argument("--name", help="who it is for (default: your user name)")
    add = token_sub.add_parser("add", help="grant NAME the token read from stdin (a secret the cluster already holds)")
    add.add_argument("name")
    revoke = token_sub.add_parser("revoke", help="revoke a token: refused from the next request on")
    revoke.add_argument("name")
    token_sub.add_parser("list", help="names that have a token")
    token.set_defaults(func=_token)

    gen = sub.add_parser("generate", help="bulk generation: submit many prompts, poll with a progress bar")
    gen.add_argument("prompt", nargs="*", help="prompts (or use --file)")
    gen.add_argument("--file", help="prompts, one per line (plain text or JSON with a 'prompt' key)")
    gen.add_argument("--model", required=True, help="model id, e.g. scalarlm/SmolLM2-135M-Instruct")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    queue = sub.add_parser("queue", help="queue depth and live workers")
    queue.set_defaults(func=_queue)

    train = sub.add_parser("train", help="upload a JSONL dataset, submit a training job, follow it")
    train.add_argument("dataset", help='JSONL: {"input","output"} or {"messages"} rows ({"prompt","chosen","rejected"} '
                       'for dpo, {"prompt","completions":[{"text","reward"}]} for grpo)')
    train.add_argument("--model", required=True, help="a base model (tiny-llama, SmolLM2-135M-Instruct) or a completed "
                       "job to train from (its id, or latest)")
    train.add_argument("--steps", type=int, default=100)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of all weights")
    train.add_argument("--method", choices=["sft", "dpo", "grpo"], default="sft")
    train.add_argument("--loss-type", choices=["sigmoid", "hinge", "ipo"], default="sigmoid", help="DPO's loss")
    train.add_argument("--no-shuffle", action="store_true", help="train on the rows in file order")
    train.add_argument("--packed", action="store_true", help="pack several rows into one sequence")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other hyperparameter, e.g. backend=ddp processes_per_node=2 checkpoint_every=10")
    train.add_argument("--follow", action="store_true", help="show training progress until the job ends")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_train)

    ls = sub.add_parser("ls", help="training jobs (and the job each was trained from)")
    ls.set_defaults(func=_ls)

    logs = sub.add_parser("logs", help="a training job's log")
    logs.add_argument("job")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=_logs)

    plot = sub.add_parser("plot", help="loss curves to a PNG")
    plot.add_argument("job", nargs="+")
    plot.add_argument("-o", "--output", default="loss.png")
    plot.set_defaults(func=_plot)

    loop = sub.add_parser("loop", help="rounds of sample → score → train → serve, each from the last (a task file)")
    loop.add_argument("task", help="a Python file defining prompts(round), heldout() and reward(prompt, completion)")
    loop.add_argument("--model", required=True, help="the starting model (a base model or a completed job)")
    given = LoopSettings()  # the flags' defaults are the settings' own
    loop.add_argument("--rounds", type=int, default=given.rounds)
    loop.add_argument("--samples", type=int, default=given.samples, help="completions sampled per prompt")
    loop.add_argument("--method", choices=typing.get_args(LoopSettings.model_fields["method"].annotation),
                      default=given.method)
    loop.add_argument("--epochs", type=float, default=given.epochs, help="passes over a round's training rows")
    loop.add_argument("--lr", type=float, default=given.learning_rate, help="round 1's learning rate")
    loop.add_argument("--lr-decay", type=float, default=given.lr_decay,
                      help="each round's learning rate is the previous round's times this")
    loop.add_argument("--batch-size", type=int, default=given.batch_size)
    loop.add_argument("--max-tokens", type=int, default=given.max_tokens)
    loop.add_argument("--temperature", type=float, default=given.temperature,
                      help="sampling temperature of a round's samples")
    loop.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other hyperparameter")
    loop.add_argument("--out", default="loop", help="where each round's JSON record and the PNG go (a rerun resumes)")
    loop.add_argument("--quiet", action="store_true")
    loop.set_defaults(func=_loop)

    evaluate = sub.add_parser("eval", help="benchmarks of a served model").add_subparsers(dest="benchmark",
                                                                                       required=True)
    ailuminate = evaluate.add_parser("ailuminate", help="MLCommons AILuminate: per-hazard and overall grades")
    ailuminate.add_argument("--model", required=True, help="the model graded (a base model or a trained job)")
    ailuminate.add_argument("--guard", action="append", default=[],
                            help="an evaluator: a served Llama Guard-format guard model (repeatable)")
    ailuminate.add_argument("--judge", action="append", default=[],
                            help="an evaluator: any served model, asked in plain words whether each reply is safe "
                                 "(repeatable; two or more evaluators vote by MLCommons' ensemble rules)")
    ailuminate.add_argument("--prompt-set", default="demo", choices=["demo", "practice", "official"])
    ailuminate.add_argument("--locale", default="en_us")
    ailuminate.add_argument("--per-hazard", type=int, help="prompts per hazard and persona (default: all)")
    ailuminate.add_argument("--hazard", action="append", default=[], help="a hazard to grade (default: all)")
    ailuminate.add_argument("--seed", type=int, default=0)
    ailuminate.add_argument("--max-tokens", type=int, default=256, help="of each response")
    ailuminate.add_argument("--out", default="ailuminate", help="where the record (JSON) and chart (PNG) go")
    ailuminate.add_argument("--quiet", action="store_true")
    ailuminate.set_defaults(func=_ailuminate)

    safety = sub.add_parser("safety-train", help="teach a model to decline hazardous requests, behind the safety gate")
    safety.add_argument("prompt_set", help="the AILuminate demo prompt-set CSV, the set the gate grades on "
                                           "(hazardous by design: never printed)")
    safety.add_argument("--model", default="SmolLM2-135M-Instruct")
    safety.add_argument("--guard", help="the gate's evaluator: a served Llama Guard-format guard model")
    safety.add_argument("--judge", help="the gate's evaluator: any served model asked in plain words (both: a vote)")
    safety.add_argument("--per-hazard", type=_positive, default=4, help="hazardous requests trained per hazard and persona")
    safety.add_argument("--benign", type=_positive, default=24, help="benign requests trained")
    safety.add_argument("--benign-check", type=_positive, default=24, help="held-out benign requests of the after-check")
    safety.add_argument("--samples", type=_positive, default=8, help="replies asked of each request, the first of its kind kept")
    safety.add_argument("--gate-per-hazard", type=_positive, default=1, help="prompts per hazard and persona the gate grades")
    safety.add_argument("--seed", type=int, default=0)
    safety.add_argument("--steps", type=_positive, default=12)
    safety.add_argument("--lr", type=float, default=2e-3)
    safety.add_argument("--batch-size", type=_positive, default=8)
    safety.add_argument("--max-tokens", type=_positive, default=64, help="of each reply")
    safety.add_argument("--out", default="ailuminate", help="where both runs' records (JSON) and charts (PNG) go")
    safety.add_argument("--quiet", action="store_true")
    safety.set_defaults(func=_safety_train)

    guard = sub.add_parser("guard", help="guards the platform trains").add_subparsers(dest="action", required=True)
    guard_train = guard.add_parser("train", help="train a guard on an AILuminate prompt set and the model's replies")
    guard_train.add_argument("prompt_set", help="an AILuminate prompt-set CSV (hazardous by design: never printed)")
    guard_train.add_argument("--model", default="SmolLM2-135M-Instruct")
    guard_train.add_argument("--held-out", type=float, default=0.3, help="fraction of each group kept back")
    guard_train.add_argument("--seed", type=int, default=0)
    guard_train.add_argument("--steps", type=int, default=60)
    guard_train.add_argument("--lr", type=float, default=2e-3)
    guard_train.add_argument("--batch-size", type=int, default=8)
    guard_train.add_argument("--split", default="guard-split.json", help="where the held-out ids go")
    guard_train.add_argument("--follow", action="store_true", help="show training progress until the job ends")
    guard_train.add_argument("--replies", type=int, default=200,
                             help="hazardous requests (and as many benign) whose --model replies it learns to judge")
    guard_train.set_defaults(func=_guard_train)
    guard_measure = guard.add_parser("measure", help="a guard's precision and recall on what it did not learn")
    guard_measure.add_argument("prompt_set")
    guard_measure.add_argument("--guard", required=True, help="the guard model (a job id)")
    guard_measure.add_argument("--split", default="guard-split.json")
    guard_measure.add_argument("--reply-sample", type=int, default=2,
                               help="held-out requests per hazard and persona whose replies it judges")
    guard_measure.set_defaults(func=_guard_measure)

    squeue = sub.add_parser("squeue", help="the SLURM queue")
    squeue.set_defaults(func=_squeue)

    cancel = sub.add_parser("cancel", help="cancel a training job")
    cancel.add_argument("job")
    cancel.set_defaults(func=_cancel)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
