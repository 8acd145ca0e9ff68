"""Checkpoint directories that a reader (the engine hot-loading weights, a resumed run) never sees half-written.

``checkpoints/.tmp-checkpoint-<step>/`` is filled (HF files by rank 0, ``trainer_state.pt`` by rank
0 and ``trainer_state.rank<r>.pt`` by every other rank), fsynced, marked with ``.complete`` and
renamed to ``checkpoint-<step>`` (the name and the marker that readers go by are
:mod:`..registry.checkpoints`'s). Old checkpoints are renamed away before they are deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..registry.checkpoints import COMPLETE_MARK, checkpoint_name, complete_checkpoints
from ..registry.files import fsync_path


def state_file(directory: Path, rank: int) -> Path:
    return directory / ("trainer_state.pt" if rank == 0 else f"trainer_state.rank{rank}.pt")


class CheckpointDir:
    def __init__(self, root: Path):
        self.root = root

    def complete(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        return complete_checkpoints(self.root)

    def latest(self) -> tuple[int, Path] | None:
        found = self.complete()
        return found[-1] if found else None

    def clean_partial(self) -> None:
        """Remove what an interrupted run left: temporary and half-deleted directories (rank 0, at start)."""
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name.startswith((".tmp-", ".old-")):
                    shutil.rmtree(path, ignore_errors=True)

    def staging(self, step: int) -> Path:
        return self.root / f".tmp-{checkpoint_name(step)}"

    def publish(self, step: int) -> Path:
        """Make the staged checkpoint durable and visible (rank 0, after every rank wrote its files)."""
        staging, final = self.staging(step), self.root / checkpoint_name(step)
        for path in staging.rglob("*"):
            if path.is_file():
                fsync_path(path)
        marker = staging / COMPLETE_MARK
        marker.touch()
        fsync_path(marker)
        fsync_path(staging)
        if final.exists():  # the same step written again (a rerun after a crash past the rename)
            self._remove(final)
        os.rename(staging, final)
        fsync_path(self.root)
        return final

    def prune(self, keep: int) -> None:
        for _, path in self.complete()[:-keep]:
            self._remove(path)

    def _remove(self, path: Path) -> None:
        doomed = path.with_name(f".old-{path.name}")
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def write_hf_checkpoint(out_dir: Path, weights: dict, config: Any, tokenizer: Any,
                        model_path: Path) -> None:
    """A full Hugging Face model directory (safetensors shards, config, tokenizer, generation config) that
    vLLM and transformers load as it is; both backends export through it."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(weights, filename_pattern="model{suffix}.safetensors")
    for filename, names in split.filename_to_tensors.items():
        save_file({n: weights[n] for n in names}, out_dir / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    generation = Path(model_path) / "generation_config.json"
    if generation.exists():
        shutil.copyfile(generation, out_dir / "generation_config.json")
    else:
        from transformers import GenerationConfig

        GenerationConfig.from_model_config(config).save_pretrained(out_dir)
