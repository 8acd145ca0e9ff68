"""Checkpoint listing: the registry (server, engine workers) and the trainer read one module's rules. No torch."""

from __future__ import annotations

from pathlib import Path

from llama_stack_scalarlm.registry.jobs import JobRegistry
from llama_stack_scalarlm.trainer.checkpoint import CheckpointDir


def _checkpoint(root: Path, name: str, complete: bool = True, lora: bool = False) -> None:
    path = root / name
    path.mkdir(parents=True)
    if complete:
        (path / ".complete").touch()
    if lora:
        (path / "adapter_config.json").write_text("{}")


def test_registry_and_trainer_list_the_same_checkpoints(tmp_path):
    root = tmp_path / "job-x" / "checkpoints"
    _checkpoint(root, "checkpoint-20")
    _checkpoint(root, "checkpoint-5", lora=True)
    _checkpoint(root, "checkpoint-30", complete=False)  # still being written: not listed
    for stray in ("checkpoint-7.bak", "checkpoint-x", "checkpoint-8\n", "old-checkpoint-9", ".tmp-checkpoint-40"):
        _checkpoint(root, stray)  # complete-looking, but not a checkpoint's name
    (tmp_path / "job-x" / "job.json").write_text("{}")

    listed = JobRegistry(tmp_path).checkpoints("job-x")
    assert [(c.step, Path(c.path).name, c.kind) for c in listed] == [
        (5, "checkpoint-5", "lora"), (20, "checkpoint-20", "full")]
    assert [(step, path.name) for step, path in CheckpointDir(root).complete()] == [
        (5, "checkpoint-5"), (20, "checkpoint-20")]


def test_a_published_checkpoint_is_what_the_registry_lists(tmp_path):
    root = tmp_path / "job-y" / "checkpoints"
    writer = CheckpointDir(root)
    writer.staging(3).mkdir(parents=True)
    assert JobRegistry(tmp_path).checkpoints("job-y") == []  # staged, not published
    writer.publish(3)
    assert [c.step for c in JobRegistry(tmp_path).checkpoints("job-y")] == [3]
    assert JobRegistry(tmp_path).latest_checkpoint("job-y").path == str(root / "checkpoint-3")
