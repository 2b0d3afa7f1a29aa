"""CUDA graphs for the fixed-shape inner steps (``cuda_graph: true`` in a run's config).

On a GPU, one SAC update, model-fit step, dual step or discriminator step at the paper's sizes
is a few hundred small kernels, each launched from Python: the launches, not the arithmetic,
take its time. A CUDA graph records a step's kernels once and replays them with one launch.
The replay runs the same kernels on the same memory: parameters, optimiser moments and the
random generator advance exactly as in eager mode (the generator's offset is advanced by each
replay), so a graphed run computes what an eager one does.

What a captured step may do: read its inputs (copied into the graph's own tensors before
each replay) and tensors that keep their storage while the graph lives (parameters, fused
Adam's moments created with ``capturable=True``, a buffer's storage), and write in place.
It must not synchronise with the host (no ``.item()``, no data-dependent Python branch),
allocate what outlives the step, or change shape. Its first calls per input shape run
eagerly, and so does its first call in each thread and stream that would capture it (they
create the optimisers' moments and the libraries' handles and workspaces, which capture
requires to exist); if capturing fails, the step runs eagerly from then on, with one warning,
and the random generator is taken out of the capture's mode.
A graph may also hold several steps (`GraphedLoop`, a block of SAC updates): one launch
then does them all; each launch costs the host time, and a run replays tens of thousands.

Streams: the eager calls run on the caller's current stream, not on a side stream as
PyTorch's examples do. What they allocate to outlive them (an optimiser's moments) then
belongs to the stream that replays the graph. A side stream comes from a pool shared by the
whole process, so memory freed to it (a discriminator's moments when its training returns,
with its replays still queued) could be handed to another run's work in a
`tom.population` before those replays ran. For a like reason a member's graphs are
captured on its own stream (`_capture_stream`): a graph keeps the scratch memory it was
captured with, and cuBLAS's workspace is picked by the capturing stream.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

Step = Callable[..., Tensor]


def check_device(cuda_graph: bool, device: str | torch.device) -> None:
    """Refuse ``cuda_graph=True`` off a CUDA device (the owners of graphed steps call it)."""
    if cuda_graph and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, got device {str(device)!r}")


class GraphedStep:
    """``step(*inputs) -> Tensor``, replayed from a CUDA graph per input shape after
    ``warmup`` eager calls of that shape; with ``enabled=False``, ``step`` itself.

    A shape is captured only in a thread and on a stream where the step has already run
    eagerly; elsewhere the call runs eagerly once more first. Libraries create per-thread
    handles and per-stream workspaces (cuBLAS's) at their first use, which they must not do
    during a capture: a stacked step in `tom.population` is run by whichever member arrives
    last, and a population of 10 on an H200 failed to capture a stacked SAC block that
    another member's thread had warmed up (benchmarks/RESULTS.md).

    Each call returns a copy of the step's output (the next replay overwrites the graph's).
    Call `reset` when something the step reads is given new storage (an optimiser's
    ``load_state_dict``): the graphs are dropped and captured again.
    """

    def __init__(self, step: Step, warmup: int = 2, enabled: bool = True) -> None:
        if warmup < 1:
            raise ValueError(f"warmup = {warmup} is not allowed: capture needs >= 1 eager call")
        self.step, self.warmup, self.enabled = step, warmup, enabled
        self._calls: dict[tuple, int] = {}
        # (shape key, thread, stream) of the eager calls; the Thread object, not its id, which
        # a thread started after another ended can reuse.
        self._warm: set[tuple] = set()
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[Tensor, ...], Tensor]] = {}

    @property
    def captured(self) -> int:
        """How many input shapes have a graph."""
        return len(self._graphs)

    def reset(self) -> None:
        self._calls.clear()
        self._warm.clear()
        self._graphs.clear()

    def __call__(self, *inputs: Tensor) -> Tensor:
        if not self.enabled:
            return self.step(*inputs)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        entry = self._graphs.get(key)
        if entry is None:
            calls = self._calls.get(key, 0)
            self._calls[key] = calls + 1
            site = (key, threading.current_thread(), torch.cuda.current_stream())
            if calls < self.warmup or site not in self._warm:
                self._warm.add(site)
                return self.step(*inputs)
            entry = self._capture(inputs)
            if entry is None:
                return self.step(*inputs)
            self._graphs[key] = entry
        graph, fixed, out = entry
        for dst, src in zip(fixed, inputs, strict=True):
            dst.copy_(src)
        graph.replay()
        return out.clone()

    def _capture(self, inputs: tuple[Tensor, ...]):
        fixed = tuple(t.clone() for t in inputs)
        graph = torch.cuda.CUDAGraph()
        try:
            # Records the kernels and runs none. torch.cuda.graph first waits for the whole
            # device: in a population (`tom.population`) that waits for every member's queued
            # work. Capturing without the wait was tried: a population of 10 then failed on
            # the GPU (an out-of-bounds index). The likely cause: when a generator's last graph
            # is destroyed, PyTorch frees its seed and offset tensors at once, while replays
            # still queued write them; the wait keeps that memory from being reused before.
            with torch.cuda.graph(graph, stream=_capture_stream()):
                out = self.step(*fixed)
        except RuntimeError as err:
            warnings.warn(f"capturing {getattr(self.step, '__qualname__', self.step)} as a "
                          f"CUDA graph failed; it runs eagerly ({str(err).splitlines()[0]})",
                          RuntimeWarning, stacklevel=3)
            self.enabled = False
            _end_generator_capture()
            return None
        return graph, fixed, out


class GraphedLoop:
    """``loop(count)``: ``step()`` (a step without inputs) ``count`` times, in order; with
    graphs, ``per_graph`` steps per replay of one graph (and single-step replays for what
    does not fill one), so that one launch does ``per_graph`` steps. The same steps in the
    same order as a plain loop; ``enabled=False`` is the plain loop. Returns the last step's
    output."""

    def __init__(self, step: Callable[[], Tensor], per_graph: int = 1, enabled: bool = True,
                 warmup: int = 2) -> None:
        if per_graph < 1:
            raise ValueError(f"per_graph = {per_graph} is not allowed: it must be >= 1")
        self.per_graph = per_graph

        def steps() -> Tensor:
            for _ in range(per_graph - 1):
                step()
            return step()

        # One eager call of the long graph's steps warms it up: its first call's steps.
        self.many = (GraphedStep(steps, warmup=1) if enabled and per_graph > 1 else None)
        self.one = GraphedStep(step, warmup=warmup, enabled=enabled)

    def __call__(self, count: int) -> Tensor:
        full, rest = divmod(count, self.per_graph) if self.many is not None else (0, count)
        out = torch.empty(0)
        for _ in range(full):
            out = self.many()
        for _ in range(rest):
            out = self.one()
        return out


def _end_generator_capture() -> None:
    """After a failed capture: take the CUDA generator's state out of capture mode.

    A capture puts the generator's current state in capture mode and the capture's end takes
    it out; when a capture fails, its end raises before that, and every later draw from the
    generator outside a capture raises ("Offset increment outside graph capture encountered
    unexpectedly"; seen on an H200 after a failed capture). An empty capture on the same
    stream begins and ends that mode again, without drawing or changing the state's seed and
    offset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's warning that the graph is empty
        with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=_capture_stream()):
            pass


def _capture_stream() -> torch.cuda.Stream | None:
    """The stream to capture on: the current one where it is a side stream of the caller's own
    (a `tom.population` member's), else None (torch.cuda.graph's, one for the process).
    Members that captured on that one stream shared a cuBLAS workspace in their graphs,
    which replay at once on their own streams: their results drifted from their single runs'
    (0.1-0.4 % at the second evaluation, a different value each time), and did not where
    cuBLAS had no workspace (CUBLAS_WORKSPACE_CONFIG=:0:0; benchmarks/RESULTS.md)."""
    current = torch.cuda.current_stream()
    return None if current == torch.cuda.default_stream(current.device) else current
