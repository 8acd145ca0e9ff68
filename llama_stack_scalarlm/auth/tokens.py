"""User tokens: minted and revoked by ``scalarlm token`` on a host that has the state root, checked
by the server on every request.

``<state_dir>/auth/tokens.json`` holds, per name, the sha256 of the token (never the token itself),
so the file grants nothing to whoever reads it. The server re-reads the file when it changes: a
revoked token stops working with the next request, with no restart.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import InvalidFieldError
from ..paths import check_name
from ..registry.files import write_atomic

TOKEN_PREFIX = "slm-"


class TokenRecord(BaseModel):
    sha256: str
    created: float


class TokenFile(BaseModel):
    tokens: dict[str, TokenRecord] = Field(default_factory=dict, description="principal name -> its token's hash")


def auth_dir(state_dir: Path) -> Path:
    return state_dir / "auth"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, state_dir: Path):
        self.path = auth_dir(state_dir) / "tokens.json"
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file as last read
        self._principals: dict[str, str] = {}  # token sha256 -> name

    def create(self, name: str) -> str:
        """A new token for ``name`` (printed once; only its hash is kept)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.add(name, token)
        return token

    def add(self, name: str, token: str) -> None:
        """Grant ``name`` a token chosen elsewhere (a secret a cluster already holds, or a test
        suite's fixed key)."""
        check_name(name, field="name")
        if not token:
            raise InvalidFieldError("token", "must not be empty")
        tokens = self._read()
        if name in tokens.tokens:
            raise InvalidFieldError("name", f"{name!r} has a token already; revoke it first")
        tokens.tokens[name] = TokenRecord(sha256=_digest(token), created=time.time())
        self._write(tokens)

    def revoke(self, name: str) -> bool:
        tokens = self._read()
        if tokens.tokens.pop(name, None) is None:
            return False
        self._write(tokens)
        return True

    def names(self) -> dict[str, float]:
        return {name: record.created for name, record in self._read().tokens.items()}

    def principal(self, token: str) -> str | None:
        """The name a token belongs to, or None. One ``stat`` per call; the file is re-read only when it changed."""
        try:
            stat = self.path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self._seen:
            self._principals = {record.sha256: name for name, record in self._read().tokens.items()}
            self._seen = seen
        return self._principals.get(_digest(token))

    def _read(self) -> TokenFile:
        try:
            return TokenFile.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return TokenFile()

    def _write(self, tokens: TokenFile) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, tokens.model_dump_json(indent=2).encode())  # mkstemp: mode 0600
        os.chmod(self.path, 0o600)
