"""Training data checks: every JSONL line is an object of the shape its method trains on.

Errors name the line and the field, so a user can fix a 100,000-line file without guessing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidFieldError

_ROLES = {"system", "user", "assistant", "tool"}


def validate_jsonl(path: Path, method: str, *, max_line_bytes: int = 16 << 20) -> int:
    """Number of rows; raises InvalidFieldError("dataset", "line N: field: problem") on the first bad line.
    Lines are read at most ``max_line_bytes`` (newline not counted) at a time, so one huge line
    fails fast instead of filling the server's memory."""
    rows = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(max_line_bytes + 1), b""), start=1):
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise InvalidFieldError("dataset", f"line {number}: longer than the limit of {max_line_bytes} bytes")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InvalidFieldError("dataset", f"line {number}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InvalidFieldError("dataset", f"line {number}: expected an object")
            _check_row(row, number, method)
            rows += 1
    if rows == 0:
        raise InvalidFieldError("dataset", "empty: no training rows")
    return rows


def _check_row(row: dict, number: int, method: str) -> None:
    def need_text(field: str) -> None:
        if not isinstance(row.get(field), str) or not row[field]:
            raise InvalidFieldError("dataset", f"line {number}: {field}: a non-empty string is required")

    if method == "dpo":
        for field in ("prompt", "chosen", "rejected"):
            need_text(field)
        return
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise InvalidFieldError("dataset", f"line {number}: messages: a non-empty list is required")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                raise InvalidFieldError("dataset", f"line {number}: messages[{i}].role: one of {sorted(_ROLES)}")
            if not isinstance(message.get("content"), str):
                raise InvalidFieldError("dataset", f"line {number}: messages[{i}].content: a string is required")
        if not any(m["role"] == "assistant" for m in messages):
            raise InvalidFieldError("dataset", f"line {number}: messages: no assistant message to train on")
        return
    need_text("input")
    need_text("output")
