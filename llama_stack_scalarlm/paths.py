"""Paths built from user input (model names, later job ids and file names) never leave their root."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InvalidFieldError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would accept a trailing newline


class UnsafeNameError(InvalidFieldError):
    """A user-given name that is not a plain file name (a 400 for the field that carried it)."""


def check_name(name: str, field: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise UnsafeNameError(field, f"{name!r} is not a valid name (letters, digits, '.', '_', '-'; no paths)")
    return name


def safe_join(root: Path, name: str, field: str = "name") -> Path:
    """``root / name`` for a checked single-component ``name``; the result is inside ``root``."""
    path = (root / check_name(name, field)).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UnsafeNameError(field, f"{name!r} leaves its root")
    return path
