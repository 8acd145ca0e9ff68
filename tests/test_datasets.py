"""Training data checks on their own: a line longer than the limit fails fast, in bounded memory;
conversations with tools are accepted, and a bad row names its line and field."""

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


CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
ASK = {"role": "user", "content": "Weather in Paris?"}


def test_a_conversation_with_tools_calls_and_results_is_a_row(tmp_path):
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"tools": TOOLS, "messages": [
        ASK, CALL, {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}]}) + "\n")
    assert validate_jsonl(path, "sft") == 1


@pytest.mark.parametrize("row, where", [
    ({"messages": [ASK | {"tool_calls": CALL["tool_calls"]}, CALL]}, "messages.0: tool_calls: only an assistant"),
    ({"messages": [ASK, CALL | {"tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages.1.tool_calls.0.function.arguments: a JSON object"),
    ({"messages": [ASK, {"role": "assistant", "content": "hi", "weight": 2}]}, "messages.1.weight: Extra inputs"),
    ({"messages": [ASK, CALL], "tools": [{"type": "function", "function": {"parameters": {}}}]},
     "tools.0.function.name: Field required"),
    ({"messages": [ASK, {"role": "assistant"}]}, "messages.1: content: a string is required"),
    ({"input": "a", "output": "b", "id": 3}, "id: Extra inputs"),
])
def test_a_bad_row_names_its_line_and_field(tmp_path, row, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"input": "fine", "output": "row"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InvalidFieldError) as err:
        validate_jsonl(path, "sft")
    assert f"dataset: line 2: {where}" in str(err.value)


GOOD_GROUP = {"prompt": "2+2?", "completions": [{"text": "4", "reward": 1.0}, {"text": "5", "reward": 0.0}]}


@pytest.mark.parametrize("row, where", [
    ({"prompt": "2+2?"}, "completions: Field required"),
    ({"prompt": "2+2?", "completions": [{"text": "4"}, {"text": "5", "reward": 0}]}, "completions.0.reward: Field required"),
    ({"prompt": "2+2?", "completions": [{"text": "4", "reward": 1}]}, "completions: the group-relative method needs at "
                                                                      "least 2 completions"),
    ({"prompt": "2+2?", "completions": [{"text": "4", "reward": 1}, {"text": "5", "reward": "NaN"}]},
     "completions.1.reward: Input should be a finite number"),
    ({"prompt": "2+2?", "completions": [{"text": "4", "reward": 1, "logprobs": [0.5]}, {"text": "5", "reward": 0}]},
     "completions.0.logprobs.0: Input should be less than or equal to 0"),
    ({"messages": [{"role": "user", "content": "2+2?"}], "completions": GOOD_GROUP["completions"], "score": 1},
     "score: Extra inputs"),
])
def test_a_bad_scored_row_names_its_line_and_field(tmp_path, row, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD_GROUP) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InvalidFieldError) as err:
        validate_jsonl(path, "grpo")
    assert f"dataset: line 2: {where}" in str(err.value)
