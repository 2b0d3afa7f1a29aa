"""Optional `torch.compile` of the inner training steps (``compile: true`` in a run's config).

Part of a step's time at the paper's sizes is per-operation overhead: small elementwise
kernels around the matmuls, each with its own dispatch and autograd bookkeeping (on 2 CPU
threads, a third of a SAC update and half of an MDN step). Compiling a loss fuses them
(forward and backward). What is compiled computes the same function; its
floating-point results differ from eager PyTorch in the last bits (fused kernels sum in
another order), so a compiled run is deterministic but not bit-identical to an eager one, and
`compile` is part of the run's config (a checkpoint of one does not resume the other).

Random draws inside a compiled function use PyTorch's eager generator
(``fallback_random``), so they come from the same seeded stream as in eager mode. That
setting, ``trace_autograd_ops`` (below) and ``size_asserts`` (off: the inputs' shapes are
dynamo's guards' to check) are PyTorch's process-wide compiler settings: they are set only
while a function compiled here runs (and compiles), so that a user's own `torch.compile` in
the same process keeps PyTorch's defaults.
Where compilation itself fails (no C compiler, an unsupported operation), the function falls
back to eager mode for the rest of the run, with one warning.

On a CPU a training step is compiled whole: its loss, the gradient (`torch.autograd.grad`,
which dynamo traces with ``trace_autograd_ops``) and Adam's update (`tom.optim.adam_update_`)
in one graph, which removes the autograd engine's and the optimiser's own per-operation work
from the step (on 2 threads a SAC update 6.4 → 3.7 ms, a model-fit step 3.4 → 2.9 ms:
benchmarks/RESULTS.md). Where steps are replayed from CUDA graphs, the losses alone are
compiled, as measured on GPUs. A step's eager form is its ``fallback``.

The paper preset compiles (its runs last hours; compiling takes seconds to a minute, once per
run: benchmarks/RESULTS.md); the quick and smoke presets do not. `seconds_compiling` tells a
benchmark how much of its time went into compiling.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def seconds_compiling() -> float:
    """Wall seconds this process has spent compiling the functions `compiled` compiles (and
    any other `torch.compile` since the first of them): a benchmark subtracts them to report
    the speed of a long run, which compiles once. Zero where PyTorch has no compile
    callbacks."""
    return 0.0 if _clock is None else _clock.seconds


def compiled(fn: F, enabled: bool, fallback: Callable[..., Any] | None = None) -> F:
    """``fn`` compiled with `torch.compile` when ``enabled``, else ``fn`` itself. Where
    compiling fails, ``fallback`` (default: ``fn``) runs in its place, called as ``fn``."""
    if not enabled:
        return fn
    import torch._dynamo.config
    import torch._dynamo.exc
    import torch._inductor.config

    # size_asserts=False: the compiled step does not recheck each input's sizes and strides,
    # which dynamo's guards have checked before calling it (one Python call per input: about
    # 4 % of a model-fit step on 2 CPU threads, benchmarks/RESULTS.md).
    inductor = {"fallback_random": True, "size_asserts": False}
    # cpp.use_decompose_tanh: a CPU kernel's tanh as 2 / (1 + exp(-2x)) - 1 rather than
    # Sleef's tanh, which is about 5x slower on AVX-512 (a third of the discriminator step's
    # elementwise time). Its error is at most about 2e-7 (3 units in the last place of 1),
    # absolute: near 0 its relative error is large, which no activation here depends on.
    if hasattr(torch._inductor.config.cpp, "use_decompose_tanh"):
        inductor["cpp.use_decompose_tanh"] = True
    settings = [torch._inductor.config.patch(inductor)]
    if hasattr(torch._dynamo.config, "trace_autograd_ops"):  # else a graph break at each
        settings.append(torch._dynamo.config.patch(trace_autograd_ops=True))  # autograd.grad
    eager = fn if fallback is None else fallback
    try:
        state: dict[str, Callable[..., Any]] = {"fn": torch.compile(fn, dynamic=False)}
    except RuntimeError as err:  # e.g. a Python version that dynamo does not support
        warnings.warn(f"torch.compile is not available ({err}); running without compilation",
                      RuntimeWarning, stacklevel=2)
        return eager  # type: ignore[return-value]

    _count_compiling()

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with contextlib.ExitStack() as stack:
                for setting in settings:
                    stack.enter_context(setting)
                return state["fn"](*args, **kwargs)
        except (torch._dynamo.exc.BackendCompilerFailed,
                torch._dynamo.exc.InternalTorchDynamoError) as err:
            if state["fn"] is eager:
                raise
            warnings.warn(f"torch.compile failed for {getattr(fn, '__qualname__', fn)}; "
                          f"running it without compilation ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})",
                          RuntimeWarning, stacklevel=2)
            state["fn"] = eager
            return eager(*args, **kwargs)

    return call  # type: ignore[return-value]


class _CompileClock:
    """Wall seconds spent compiling: from dynamo's compile-start to its compile-end callbacks
    (a function's trace and compile at its first call, and the backward graph's, compiled
    lazily at the first backward pass), nested or not counted once."""

    def __init__(self) -> None:
        self.seconds, self._depth, self._start = 0.0, 0, 0.0

    # Called with the compile's trigger in recent PyTorch, with nothing in older releases.
    def start(self, *_args: Any) -> None:
        if self._depth == 0:
            self._start = time.perf_counter()
        self._depth += 1

    def end(self, *_args: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._start


_clock: _CompileClock | None = None


def _count_compiling() -> None:
    """Start `seconds_compiling`'s clock, or restart it after `torch._dynamo.reset`, which
    drops every compile callback (the seconds counted so far stay). Dynamo's callbacks are
    not a public API: where they are missing, the clock stays at zero and training goes on."""
    global _clock
    try:
        from torch._dynamo.callback import callback_handler, on_compile_end, on_compile_start
    except ImportError:
        return
    if _clock is None:
        _clock = _CompileClock()
    if _clock.start not in callback_handler.start_callbacks:
        on_compile_start(_clock.start)
        on_compile_end(_clock.end)
