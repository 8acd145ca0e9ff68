"""Agents on CPU: what constrained decoding costs, and what training teaches a small model.

1. Throughput, through `llama stack run` with the OpenAI SDK: the same requests (concurrent
   chats, temperature 0) as plain chat (baseline) and as a forced tool call (the tools in the
   prompt, ``tool_choice: required``: xgrammar's structural tag) or a strict ``json_schema``
   response format (subjects). Generated tokens/s, subject / baseline.
2. Accuracy of the base model's tool calls, left to choose (``tool_choice: auto``), on held-out
   requests (``tool_calls_data.py``: held-out tools, phrasings and values); then a LoRA job on the
   generated conversations through ScalarLM's own post_training (SLURM), and the same score of
   the trained model, served under its job id.

Starts its own SLURM cluster (slurm/cluster.sh, root) unless ``--slurm-state`` names a running one.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
import tool_calls_data as data  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "city", "age"], "additionalProperties": False}


def tokens_per_s(client: openai.OpenAI, model: str, requests: list[dict], max_tokens: int) -> float:
    def one(extra: dict) -> int:
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens, **extra)
        return reply.usage.completion_tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        tokens = sum(pool.map(one, requests))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--chats", type=int, default=16, help="concurrent requests of the throughput workload")
    parser.add_argument("--max-tokens", type=int, default=48)
    # Each conversation is seen once. A step of 4 rows of ~420 tokens costs ~10 s on 2 CPU cores
    # (fp32, forward and backward through all 135M weights for the adapter's gradients).
    parser.add_argument("--train-rows", type=int, default=240)
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--slurm-state", type=Path, help="state root of a running SLURM cluster to use")
    args = harness.parse(parser, smoke={"model": "tiny-llama", "chats": 2, "max_tokens": 4, "train_rows": 8,
                                        "held_out": 5, "steps": 2, "batch_size": 2})
    report = harness.Report("tool_calls_bench", args, variant=args.model)
    with harness.served(args.slurm_state, served_models=[args.model]) as server:
        state = server.state_dir
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, timeout=600, max_retries=0)
        model = f"scalarlm/{args.model}"
        asks = data.requests(args.chats, held_out=True, seed=7)
        plain = [{"messages": r.messages} for r in asks]
        subjects = {
            "forced tool call (tool_choice required)":
                [{"messages": r.messages, "tools": r.tools, "tool_choice": "required"} for r in asks],
            "json_schema response format (strict)":
                [{"messages": r.messages, "response_format": {"type": "json_schema", "json_schema": {
                    "name": "person", "schema": PERSON, "strict": True}}} for r in asks],
        }
        tokens_per_s(client, model, plain, args.max_tokens)  # warm
        for name, requests in subjects.items():
            measured = harness.pairs(lambda: tokens_per_s(client, model, plain, args.max_tokens),
                                     lambda r=requests: tokens_per_s(client, model, r, args.max_tokens),
                                     args.pairs)
            report.compare(f"{name}, {args.chats} concurrent", "tokens/s", measured, subject=name,
                           baseline="plain chat, same messages")

        held_out = data.requests(args.held_out, held_out=True, seed=1)
        before = data.score(client, model, held_out)
        scalarlm = ScalarLMClient(server.url, api_key=server.token)
        rows = state / "tool_calls.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in data.training_rows(args.train_rows)))
        started = time.monotonic()
        job = scalarlm.train(args.model, scalarlm.upload(rows), steps=args.steps, learning_rate=args.lr,
                             batch_size=args.batch_size, lora=True, lora_rank=16, max_seq_len=1024,
                             checkpoint_every=args.steps)
        done = scalarlm.follow(job, poll_s=2)
        if done.state != "COMPLETED":
            raise SystemExit(f"training {job}: {done.state} {done.error}")
        trained_s = time.monotonic() - started
        harness.until(lambda: job in [m.id.removeprefix("scalarlm/") for m in client.models.list()],
                      "the trained model", poll_s=1)
        after = data.score(client, f"scalarlm/{job}", held_out)
    for key in ("right_tool_valid_arguments", "exact_arguments", "no_call_when_none_fits"):
        report.value(f"held-out {key.replace('_', ' ')}: base", "fraction", [before[key]])
        report.value(f"held-out {key.replace('_', ' ')}: trained", "fraction", [after[key]])
    report.value(f"LoRA training ({args.train_rows} conversations, {args.steps} steps), submit -> done", "s",
                 [trained_s])
    report.value("held-out requests with a fitting tool", "requests", [before["tool_requests"]])
    report.value("held-out requests with none", "requests", [before["no_tool_requests"]])
    report.finish()


if __name__ == "__main__":
    main()
