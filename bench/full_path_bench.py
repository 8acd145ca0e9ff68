"""Full path vs. the same vLLM engine in-process, on the same requests: generated tokens/s.

Two workloads against one `llama stack run` server with one engine worker:
- bulk: every prompt in one bulk call (``ScalarLMClient.generate``: client -> server -> durable
  queue -> engine worker -> vLLM -> back, results long-polled);
- chat: 64 concurrent OpenAI chat completions (``openai.AsyncOpenAI``; interactive calls, each
  waiting on its answer, through Llama Stack's inference router and its store of completions).
Baseline of each: the same requests run at once by an ``EngineCore`` in this process, built with the
worker's own engine arguments; ``EngineCore.run`` is the worker's own call (bulk: chat template,
tokens, sampling parameters, vLLM; chat: the same OpenAI request body through vLLM's OpenAI layer,
as the worker serves it), so the ratio is what the path around the engine costs. Both engines
stay up, warm, through the run, and each pair is measured back to back.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness  # noqa: E402
from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from llama_stack_scalarlm.config import ScalarLMConfig  # noqa: E402
from llama_stack_scalarlm.queue.schema import GenerationRequest, OpenAIRequest, WorkItem  # noqa: E402
from tests.stack import StackServer  # noqa: E402

_ids = itertools.count()


def workloads(args) -> dict[str, list]:
    texts = [f"Write a short story about item number {i}." for i in range(max(args.prompts, args.chats))]
    common = dict(model=args.model, max_tokens=args.max_tokens, temperature=0)
    return {
        "bulk": [GenerationRequest(kind="completion", prompt=t, **common) for t in texts[:args.prompts]],
        "chat": [OpenAIRequest(kind="openai.chat", model=args.model,
                               body={"messages": [{"role": "user", "content": t}], **common})
                 for t in texts[:args.chats]],
    }


async def start_engine(state: Path, model: str):
    """The worker's engine, built as the worker builds it (in a running loop, as vLLM's AsyncLLM wants)."""
    from llama_stack_scalarlm.engine.core import EngineCore, configure_vllm_environment
    from llama_stack_scalarlm.models.builtin import ensure_model
    from llama_stack_scalarlm.models.store import ModelStore

    config = ScalarLMConfig.load({"state_dir": str(state), "default_model": model})
    configure_vllm_environment(config)
    return EngineCore(config, model, ensure_model(ModelStore(config.models_dir), model))


def start_server(server: StackServer, model: str) -> None:
    """Start the server, and send it one chat completion: Llama Stack creates its SQL tables (the
    inference store's among them) only after the first, and every completion stored before they
    exist fails, its traceback taking the server's event loop for seconds."""
    server.start(wait_for_workers=1, timeout_s=900)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, timeout=600, max_retries=0)
    client.chat.completions.create(model=f"scalarlm/{model}", messages=[{"role": "user", "content": "hi"}], max_tokens=1)


async def start_both(server: StackServer, state: Path, model: str):
    """The server (with its worker's engine) and this process's engine, started side by side."""
    started = asyncio.get_running_loop().run_in_executor(None, start_server, server, model)
    try:
        return await start_engine(state, model)  # blocks this thread; the server starts in another
    finally:
        await started  # never left half started: the caller stops it


async def in_process(core, requests: list[GenerationRequest | OpenAIRequest]) -> float:
    start = time.perf_counter()
    results = await asyncio.gather(*(core.run(WorkItem(id=f"bench-{next(_ids)}", lease="bench", request=r),
                                              lambda deltas: None) for r in requests))
    assert not any(r.error for r in results), [r.error for r in results if r.error][:1]
    return sum(_tokens(r) for r in results) / (time.perf_counter() - start)


def _tokens(result) -> int:
    """Generated tokens: a bulk result counts them; an OpenAI answer carries its usage."""
    return result.response["usage"]["completion_tokens"] if result.response is not None else result.completion_tokens


def bulk(client: ScalarLMClient, requests: list[GenerationRequest]) -> float:
    first = requests[0]
    start = time.perf_counter()
    results = client.generate(first.model, [r.prompt for r in requests], max_tokens=first.max_tokens,
                              temperature=first.temperature)
    return sum(r.completion_tokens for r in results) / (time.perf_counter() - start)


async def chats(client: openai.AsyncOpenAI, requests: list[OpenAIRequest]) -> float:
    start = time.perf_counter()
    responses = await asyncio.gather(*(
        client.chat.completions.create(**{**r.body, "model": f"scalarlm/{r.model}"})
        for r in requests))
    return sum(r.usage.completion_tokens for r in responses) / (time.perf_counter() - start)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny-llama", choices=["tiny-llama", "SmolLM2-135M-Instruct"])
    parser.add_argument("--prompts", type=int, default=256, help="prompts in the bulk call")
    parser.add_argument("--chats", type=int, default=64, help="concurrent chat completions")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = harness.parse(parser, smoke={"prompts": 8, "chats": 4, "max_tokens": 4})
    report = harness.Report("full_path_bench", args, variant=args.model)
    work = workloads(args)
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner() as runner:
        state = Path(tmp)
        server = StackServer(state, default_model=args.model, workers=1)
        core = None
        try:
            core = runner.run(start_both(server, state, args.model))
            client = ScalarLMClient(server.url, api_key=server.token, timeout_s=600)
            chat_client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.token, timeout=600,
                                             max_retries=0)
            sides = {
                "bulk": (lambda: runner.run(in_process(core, work["bulk"])), lambda: bulk(client, work["bulk"])),
                "chat": (lambda: runner.run(in_process(core, work["chat"])),
                         lambda: runner.run(chats(chat_client, work["chat"]))),
            }
            for baseline, subject in sides.values():  # warm up both engines and both paths
                baseline()
                subject()
            measured = {name: harness.pairs(*both, args.pairs) for name, both in sides.items()}
            runner.run(chat_client.close())
        finally:
            if core is not None:
                core.shutdown()
            server.stop()
    m = f"{args.max_tokens} tokens each"
    report.compare(f"bulk, {args.prompts} prompts ({m})", "tokens/s", measured["bulk"],
                   subject="full path, one bulk call", baseline="same engine in-process")
    report.compare(f"chat, {args.chats} concurrent completions ({m})", "tokens/s", measured["chat"],
                   subject="full path, OpenAI chat", baseline="same engine in-process")
    report.finish()


if __name__ == "__main__":
    main()
