"""`tom.cuda_graph.GraphedStep`'s bookkeeping, on any machine: which calls run eagerly, which
capture, what a replay reads and returns, `reset`, and the eager fallback when capture fails.

torch.cuda's graph and stream objects are replaced by stand-ins: capturing records the step's
work without doing it, and a replay does the recorded work. (What a real graph computes is
checked against eager steps in tests/test_cuda.py, on a GPU.)
"""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from tom.cuda_graph import GraphedLoop, GraphedStep


class FakeGraph:
    capturing: FakeGraph | None = None
    capture_streams: list = []  # the stream argument of each capture

    def __init__(self) -> None:
        self.works: list = []  # what the captured steps would do, in order

    def replay(self) -> None:
        for work in self.works:
            work()


class FakeStream:
    device = "cuda:0"

    def wait_stream(self, other) -> None:
        pass


DEFAULT_STREAM = FakeStream()


@pytest.fixture
def fake_cuda(monkeypatch):
    @contextlib.contextmanager
    def graph(g, stream=None):
        FakeGraph.capturing = g
        FakeGraph.capture_streams.append(stream)
        try:
            yield
        finally:
            FakeGraph.capturing = None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: DEFAULT_STREAM)
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: DEFAULT_STREAM)
    monkeypatch.setattr(FakeGraph, "capture_streams", [])
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())


def summing_step(seen: list[float]):
    """A step that logs the sum of its input and returns it: under capture it records that
    work on the graph instead of doing it, as a captured kernel would."""
    def step(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(())

        def work() -> None:
            seen.append(float(x.sum()))
            out.copy_(x.sum())

        if FakeGraph.capturing is not None:
            FakeGraph.capturing.works.append(work)
        else:
            work()
        return out

    return step


def counting_step(done: list[int]):
    """A step without inputs that logs how many steps ran before it and returns that."""
    def step() -> torch.Tensor:
        out = torch.empty(())

        def work() -> None:
            out.fill_(len(done))
            done.append(len(done))

        if FakeGraph.capturing is not None:
            FakeGraph.capturing.works.append(work)
        else:
            work()
        return out

    return step


def test_warmup_then_one_capture_per_shape_and_replays_read_each_call_input(fake_cuda):
    seen: list[float] = []
    step = GraphedStep(summing_step(seen), warmup=2)
    outs = [step(torch.full((3,), float(i))) for i in range(5)]
    # Calls 0 and 1 eager, call 2 captures and replays, 3 and 4 replay: each with its input.
    assert seen == [0.0, 3.0, 6.0, 9.0, 12.0]
    # Each call's result is its own (a replay overwrites the graph's output, not the copies).
    assert [float(o) for o in outs] == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert step.captured == 1
    step(torch.ones(2))  # a new shape warms up on its own
    assert step.captured == 1 and seen[-1] == 2.0
    step(torch.ones(2)), step(torch.ones(2))
    assert step.captured == 2


def test_reset_drops_the_graphs_and_warms_up_again(fake_cuda):
    seen: list[float] = []
    step = GraphedStep(summing_step(seen), warmup=1)
    step(torch.ones(2)), step(torch.ones(2))
    assert step.captured == 1
    step.reset()
    assert step.captured == 0
    step(torch.ones(2))
    assert step.captured == 0  # the warm-up call after the reset
    step(torch.ones(2))
    assert step.captured == 1 and seen == [2.0] * 4


def test_a_failed_capture_warns_and_runs_eagerly_from_then_on(fake_cuda):
    """A step that fails under capture (as one that synchronises does): the capture is
    ended, one warning, and the step runs eagerly from then on."""
    seen: list[float] = []
    summing = summing_step(seen)

    def syncing(x: torch.Tensor) -> torch.Tensor:
        if FakeGraph.capturing is not None:
            raise RuntimeError("operation not permitted when stream is capturing")
        return summing(x)

    step = GraphedStep(syncing, warmup=1)
    step(torch.ones(2))
    with pytest.warns(RuntimeWarning, match="CUDA graph failed; it runs eagerly "
                                            r"\(operation not permitted"):
        assert float(step(torch.full((2,), 2.0))) == 4.0
    assert float(step(torch.full((2,), 3.0))) == 6.0
    assert seen == [2.0, 4.0, 6.0] and step.captured == 0 and not step.enabled
    assert FakeGraph.capturing is None
    # After the failed capture, an empty one on the same stream (it ends the random
    # generator's capture mode; tests/test_cuda.py checks that on a GPU).
    assert FakeGraph.capture_streams == [None, None]


def test_captures_on_the_callers_side_stream_else_on_torchs(fake_cuda, monkeypatch):
    """On the default stream a capture uses torch.cuda.graph's side stream (None); on a side
    stream of the caller's own (a population member's), that stream: what libraries key by
    the capturing stream (cuBLAS's workspace) then stays the member's."""
    step = GraphedStep(summing_step([]), warmup=1)
    step(torch.ones(2)), step(torch.ones(2))
    member = FakeStream()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: member)
    step(torch.ones(3)), step(torch.ones(3))
    assert FakeGraph.capture_streams == [None, member] and step.captured == 2


def test_captures_only_in_a_thread_and_on_a_stream_where_the_step_ran_eagerly(
        fake_cuda, monkeypatch):
    """Warmed up in this thread on the default stream, the step is next called in another
    thread, then on another stream: each time it runs eagerly once before it captures
    there (a library's per-thread handle or per-stream workspace must not be created while
    capturing); the count of warm-up calls is per shape, not per place."""
    seen: list[float] = []
    step = GraphedStep(summing_step(seen), warmup=2)
    step(torch.ones(2)), step(torch.ones(2))
    captured_in_thread = []

    def elsewhere() -> None:
        step(torch.ones(2))  # eager: this thread's first call
        captured_in_thread.append(step.captured)
        step(torch.ones(2))  # captures
        captured_in_thread.append(step.captured)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert captured_in_thread == [0, 1] and seen == [2.0] * 4

    other = GraphedStep(summing_step(seen), warmup=1)
    other(torch.ones(3))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: FakeStream())  # a new stream
    other(torch.ones(3))
    assert other.captured == 0
    stream = FakeStream()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    other(torch.ones(3)), other(torch.ones(3))
    assert other.captured == 1 and seen[4:] == [3.0] * 4


def test_disabled_is_the_step_itself_and_warmup_must_be_positive():
    seen: list[float] = []
    step = GraphedStep(summing_step(seen), enabled=False)
    assert float(step(torch.ones(3))) == 3.0 and step.captured == 0
    with pytest.raises(ValueError, match="warmup = 0 is not allowed"):
        GraphedStep(summing_step(seen), warmup=0)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_loop_runs_its_steps_in_order_several_per_graph(fake_cuda, enabled):
    """25 steps at 10 per graph: two launches of the 10-step graph (the first of its calls
    eager, the second captures and replays) and 5 single steps (2 eager, then a capture and
    replays); every step runs once, in order, and the last one's output is returned. Off,
    the plain loop."""
    done: list[int] = []
    loop = GraphedLoop(counting_step(done), per_graph=10, enabled=enabled)
    assert float(loop(25)) == 24.0 and done == list(range(25))
    if enabled:
        assert loop.many.captured == 1 and loop.one.captured == 1
    assert float(loop(7)) == 31.0 and done == list(range(32))  # 7 single steps
    with pytest.raises(ValueError, match="per_graph = 0 is not allowed"):
        GraphedLoop(counting_step(done), per_graph=0)
