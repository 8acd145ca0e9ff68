"""Full path vs. the same vLLM engine in-process, on the same prompts: generated tokens/s.

Full path: bulk client -> `llama stack run` -> durable queue -> engine worker -> vLLM -> back.
Baseline: one AsyncLLM with the worker's own engine arguments, all prompts (text, tokenized by vLLM
as the worker tokenizes them) submitted at once.
Both run in this process's session, one after the other, so the ratio compares like with like;
each side runs 5 rounds on its warm engine and reports the median (the machine is shared).
Usage: python bench/full_path_bench.py [tiny-llama|SmolLM2-135M-Instruct] [prompts] [max_tokens]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_stack_scalarlm.client import ScalarLMClient  # noqa: E402
from llama_stack_scalarlm.config import ScalarLMConfig  # noqa: E402
from tests.stack import StackServer  # noqa: E402

MODEL = sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"
PROMPTS = int(sys.argv[2]) if len(sys.argv) > 2 else 256
MAX_TOKENS = int(sys.argv[3]) if len(sys.argv) > 3 else 64
ROUNDS = 5
prompts = [f"Write a short story about item number {i}." for i in range(PROMPTS)]


def full_path(state: Path) -> float:
    server = StackServer(state, default_model=MODEL, workers=1).start(wait_for_workers=1, timeout_s=900)
    try:
        client = ScalarLMClient(server.url)
        client.generate(MODEL, prompts[:8], max_tokens=4, temperature=0)  # warm up
        rates = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            results = client.generate(MODEL, prompts, max_tokens=MAX_TOKENS, temperature=0)
            rates.append(sum(r.completion_tokens for r in results) / (time.perf_counter() - start))
    finally:
        server.stop()
    return statistics.median(rates)


async def in_process(state: Path) -> float:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from llama_stack_scalarlm.engine.core import EngineCore, configure_vllm_environment
    from llama_stack_scalarlm.models.builtin import ensure_model
    from llama_stack_scalarlm.models.store import ModelStore

    config = ScalarLMConfig.load({"state_dir": str(state), "default_model": MODEL})
    configure_vllm_environment(config)
    core = EngineCore(config, MODEL, ensure_model(ModelStore(config.models_dir), MODEL))
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, output_kind=RequestOutputKind.FINAL_ONLY)

    async def one(i: int, request_id: str) -> int:
        tokens = 0
        async for out in core.engine.generate(prompts[i], params, request_id=request_id):
            tokens = len(out.outputs[0].token_ids)
        return tokens

    await asyncio.gather(*(one(i, f"warm{i}") for i in range(8)))
    rates = []
    for round_ in range(ROUNDS):
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(i, f"r{round_}-{i}") for i in range(len(prompts))))
        rates.append(sum(counts) / (time.perf_counter() - start))
    core.shutdown()
    return statistics.median(rates)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        served = full_path(state)
        baseline = asyncio.run(in_process(state))
    print(f"{MODEL}, {PROMPTS} prompts x {MAX_TOKENS} tokens, CPU:")
    print(f"  full path (client->server->queue->worker->vLLM): {served:9.1f} tokens/s")
    print(f"  same vLLM engine in-process (baseline)         : {baseline:9.1f} tokens/s")
    print(f"  ratio full/in-process                          : {served / baseline:9.2f}   (goal >= 0.9)")


if __name__ == "__main__":
    main()
