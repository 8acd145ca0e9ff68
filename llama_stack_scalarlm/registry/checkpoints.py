"""What a complete checkpoint is, in one place: the trainer writes by these rules, the registry reads by them.

A checkpoint is ``checkpoints/checkpoint-<step>/`` holding :data:`COMPLETE_MARK`; the trainer
creates the marker last and publishes the directory by rename, so a reader (the server, an engine
worker hot-loading weights, a resumed run) never takes a half-written one. No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path

from .schema import CheckpointInfo

COMPLETE_MARK = ".complete"
_NAME = re.compile(r"checkpoint-(\d+)")  # fullmatch: "$" would accept a trailing newline


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and (path / COMPLETE_MARK).exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_infos(root: Path) -> list[CheckpointInfo]:
    """The complete checkpoints as the registry reports them: a PEFT adapter or a full model."""
    return [
        CheckpointInfo(step=step, path=str(path), kind="lora" if (path / "adapter_config.json").exists() else "full")
        for step, path in complete_checkpoints(root)
    ]
