"""The engine workers' credential: one secret in the shared state root, made by the server at its
first start. A worker on any host that mounts the state root reads it; users' tokens are not
accepted on the worker protocol, and the worker credential is accepted nowhere else.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from .tokens import auth_dir


def credential_path(state_dir: Path) -> Path:
    return auth_dir(state_dir) / "worker.token"


def ensure_worker_credential(state_dir: Path) -> str:
    """The credential, created (0600, atomically: a racing second start keeps the first) if missing."""
    path = credential_path(state_dir)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        try:
            os.link(staging, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return read_worker_credential(state_dir)


def read_worker_credential(state_dir: Path) -> str:
    path = credential_path(state_dir)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SystemExit(f"no worker credential at {path}: start the server first (it creates it), "
                         "and give this host the server's state root") from None


def is_worker(authorization: str | None, credential: str) -> bool:
    """Whether an ``Authorization: Bearer ...`` header carries the worker credential (constant time)."""
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), credential.encode())
