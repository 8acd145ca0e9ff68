"""Engine worker entrypoint: ``python -m llama_stack_scalarlm.engine.worker --server-url URL``.

A thin loop over the engine core: lease as many requests as there is free capacity (plus
``lease_ahead`` waiting in vLLM, so a freed slot never waits for a lease round trip), run them
concurrently in vLLM (its running batch stays full and never exceeds ``max_num_seqs``), and report
deltas and results in batches. A result is dropped from the outbox only once the server has stored it; if
this process dies, its leases expire and go to another worker. The heartbeat tells the server how far
the engine has stepped (a hung engine loses its leases) and which requests it runs; the server
answers with those to stop (their callers gave up, or they are leased elsewhere now).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import psutil

from ..auth.worker import read_worker_credential
from ..config import ScalarLMConfig
from ..models.store import ModelStore
from ..registry.jobs import JOB_PREFIX, JobRegistry
from .checkpoints import CheckpointWatcher
from ..queue.schema import GenerationResult, RequestError, WorkEvent, WorkItem
from .gateway import WorkerGateway

log = logging.getLogger("scalarlm.worker")

_IDLE_WAIT_S = 1.0  # an idle worker's long poll; a stopping server waits for the one in flight
_BUSY_WAIT_S = 0.2
_RETRY_S = 1.0
_CHECKPOINT_SCAN_S = 1.0
_HEARTBEAT_S = 2.0  # also how soon a cancelled request stops generating
_REPORT_GATHER_S = 0.01


class Worker:
    def __init__(self, config: ScalarLMConfig, core, gateway: WorkerGateway, parent_pid: int | None,
                 spare: bool = False):
        self.config = config
        self.spare = spare
        self.core = core
        self.watcher = CheckpointWatcher(JobRegistry(config.jobs_dir))
        self.gateway = gateway
        self.parent_pid = parent_pid
        self.outbox: asyncio.Queue[WorkEvent] = asyncio.Queue()
        self.running: dict[str, tuple[asyncio.Task, str]] = {}  # request id -> (its task, its lease)
        self.engine_dead = False
        # With requests waiting in vLLM, lease only once half of them have started: one lease call
        # per several completions, not one per completion.
        self._min_lease = max(1, config.engine.lease_ahead // 2)

    async def serve(self) -> None:
        tasks = [
            asyncio.create_task(self._report_loop()),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._checkpoint_loop()),
        ]
        if self.spare:
            tasks.append(asyncio.create_task(self._take_job()))
        try:
            await self._lease_loop()
        finally:
            for task in tasks:
                task.cancel()
        if self.engine_dead:  # exit, so that the worker is restarted and its leases are served again
            raise SystemExit("worker: the engine died")

    async def _lease_loop(self) -> None:
        while self._parent_alive() and not self.engine_dead:
            free = self.core.capacity + self.config.engine.lease_ahead - len(self.running)
            if free < (self._min_lease if self.running else 1):
                tasks = [task for task, _ in self.running.values()]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not (models := self.core.served_models()):  # standing by for a first checkpoint
                await asyncio.sleep(_BUSY_WAIT_S)
                continue
            try:
                items = await self.gateway.lease(models, free, _BUSY_WAIT_S if self.running else _IDLE_WAIT_S)
            except Exception as exc:  # server restarting: keep what runs, try again
                log.warning("lease failed: %s", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            for item in items:
                task = asyncio.create_task(self._run(item))
                self.running[item.id] = (task, item.lease)
                task.add_done_callback(lambda _, request_id=item.id: self.running.pop(request_id, None))

    async def _run(self, item: WorkItem) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        def emit(chunks: list[dict]) -> None:
            self.outbox.put_nowait(WorkEvent(id=item.id, lease=item.lease, deltas=chunks))

        try:
            result = await self.core.run(item, emit)
        except asyncio.CancelledError:  # stopped: the server no longer wants it (vLLM aborts it)
            return
        except EngineDeadError:  # not the request's fault: leave it leased, to be served after the restart
            log.exception("the engine died serving request %s", item.id)
            self.engine_dead = True
            return
        except Exception as exc:
            log.exception("request %s failed", item.id)
            result = GenerationResult(error=RequestError(status=500, message=f"engine error: {exc}"))
        self.outbox.put_nowait(WorkEvent(id=item.id, lease=item.lease, result=result))

    def _abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            if (running := self.running.get(request_id)) is not None:
                log.info("stopping request %s: the server no longer wants it", request_id)
                running[0].cancel()

    async def _report_loop(self) -> None:
        """Events go out in batches: after the first, a few milliseconds gather what else finishes,
        so the server answers one report where it would answer many (its per-call cost, not the
        bytes, is what takes CPU from the engine)."""
        while True:
            batch = [await self.outbox.get()]
            await asyncio.sleep(_REPORT_GATHER_S)
            while not self.outbox.empty():
                batch.append(self.outbox.get_nowait())
            while True:
                try:
                    self._abort(await self.gateway.report(_merge(batch)))
                    break
                except Exception as exc:
                    log.warning("report failed, retrying: %s", exc)
                    await asyncio.sleep(_RETRY_S)

    async def _heartbeat_loop(self) -> None:
        """Every few seconds: progress and what runs, to the server; what to stop, back. An engine
        that holds work but has not stepped for the progress deadline is hung: exit, so that the
        worker is restarted (the server lets its leases lapse in any case)."""
        steps, since = self.core.steps, time.monotonic()
        while True:
            await asyncio.sleep(min(_HEARTBEAT_S, self.config.lease_timeout_s / 3))
            if self.core.steps != steps or not self.running:
                steps, since = self.core.steps, time.monotonic()
            elif time.monotonic() - since > self.config.progress_timeout_s:
                log.error("the engine has made no progress for %.0f s with %d requests: exiting",
                          time.monotonic() - since, len(self.running))
                self.engine_dead = True
                for task, _ in list(self.running.values()):
                    task.cancel()
                return
            try:
                running = [(request_id, lease) for request_id, (_, lease) in self.running.items()]
                self._abort(await self.gateway.heartbeat(self.core.steps, running))
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _take_job(self) -> None:
        """A spare engine stands by on a base model until the supervisor names, on stdin, the full
        fine-tune it is to serve; the checkpoint loop then loads that job's weights."""
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        if job := (await reader.readline()).decode().strip():
            log.info("spare engine taken by %s", job)
            self.core.model_name = job

    async def _checkpoint_loop(self) -> None:
        """Hot pickup: serve new checkpoints as they appear, with no restart."""
        while True:
            model = self.core.model_name
            try:
                if model.startswith(JOB_PREFIX):
                    latest = self.watcher.latest(model)
                    if latest is not None and Path(latest.path) != self.core.model_path:
                        await self.core.reload_weights(Path(latest.path))
                elif self.core.max_adapters:
                    await self.core.sync_adapters(self.watcher.adapters_for(model))
            except Exception:
                log.exception("checkpoint pickup failed; retrying")
            await asyncio.sleep(_CHECKPOINT_SCAN_S)

    def _parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid


def _merge(events: list[WorkEvent]) -> list[WorkEvent]:
    """Coalesce a request's deltas within one report: fewer, larger messages under load."""
    merged: dict[str, WorkEvent] = {}
    for event in events:
        into = merged.setdefault(event.id, WorkEvent(id=event.id, lease=event.lease))
        into.deltas.extend(event.deltas)
        into.result = event.result or into.result
    return list(merged.values())


async def run_worker(config: ScalarLMConfig, model: str, server_url: str, worker_id: str, parent_pid: int | None,
                     spare: bool = False):
    from ..models.builtin import ensure_model
    from .core import EngineCore, configure_vllm_environment

    configure_vllm_environment(config)
    if model.startswith(JOB_PREFIX):  # a full fine-tune: its newest checkpoint, reloaded as new ones land
        registry = JobRegistry(config.jobs_dir)
        latest = registry.latest_checkpoint(model)
        if latest is None:  # stand by on the base weights until the first checkpoint lands
            path, standby = Path(registry.job(model).base_model_path), True
        else:
            path, standby = Path(latest.path), False
        core = EngineCore(config, model, path, serve_adapters=False, standby=standby)
    else:  # a base model; a spare holds it without adapters until it is handed a job
        path = ensure_model(ModelStore(config.models_dir), model)
        core = EngineCore(config, model, path, serve_adapters=not spare, standby=spare)
    gateway = WorkerGateway(server_url, worker_id, read_worker_credential(config.state_dir))
    log.info("worker %s serving %s from %s for %s", worker_id, model, core.model_path, server_url)
    try:
        await Worker(config, core, gateway, parent_pid, spare).serve()
    finally:
        await gateway.close()
        _kill_children()  # the engine-core process keeps nothing: vLLM's orderly teardown of it takes ~3 s
        core.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ScalarLM engine worker")
    parser.add_argument("--server-url", help="the distribution's address (default: config server_url)")
    parser.add_argument("--model", help="model to serve (default: config default_model)")
    parser.add_argument("--worker-id", default=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer the parent")
    parser.add_argument("--spare", action="store_true",
                        help="stand by on --model's weights until a full fine-tune's id arrives on stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = ScalarLMConfig.load()
    server_url = args.server_url or config.server_url
    if not server_url:
        sys.exit("worker: --server-url (or SCALARLM_SERVER_URL) is required")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwind through the engine's shutdown
    try:
        model = args.model or config.default_model
        asyncio.run(run_worker(config, model, server_url, args.worker_id, args.parent_pid, args.spare))
        code = 0
    except SystemExit as stopped:  # SIGTERM (0), or the engine died (a message)
        code = stopped.code
    finally:
        _kill_children()
    _exit_at_once(code)


def _exit_at_once(code: int | str | None) -> None:
    """Exit as ``sys.exit(code)`` would, without Python's finalization: with torch and vLLM loaded it
    takes ~2 s, on every worker stop, and nothing is left to release but the logs."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def _kill_children() -> None:
    """vLLM's engine processes outlive a worker that stops abruptly: take them along."""
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    main()
