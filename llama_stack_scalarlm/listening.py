"""The TCP ports this process listens on: how the server finds its own address (uvicorn's
``--port`` wins over the run config, so the socket is asked, not the config)."""

from __future__ import annotations

import psutil


def own_ports() -> frozenset[int]:
    return frozenset(c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN)
