"""Where a run trained in a population lets the other runs take their turn.

On a GPU the runs of a `tom.population.Population` each run in a thread of their own, one at
a time: the run holding the turn passes it on at the end of each real step and just before
it waits for work it queued on the GPU (a host synchronisation such as ``.item()``). The
next runs then queue their kernels while this run's execute, so the chip runs several runs'
small kernels at once instead of idling while one host thread waits. Outside a population,
and in one whose runs take turns in the caller's thread (as on a CPU), `pass_turn` does
nothing. Inside one it leaves what the run computes unchanged: each run keeps its own random
state, which `tom.population` swaps at every turn.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Turns(Protocol):
    """What `tom.population` registers for the thread of one of its runs."""

    def pass_turn(self) -> None: ...


_thread = threading.local()


def pass_turn() -> None:
    """Let the other runs of this thread's population take a turn, then continue; outside a
    population, nothing."""
    turns: Turns | None = getattr(_thread, "turns", None)
    if turns is not None:
        turns.pass_turn()


def register(turns: Turns | None) -> None:
    """Make ``turns`` what `pass_turn` calls in the current thread (None: nothing)."""
    _thread.turns = turns
