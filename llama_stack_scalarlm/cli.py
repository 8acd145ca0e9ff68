"""The ``scalarlm`` command: drive a running distribution from the shell."""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm

from .client import ScalarLMClient


def _generate(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if args.file:
        with open(args.file) as handle:
            prompts += [json.loads(line)["prompt"] if line.lstrip().startswith("{") else line.rstrip("\n")
                        for line in handle if line.strip()]
    if not prompts:
        print("scalarlm generate: give prompts as arguments or with --file", file=sys.stderr)
        return 2
    client = ScalarLMClient(args.url)
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


def _queue(args: argparse.Namespace) -> int:
    print(ScalarLMClient(args.url).queue_stats().model_dump_json(indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalarlm", description="ScalarLM: inference and training on one cluster")
    parser.add_argument("--url", default="http://127.0.0.1:8321", help="the distribution's address")
    sub = parser.add_subparsers(dest="command", required=True)

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

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
