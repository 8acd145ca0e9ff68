"""``python -m llama_stack_scalarlm.trainer JOB_DIR``, normally under torchrun: set up the process, run the loop.

Without torchrun's environment it runs as a single process. A failure on any rank is written to
``status.json`` as FAILED (with the rank and the error) before the exception propagates.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported after the signal handlers are installed
    import torch


def _init_distributed(gpus_per_node: int) -> torch.device:
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if gpus_per_node > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(f"the job asks for {gpus_per_node} GPUs per node but CUDA is not available")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        backend, extra = "nccl", {"device_id": device}
    else:
        device, backend, extra = torch.device("cpu"), "gloo", {}
    if "RANK" in os.environ:
        dist.init_process_group(backend, **extra)  # env:// from torchrun (MASTER_ADDR, RANK, WORLD_SIZE, ...)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **extra)
    return device


def _record_failure(job_dir: Path, job_id: str, rank: int, error: BaseException) -> None:
    from ..registry.files import read_model, write_model
    from ..registry.schema import JobStatus

    path = job_dir / "status.json"
    try:
        status = read_model(path, JobStatus)
    except (OSError, ValueError):
        status = JobStatus(job_id=job_id, created=time.time())
    if status.state == "CANCELLED":
        return
    status.state = "FAILED"
    status.error = f"rank {rank}: {type(error).__name__}: {error}"
    status.updated = time.time()
    write_model(path, status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_stack_scalarlm.trainer", description=__doc__)
    parser.add_argument("job_dir", type=Path, help="directory holding job.json and dataset.jsonl")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from ..registry.files import read_model
    from ..registry.schema import TrainingJob
    from .preemption import StopRequest

    stop = StopRequest().install()  # before the slow imports: a signal during start-up is not lost
    job_dir = args.job_dir.resolve()
    job = read_model(job_dir / "job.json", TrainingJob)
    rank = int(os.environ.get("RANK", "0"))
    try:
        import torch.distributed as dist

        from .loop import train

        device = _init_distributed(job.hyperparameters.gpus_per_node)
        try:
            return train(job, job_dir, device, stop)
        finally:
            dist.destroy_process_group()
    except BaseException as error:
        if not isinstance(error, SystemExit):
            _record_failure(job_dir, job.job_id, rank, error)
        raise


if __name__ == "__main__":
    sys.exit(main())
