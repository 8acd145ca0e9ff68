"""The training job that SLURM runs: ``torchrun ... -m llama_stack_scalarlm.trainer JOB_DIR``.

Kept free of torch imports: the registry imports :data:`TRAINER_VERSION` (hashed into job ids, so
a changed trainer never reuses an old job's checkpoints) and :mod:`.launch` renders sbatch scripts
on the control plane, which must not load torch.

Modules: ``data`` (JSONL → token rows, packing, resumable order), ``backend`` (the interface a
training engine implements), ``torch_backend`` (HF model under DDP or FSDP2, optional LoRA),
``checkpoint`` (atomic checkpoint directories), ``status`` (status.json), ``preemption`` (signal
flag), ``loop`` (the main loop), ``launch`` (the sbatch script).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PREEMPTED_EXIT_CODE = 75
"""Exit code of a trainer that checkpointed on SIGTERM/SIGUSR1 and wants to be requeued (EX_TEMPFAIL)."""

PREEMPTED_ERROR = "preempted"
"""``JobStatus.error`` prefix the trainer writes with state QUEUED after a preemption checkpoint."""


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


TRAINER_VERSION = _source_hash()
"""Hash of this package's source files: changes whenever the trainer's code does."""

__all__ = ["PREEMPTED_ERROR", "PREEMPTED_EXIT_CODE", "TRAINER_VERSION"]
