"""SIGTERM / SIGUSR1 → a flag the loop checks at each step boundary.

SLURM sends SIGUSR1 shortly before the time limit (``--signal``) and SIGTERM on preemption or
cancel. Stopping in the middle of a step would lose it or leave ranks in different collectives, so
the handler only records the request; the loop agrees on it across ranks, checkpoints and exits
with :data:`PREEMPTED_EXIT_CODE`.
"""

from __future__ import annotations

import signal
import sys


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            print(f"[trainer] {self.signal_name}: checkpointing at the next step boundary", file=sys.stderr, flush=True)
