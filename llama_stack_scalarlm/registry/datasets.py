"""Training data checks: every JSONL line is a row of the shape its method trains on (``rows.py``).

Errors name the line and the field, so a user can fix a 100,000-line file without guessing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidFieldError
from .rows import RowError, parse_row


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
            try:
                parse_row(row, method)
            except RowError as exc:
                raise InvalidFieldError("dataset", f"line {number}: {exc}") from None
            rows += 1
    if rows == 0:
        raise InvalidFieldError("dataset", "empty: no training rows")
    return rows
