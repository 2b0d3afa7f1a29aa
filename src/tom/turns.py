"""Where a run trained in a population lets the other runs take their turn.

On a GPU the runs of a `tom.population.Population` each run in a thread of their own, one at
a time: the run holding the turn passes it on at the end of each real step and just before
it waits for work it queued on the GPU (a host synchronisation such as ``.item()``). The
next runs then queue their kernels while this run's execute, so the chip runs several runs'
small kernels at once instead of idling while one host thread waits. Outside a population,
and in one whose runs take turns in the caller's thread (as on a CPU), `pass_turn` does
nothing. Inside one it leaves what the run computes unchanged: each run keeps its own random
state, which `tom.population` swaps at every turn.

A run also passes the turn every `STEPS_PER_TURN` steps of its long inner loops (the model
fit, the discriminator, the dual, the evaluation; `in_turns`, `pass_turn_every`). Why: CUDA
queues a bounded amount of work per stream, and past it a launch blocks the host until the
GPU catches up (benchmarks/graph_streams.py: launches of 20-update blocks waited for most of
the GPU's time). A run that launched a refit's thousand dual steps in one turn then held the
turn, blocked, for much of its refit's GPU time, and no other run could queue work
meanwhile. On one H100 ten runs took about what their refits one after another plus their
other steps overlapped would take, 1.51× one run's throughput (benchmarks/RESULTS.md, sixth
session); with these shorter turns ten runs made 2.15× on an H200 (eleventh session).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

STEPS_PER_TURN = 10
"""Inner steps (each about a hundred kernels) a run queues per turn in its long loops."""


class Turns(Protocol):
    """What `tom.population` registers for one of its runs (in its thread or coroutine)."""

    passes: bool  # whether `pass_turn` inside steps passes the turn (in threads, on a GPU)

    def pass_turn(self) -> None: ...

    def together(self, kind: str, alone: Callable[[], Any], part: Callable[[], tuple]
                 ) -> Any: ...


_turns: ContextVar[Turns | None] = ContextVar("tom_turns", default=None)
"""Per thread, and per greenlet (each has a context of its own): the run it is."""


def pass_turn() -> None:
    """Let the other runs of this thread's population take a turn, then continue; outside a
    population, nothing."""
    turns = _turns.get()
    if turns is not None and turns.passes:
        turns.pass_turn()


def together(kind: str, alone: Callable[[], T], part: Callable[[], tuple]) -> T:
    """``alone()``; in a population whose runs stack their work (``stack_seeds``), this run's
    ``part()`` done together with the other runs' parts of that ``kind`` as one, which gives
    what ``alone()`` would (up to rounding): "act", a real step's action; "sac", a block of
    SAC updates (`tom.stacked_sac`); "disc" and "dual", TOM's discriminator and dual training
    (`tom.stacked_tom`); "fit", an epoch of the model's fit (`tom.stacked_model`).
    ``part`` is called in this run's turn: it draws what the work needs from this run's
    random state."""
    turns = _turns.get()
    return alone() if turns is None else turns.together(kind, alone, part)


def register(turns: Turns | None) -> None:
    """Make ``turns`` what `pass_turn` calls in the current thread or greenlet (None:
    nothing)."""
    _turns.set(turns)


def in_turns(run: Callable[[int], T], count: int, granule: int = 1) -> T:
    """``run(count)`` (``run(k)`` does k steps and returns the last one's output); in a
    population, as runs of about `STEPS_PER_TURN` steps, a multiple of ``granule`` (``run``'s
    steps per graph launch), with the turn passed after each. The same steps in the same
    order either way; returns the last step's output."""
    turns = _turns.get()
    if turns is None or not turns.passes or count <= 0:
        return run(count)
    chunk = -(-STEPS_PER_TURN // granule) * granule
    for start in range(0, count, chunk):
        out = run(min(chunk, count - start))
        turns.pass_turn()
    return out


def pass_turn_every(done: int) -> None:
    """`pass_turn` after every `STEPS_PER_TURN`-th step of a loop (``done`` steps so far)."""
    if done % STEPS_PER_TURN == 0:
        pass_turn()
