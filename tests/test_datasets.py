"""Training data checks on their own: a line longer than the limit fails fast, in bounded memory."""

import json
import tracemalloc

import pytest

from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.registry.datasets import validate_jsonl


def row(text_bytes: int) -> bytes:
    """A valid instruct row of exactly ``text_bytes`` bytes, without its newline."""
    shell = json.dumps({"input": "", "output": "a"}).encode()
    return json.dumps({"input": "x" * (text_bytes - len(shell)), "output": "a"}).encode()


def test_a_line_at_the_limit_passes_and_one_byte_more_fails(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(row(100) + b"\n" + row(1000) + b"\n")
    assert validate_jsonl(path, "sft", max_line_bytes=1000) == 2
    path.write_bytes(row(100) + b"\n" + row(1001) + b"\n" + row(100) + b"\n")
    with pytest.raises(InvalidFieldError, match="dataset: line 2: longer than the limit of 1000 bytes"):
        validate_jsonl(path, "sft", max_line_bytes=1000)


def test_a_huge_line_fails_without_being_read_whole(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(row(64 << 20) + b"\n")
    tracemalloc.start()
    try:
        with pytest.raises(InvalidFieldError, match="line 1: longer than the limit"):
            validate_jsonl(path, "sft", max_line_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes held for a 1 MiB limit"
