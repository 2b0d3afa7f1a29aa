"""Optional `torch.compile` of the inner training steps (``compile: true`` in a run's config).

Part of a step's time at the paper's sizes is per-operation overhead: small elementwise
kernels around the matmuls, each with its own dispatch and autograd bookkeeping (on 2 CPU
threads, a third of a SAC update and half of an MDN step). Compiling a loss fuses them
(forward and backward). What is compiled computes the same function; its
floating-point results differ from eager PyTorch in the last bits (fused kernels sum in
another order), so a compiled run is deterministic but not bit-identical to an eager one, and
`compile` is part of the run's config (a checkpoint of one does not resume the other).

Random draws inside a compiled function use PyTorch's eager generator
(``fallback_random``), so they come from the same seeded stream as in eager mode.
Where compilation itself fails (no C compiler, an unsupported operation), the function falls
back to eager mode for the rest of the run, with one warning.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def compiled(fn: F, enabled: bool) -> F:
    """``fn`` compiled with `torch.compile` when ``enabled``, else ``fn`` itself."""
    if not enabled:
        return fn
    import torch._dynamo.exc
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    try:
        state: dict[str, Callable[..., Any]] = {"fn": torch.compile(fn, dynamic=False)}
    except RuntimeError as err:  # e.g. a Python version that dynamo does not support
        warnings.warn(f"torch.compile is not available ({err}); running without compilation",
                      RuntimeWarning, stacklevel=2)
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return state["fn"](*args, **kwargs)
        except (torch._dynamo.exc.BackendCompilerFailed,
                torch._dynamo.exc.InternalTorchDynamoError) as err:
            if state["fn"] is fn:
                raise
            warnings.warn(f"torch.compile failed for {getattr(fn, '__qualname__', fn)}; "
                          f"running it without compilation ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})",
                          RuntimeWarning, stacklevel=2)
            state["fn"] = fn
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
