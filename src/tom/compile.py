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
setting, ``trace_autograd_ops`` (below), ``size_asserts`` (off: the inputs' shapes are
dynamo's guards' to check) and ``cpp.use_decompose_tanh`` are PyTorch's process-wide
compiler settings, read only while a function compiles: they are set while a compile that
one of our calls starts runs (from dynamo's compile callbacks), so that a user's own
`torch.compile` in the same process keeps PyTorch's defaults, and a compiled call pays
nothing for them (changing them around every call cost about 20-50 µs per call).
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
import threading
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
    return 0.0 if _hooks is None else _hooks.seconds


def compiled(fn: F, enabled: bool, fallback: Callable[..., Any] | None = None) -> F:
    """``fn`` compiled with `torch.compile` when ``enabled``, else ``fn`` itself. Where
    compiling fails, ``fallback`` (default: ``fn``) runs in its place, called as ``fn``."""
    if not enabled:
        return fn
    import torch._dynamo.exc

    eager = fn if fallback is None else fallback
    try:
        state: dict[str, Callable[..., Any]] = {"fn": torch.compile(fn, dynamic=False)}
    except RuntimeError as err:  # e.g. a Python version that dynamo does not support
        warnings.warn(f"torch.compile is not available ({err}); running without compilation",
                      RuntimeWarning, stacklevel=2)
        return eager  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return _call_ours(state["fn"], *args, **kwargs)
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


def _settings() -> list[contextlib.AbstractContextManager[Any]]:
    """Our compiler settings, as context managers that set them and restore the values
    found."""
    import torch._dynamo.config
    import torch._inductor.config

    # size_asserts=False: the compiled step does not recheck each input's sizes and strides,
    # which dynamo's guards have checked before calling it (one Python call per input: about
    # 4 % of a model-fit step on 2 CPU threads, benchmarks/RESULTS.md).
    inductor = {"fallback_random": True, "size_asserts": False}
    # cpp.use_decompose_tanh: a CPU kernel's tanh as 2 / (1 + exp(-2x)) - 1 rather than
    # Sleef's tanh, which is about 5x slower on AVX-512 (0.8 ms of a 5.9 ms discriminator
    # step went to tanh kernels). Its error is at most about 2e-7 (about 3 units in the last
    # place of 1), absolute: near 0 its relative error is large, which no activation or
    # squashed action here depends on (benchmarks/RESULTS.md, nineteenth session).
    if hasattr(torch._inductor.config.cpp, "use_decompose_tanh"):
        inductor["cpp.use_decompose_tanh"] = True
    settings = [torch._inductor.config.patch(inductor)]
    if hasattr(torch._dynamo.config, "trace_autograd_ops"):  # else a graph break at each
        settings.append(torch._dynamo.config.patch(trace_autograd_ops=True))  # autograd.grad
    return settings


_ours = threading.local()  # .depth: how many of our compiled calls this thread is inside


def _call_ours(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, marked as ours: a compile it starts gets our settings, set by
    the compile hooks (or here, for the whole call, where PyTorch has none)."""
    if not _install_hooks():
        with contextlib.ExitStack() as stack:
            for setting in _settings():
                stack.enter_context(setting)
            return fn(*args, **kwargs)
    _ours.depth = getattr(_ours, "depth", 0) + 1
    try:
        return fn(*args, **kwargs)
    finally:
        _ours.depth -= 1


class _CompileHooks:
    """Dynamo's compile-start and compile-end callbacks. They count the wall seconds spent
    compiling (a function's trace and compile at its first call, and the backward graph's,
    compiled lazily at the first backward pass; nested or not, counted once), and around a
    compile started in a thread inside one of our compiled calls, set our settings. (Compiles
    run one at a time: dynamo holds a lock.)"""

    def __init__(self) -> None:
        self.seconds, self._depth, self._start = 0.0, 0, 0.0
        self._applied: contextlib.ExitStack | None = None

    # Called with the compile's trigger in recent PyTorch, with nothing in older releases.
    def start(self, *_args: Any) -> None:
        if self._depth == 0:
            self._start = time.perf_counter()
            if getattr(_ours, "depth", 0) > 0:
                self._applied = contextlib.ExitStack()
                for setting in _settings():
                    self._applied.enter_context(setting)
        self._depth += 1

    def end(self, *_args: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._start
            if self._applied is not None:
                self._applied.close()
                self._applied = None


_hooks: _CompileHooks | None = None


def _install_hooks() -> bool:
    """Install the compile hooks, or reinstall them after `torch._dynamo.reset`, which drops
    every compile callback (the seconds counted so far stay); checked at every compiled call
    (about a microsecond). Dynamo's callbacks are not a public API: where they are missing,
    False (the clock stays at zero, and each compiled call sets the settings itself)."""
    global _hooks
    try:
        from torch._dynamo.callback import callback_handler, on_compile_end, on_compile_start
    except ImportError:
        return False
    if _hooks is None:
        _hooks = _CompileHooks()
    if _hooks.start not in callback_handler.start_callbacks:
        on_compile_start(_hooks.start)
        on_compile_end(_hooks.end)
    return True
