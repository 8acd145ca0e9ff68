"""Dev mode: the server starts its own engine workers and restarts any that die.

Runs in a thread of the server process (the stack initializes providers in a throwaway event
loop, so no asyncio task could outlive it). Imports no torch: workers are separate processes.
On a cluster, set ``workers: 0`` and start workers yourself (or as SLURM jobs) with
``python -m llama_stack_scalarlm.engine.worker --server-url ...``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from ..config import ScalarLMConfig
from ..queue.store import RequestStore

log = logging.getLogger(__name__)

_CHECK_S = 0.5
_RESTART_BACKOFF_S = 2.0


class WorkerSupervisor:
    def __init__(self, config: ScalarLMConfig, store: RequestStore, full_finetunes: Callable[[], list[str]]):
        self.config = config
        self.store = store
        self.full_finetunes = full_finetunes  # each gets a worker of its own while it is listed
        self._stop = threading.Event()
        self._procs: dict[str, tuple[subprocess.Popen, str]] = {}
        self._thread = threading.Thread(target=self._run, name="scalarlm-workers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _stop_all([proc for proc, _ in self._procs.values()])

    def _run(self) -> None:
        url = self.config.server_url or self._discover_own_url()
        if url is None:
            return
        log.info("starting %d engine worker(s) for %s", self.config.workers, url)
        generation = 0
        while not self._stop.is_set():
            models = self.config.models
            wanted = {f"w{i}": models[i % len(models)] for i in range(self.config.workers)}
            wanted |= {job: job for job in self.full_finetunes()}
            for slot in [slot for slot in self._procs if slot not in wanted]:  # e.g. a job that failed
                proc, worker_id = self._procs.pop(slot)
                log.info("worker %s is no longer wanted; stopping it", worker_id)
                _stop_all([proc])
                self.store.release_worker(worker_id)
            for slot, model in wanted.items():
                entry = self._procs.get(slot)
                if entry is not None and entry[0].poll() is None:
                    continue
                if entry is not None:
                    log.warning("worker %s exited with %s; restarting", entry[1], entry[0].returncode)
                    _kill_group(entry[0].pid)  # the engine core processes it spawned
                    self.store.release_worker(entry[1])  # its leases go back now, not at expiry
                    time.sleep(_RESTART_BACKOFF_S)
                generation += 1
                self._procs[slot] = self._spawn(slot, model, generation, url)
            self._stop.wait(_CHECK_S)

    def _spawn(self, slot: str, model: str, generation: int, url: str) -> tuple[subprocess.Popen, str]:
        worker_id = f"{socket.gethostname()}-{slot}-{generation}"
        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path: Path = self.config.logs_dir / f"worker-{slot}.log"
        env = {**os.environ, **self.config.to_env()}
        cmd = [sys.executable, "-m", "llama_stack_scalarlm.engine.worker", "--server-url", url, "--model", model,
               "--worker-id", worker_id, "--parent-pid", str(os.getpid())]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log.info("worker %s (pid %d) serving %s, log %s", worker_id, proc.pid, model, log_path)
        return proc, worker_id

    def _discover_own_url(self) -> str | None:
        """The port uvicorn listens on (``--port`` wins over the run config, so ask the socket)."""
        me = psutil.Process()
        while not self._stop.is_set():
            ports = sorted({c.laddr.port for c in me.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN})
            if ports:
                return f"http://127.0.0.1:{ports[0]}"
            self._stop.wait(0.2)
        return None


def _stop_all(procs: list[subprocess.Popen]) -> None:
    """SIGTERM (the worker shuts its engine down), then the whole process group is killed."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc.pid)


def _kill_group(pgid: int) -> None:
    """Workers run in their own session: this reaches the vLLM processes under them too."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
