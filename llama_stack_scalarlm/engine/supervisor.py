"""Dev mode: the server starts its own engine workers and restarts any that die: one per base-model
slot (``workers``), and the full fine-tunes' engines that ``engine.pool`` plans, spare included.

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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import ScalarLMConfig
from ..listening import own_ports
from ..queue.service import QueueService
from .pool import EnginePlan, FullFinetune, plan_engines

log = logging.getLogger(__name__)

_CHECK_S = 0.5
_RESTART_BACKOFF_S = 2.0  # doubled at each exit in a row, up to _MAX_BACKOFF_S
_MAX_BACKOFF_S = 60.0
_STABLE_S = 60.0  # a worker that ran this long before it exited is restarted at the first backoff
SPARE = "spare"


@dataclass(frozen=True)
class _Worker:
    proc: subprocess.Popen
    worker_id: str
    model: str  # what it serves; a spare's base model until it is handed a job
    started: float
    exits: int = 0  # quick exits in a row in this slot so far (each less than _STABLE_S after a start)
    restart_at: float | None = None  # once it has exited: when its slot gets a new process


class WorkerSupervisor:
    def __init__(self, config: ScalarLMConfig, queue: QueueService, full_finetunes: Callable[[], list[FullFinetune]]):
        self.config = config
        self.queue = queue
        self.full_finetunes = full_finetunes
        self._stop = threading.Event()
        self._workers: dict[str, _Worker] = {}  # slot (w0.., a job id, or SPARE) -> its process
        self._last_used: dict[str, float] = {}  # model -> when requests for it were last seen
        self._thread = threading.Thread(target=self._run, name="scalarlm-workers", daemon=True)
        # A worker's leases are renewed by its id: the id of a worker of this server must not be the
        # id a worker of a server killed before it had, or its beats would keep the dead one's leases.
        self._incarnation = uuid.uuid4().hex[:6]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _stop_all([worker.proc for worker in self._workers.values()])

    def _run(self) -> None:
        url = self.config.server_url or self._discover_own_url()
        if url is None:
            return
        log.info("starting %d engine worker(s) for %s", self.config.workers, url)
        generation = 0
        while not self._stop.is_set():
            models = self.config.models
            wanted = {f"w{i}": models[i % len(models)] for i in range(self.config.workers)}
            plan = self._plan()
            self._hand_over_spare(plan)
            wanted |= {job: job for job in plan.jobs}
            if plan.spare is not None:
                wanted[SPARE] = plan.spare
            for slot, worker in list(self._workers.items()):
                if wanted.get(slot) != worker.model:  # e.g. a job that failed, or one evicted from the pool
                    log.info("worker %s (%s) is no longer wanted; stopping it", worker.worker_id, worker.model)
                    self._stop_worker(slot)
            for slot, model in wanted.items():
                worker = self._workers.get(slot)
                if worker is not None and worker.proc.poll() is None:
                    continue
                exits = 0
                if worker is not None:
                    if worker.restart_at is None:
                        worker = self._workers[slot] = self._exited(worker)
                    if time.monotonic() < worker.restart_at:
                        continue
                    exits = worker.exits
                generation += 1
                self._workers[slot] = self._spawn(slot, model, generation, url, exits)
            self._stop.wait(_CHECK_S)

    def _exited(self, worker: _Worker) -> _Worker:
        """Its leases go back at once, and its slot waits longer after each quick exit in a row (an
        engine that cannot start, e.g. out of memory, would otherwise restart every few seconds)."""
        _kill_group(worker.proc.pid)  # the engine core processes it spawned
        self.queue.forget_worker(worker.worker_id)  # its leases go back now, not at expiry
        quick = time.monotonic() - worker.started < _STABLE_S
        delay = min(_RESTART_BACKOFF_S * 2 ** (worker.exits if quick else 0), _MAX_BACKOFF_S)
        log.warning("worker %s exited with %s; restarting in %.0f s", worker.worker_id, worker.proc.returncode, delay)
        return replace(worker, exits=worker.exits + 1 if quick else 0, restart_at=time.monotonic() + delay)

    def _plan(self) -> EnginePlan:
        now = time.time()
        active = self.queue.store.active_models()
        self._last_used.update(dict.fromkeys(active, now))
        mode = self.config.engine.spare_engine
        fallback = self.config.models[0] if mode == "always" else None
        return plan_engines(self.full_finetunes(), active, self._last_used, self.config.engine.full_finetune_engines,
                            spare=mode != "never", spare_fallback=fallback)

    def _hand_over_spare(self, plan: EnginePlan) -> None:
        """The spare becomes the engine of the first planned job on its base model that has none:
        one line on its stdin, and it loads that job's newest checkpoint as soon as there is one."""
        spare = self._workers.get(SPARE)
        if spare is None or spare.proc.poll() is not None:
            return
        job = next((j for j, base in plan.jobs.items() if base == spare.model and j not in self._workers), None)
        if job is None:
            return
        try:
            spare.proc.stdin.write(f"{job}\n".encode())
            spare.proc.stdin.flush()
        except OSError:  # it died just now: restarted below as the job's own worker
            pass
        log.info("spare worker %s now serves %s", spare.worker_id, job)
        self._workers[job] = replace(spare, model=job)
        del self._workers[SPARE]

    def _stop_worker(self, slot: str) -> None:
        worker = self._workers.pop(slot)
        _stop_all([worker.proc])
        self.queue.forget_worker(worker.worker_id)

    def _spawn(self, slot: str, model: str, generation: int, url: str, exits: int) -> _Worker:
        worker_id = f"{socket.gethostname()}-{slot}-{generation}-{self._incarnation}"
        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        # A spare goes on as some job's engine: its own log, not one shared with the spares after it.
        name = f"{slot}-{generation}" if slot == SPARE else slot
        log_path: Path = self.config.logs_dir / f"worker-{name}.log"
        env = {**os.environ, **self.config.to_env()}
        cmd = [sys.executable, "-m", "llama_stack_scalarlm.engine.worker", "--server-url", url, "--model", model,
               "--worker-id", worker_id, "--parent-pid", str(os.getpid())]
        if slot == SPARE:
            cmd.append("--spare")
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                    stdin=subprocess.PIPE if slot == SPARE else subprocess.DEVNULL)
        log.info("worker %s (pid %d) serving %s, log %s", worker_id, proc.pid, model, log_path)
        return _Worker(proc, worker_id, model, time.monotonic(), exits)

    def _discover_own_url(self) -> str | None:
        """The port uvicorn listens on (``--port`` wins over the run config, so ask the socket)."""
        while not self._stop.is_set():
            if ports := own_ports():
                return f"http://127.0.0.1:{min(ports)}"
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
