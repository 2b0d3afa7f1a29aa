"""SIGTERM and SIGINT (SLURM pre-emption or time limit, Ctrl-C) become a checkpoint and an exit.

The handler only records the signal; the training loop checks `StopRequest.signal` after
every real step (a safe point: no phase is half done) and checkpoints there. A real step
is usually milliseconds, but one that refits the model can take tens of seconds at the paper
preset, so a watchdog bounds the wait: if the process has not exited ``grace`` seconds after
the signal, it exits at once (with the same status) and the last periodic checkpoint stands.
A second signal also exits at once. SLURM sends SIGKILL ``KillWait`` (default 30 s) after
SIGTERM, so the default grace, 20 s, leaves time for the checkpoint to reach the disk.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):  # noqa: N818 (it is not an error: the run stopped as asked)
    """Raised by the training loop after it checkpointed because a signal asked it to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class StopRequest:
    """Installs the handlers; `signal` is the number of the first signal received, or None."""

    def __init__(self, grace: float = 20.0) -> None:
        self.grace = grace
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.signal is not None:
            print(f"tom: second signal ({name}): exiting without a checkpoint", file=sys.stderr,
                  flush=True)
            os._exit(128 + signum)
        self.signal = signum
        print(f"tom: {name} received: checkpointing after the current real step "
              f"(exit within {self.grace:.0f} s)", file=sys.stderr, flush=True)
        timer = threading.Timer(self.grace, self._give_up, args=(signum,))
        timer.daemon = True
        timer.start()

    def _give_up(self, signum: int) -> None:
        print(f"tom: no safe point within {self.grace:.0f} s of "
              f"{signal.Signals(signum).name}: exiting; the last periodic checkpoint stands",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)
