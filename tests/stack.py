"""Start and stop a real ``llama stack run`` server for tests, as a user would from the shell."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RUN_YAML = ROOT / "distributions" / "scalarlm" / "run.yaml"
LLAMA = Path(sys.executable).parent / "llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StackServer:
    """``token``: a user token minted (as ``scalarlm token create`` does) in the server's state dir."""

    def __init__(self, state_dir: Path, **settings):
        from llama_stack_scalarlm.auth.tokens import TokenStore

        self.state_dir = state_dir
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        kept = state_dir / "tester.token"  # a server restarted on the same state dir: the same user
        if kept.exists():
            self.token = kept.read_text()
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.token = TokenStore(state_dir).create("tester")
            kept.write_text(self.token)
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCALARLM_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", SCALARLM_STATE_DIR=str(self.state_dir),
                   LLAMA_STACK_PORT=str(self.port))
        for key, value in self.settings.items():
            env[f"SCALARLM_{key.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        return env

    def start(self, wait_for_workers: int = 0, timeout_s: float = 300) -> StackServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(LLAMA), "stack", "run", str(RUN_YAML), "--port", str(self.port)],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.state_dir / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    if len(self.live_workers()) >= wait_for_workers:
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()  # leave nothing running behind a failed start
        raise TimeoutError(f"server not ready within {timeout_s} s; see {self.state_dir}")

    def live_workers(self) -> dict[str, float]:
        stats = httpx.get(f"{self.url}/v1/scalarlm/queue", headers=self.headers, timeout=5).json()
        return {w: age for w, age in stats["workers"].items() if age < 15}

    def worker_processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        found = []
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "llama_stack_scalarlm.engine.worker" in proc.cmdline():
                    found.append(proc)
            except psutil.NoSuchProcess:  # exited meanwhile
                pass
        return found

    def kill(self) -> None:
        """kill -9 the server (its workers notice their parent is gone and exit)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        group = self.proc.pid
        workers = self.worker_processes()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.proc.wait()
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except psutil.TimeoutExpired:
                worker.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc = None
