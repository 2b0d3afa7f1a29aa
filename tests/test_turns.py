"""`tom.turns`: a run in a population passes the turn every few steps of its long loops,
running the same steps in the same order as outside one."""

from __future__ import annotations

import pytest

from tom import turns


class _Recorder:
    """A population's `Turns` that records where the turn was passed."""

    def __init__(self, log: list, passes: bool = True) -> None:
        self.log, self.passes = log, passes

    def pass_turn(self) -> None:
        self.log.append("pass")


@pytest.fixture
def log():
    log: list = []
    turns.register(_Recorder(log))
    yield log
    turns.register(None)


def _steps(log: list):
    """``run(k)``: k steps, each logged with its number; returns the last one's."""
    done = [0]

    def run(k: int) -> int:
        for _ in range(k):
            done[0] += 1
            log.append(done[0])
        return done[0]

    return run


def test_outside_a_population_the_loop_runs_at_once():
    log: list = []
    assert turns.in_turns(_steps(log), 25) == 25
    assert log == list(range(1, 26))
    turns.pass_turn_every(10)  # nothing registered: nothing happens


def test_where_runs_pass_the_turn_only_between_real_steps_loops_run_at_once():
    """Members as coroutines of one thread (on a CPU) pass no turn inside their steps."""
    log: list = []
    turns.register(_Recorder(log, passes=False))
    try:
        assert turns.in_turns(_steps(log), 25) == 25
        turns.pass_turn_every(10)
        turns.pass_turn()
    finally:
        turns.register(None)
    assert log == list(range(1, 26))


def test_in_a_population_the_turn_passes_every_ten_steps_and_at_the_end(log):
    assert turns.STEPS_PER_TURN == 10
    assert turns.in_turns(_steps(log), 25) == 25
    assert log == [*range(1, 11), "pass", *range(11, 21), "pass", *range(21, 26), "pass"]


def test_chunks_are_whole_graph_launches(log):
    """With 4 steps per graph launch, chunks of 12 (the multiple of 4 from 10 up)."""
    assert turns.in_turns(_steps(log), 25, granule=4) == 25
    assert log == [*range(1, 13), "pass", *range(13, 25), "pass", 25, "pass"]


def test_pass_turn_every_tenth_step(log):
    for done in range(1, 26):
        turns.pass_turn_every(done)
        log.append(done)
    assert log == [*range(1, 10), "pass", *range(10, 20), "pass", *range(20, 26)]
