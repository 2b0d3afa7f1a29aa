"""The one optimiser constructor: Adam with PyTorch's fused kernel where the device has one;
and Adam's update written as tensor operations, for a training step compiled whole.

The fused kernel updates every parameter tensor in one pass instead of a Python loop of small
operations per tensor; on 2 CPU threads it takes a SAC update at the paper preset from 8.2 to
5.9 ms (benchmarks/RESULTS.md). Same algorithm (torch.optim.Adam, L2 weight decay added to
the gradient), not bit-identical to the per-tensor loop.

``capturable`` keeps Adam's step count on the device, so that its step can be captured in a
CUDA graph (`tom.sac`'s ``cuda_graph``); it changes nothing in what is computed.

`adam_update_` is the same update as plain tensor operations. Inside a training step that
`torch.compile` compiles whole with its loss and gradient (`descend`, `tom.compile`) it fuses
with the rest of the step into a few kernels, where `Adam.step` would be a separate call with
its own Python bookkeeping. It reads and writes the optimiser's own state tensors
(`adam_state`), so checkpoints, an eager fallback and `Adam.step` itself carry on from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor


class AdamState(NamedTuple):
    """An Adam's parameters (one group), their state tensors and its hyperparameters: what a
    step compiled whole takes as inputs (`adam_state`)."""

    params: list[Tensor]
    exp_avg: list[Tensor]
    exp_avg_sq: list[Tensor]
    step: list[Tensor]
    # Adam's bias corrections at the coming step t = step + 1, per parameter [2, n], in double
    # precision as its kernel computes them: row 0 lr / (1 − β1^t), row 1 sqrt(1 − β2^t).
    # Where the step counts are CPU tensors, computed here on the host, outside the compiled
    # step (so valid for one step): inside it inductor's CPU code recomputes them, two
    # double-precision `pow` calls for every 16 elements of a parameter, most of the time of
    # a model-fit step's Adam update. None where the counts are on a GPU: there they are
    # computed inside the step, where they cost nothing that shows, rather than in kernels
    # launched one by one before it.
    bias_corrections: Tensor | None
    hyperparameters: tuple[float, float, float, float, float]  # lr, beta1, beta2, eps, L2


def adam(params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0,
         capturable: bool = False) -> torch.optim.Adam:
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True,
                                capturable=capturable)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=capturable)


def adam_state(optimizer: torch.optim.Adam) -> AdamState:
    """The parameters of ``optimizer`` (one parameter group) with their moments and step
    counts, created where it has not stepped yet as `torch.optim.Adam` creates them."""
    (group,) = optimizer.param_groups
    if group["amsgrad"] or group["maximize"] or group.get("decoupled_weight_decay", False):
        raise ValueError("adam_update_ implements plain Adam: no amsgrad, maximize or "
                         "decoupled weight decay")
    exp_avg, exp_avg_sq, step = [], [], []
    for p in group["params"]:
        state = param_state(optimizer, p)
        exp_avg.append(state["exp_avg"])
        exp_avg_sq.append(state["exp_avg_sq"])
        step.append(state["step"])
    lr, (beta1, beta2) = float(group["lr"]), group["betas"]
    on_host = all(s.device.type == "cpu" for s in step)
    return AdamState(list(group["params"]), exp_avg, exp_avg_sq, step,
                     bias_corrections_on_host(step, lr, beta1, beta2) if on_host else None,
                     (lr, float(beta1), float(beta2), float(group["eps"]),
                      float(group["weight_decay"])))


def bias_corrections_on_host(steps: list[Tensor], lr: float, beta1: float, beta2: float
                             ) -> Tensor:
    """[lr / (1 − β1^t), sqrt(1 − β2^t)] per parameter [2, n], float64, at t = step + 1, from
    CPU step counts read on the host (Python's float power is the C library's pow, as in
    Adam's own kernel)."""
    counts = [float(s) + 1 for s in steps]
    return torch.tensor([[lr / (1 - beta1 ** t) for t in counts],
                         [math.sqrt(1 - beta2 ** t) for t in counts]], dtype=torch.float64)


def bias_corrections_on_device(steps: list[Tensor], lr: float, beta1: float, beta2: float
                               ) -> Tensor:
    """The same as `bias_corrections_on_host`, as tensor operations on the step counts'
    device."""
    count = (torch.stack(steps) + 1).double()
    return torch.stack([lr / (1 - beta1 ** count), (1 - beta2 ** count).sqrt()])


def param_state(optimizer: torch.optim.Adam, param: Tensor) -> dict[str, Tensor]:
    """``param``'s state in ``optimizer``; where it has none yet, the state its first step
    would create (zero moments, step 0), so that a step outside ``Adam.step`` (a step
    compiled whole, `tom.stacking.StackedAdam`) can read and write it."""
    state = optimizer.state[param]
    if not state:
        group = optimizer.param_groups[0]
        # The step count is float32 on the parameter's device for a fused or capturable
        # Adam, else a float32 CPU tensor (the default dtype): on the CPU, the same.
        on_device = group["fused"] or group["capturable"]
        state.update(step=torch.zeros((), dtype=torch.float32,
                                      device=param.device if on_device else "cpu"),
                     exp_avg=torch.zeros_like(param, memory_format=torch.preserve_format),
                     exp_avg_sq=torch.zeros_like(param, memory_format=torch.preserve_format))
    return state


def descend(loss: Tensor, optimizer: torch.optim.Optimizer | AdamState) -> None:
    """One optimiser step on ``loss``: its backward pass and ``optimizer.step()``; or, given an
    optimiser's `adam_state` instead (inside a step compiled whole, which should not see the
    optimiser object itself), its gradient by `torch.autograd.grad` and `adam_update_`."""
    if isinstance(optimizer, AdamState):
        adam_update_(torch.autograd.grad(loss, optimizer.params, allow_unused=True), optimizer)
        return
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def adam_update_(grads: Sequence[Tensor | None], state: AdamState) -> None:
    """One step of `torch.optim.Adam` on ``state.params`` in place, from ``grads``, as its
    kernel computes it: the bias corrections in double precision from the incremented step
    count, the rest in the parameters' precision. A parameter whose gradient is None is left
    alone with its state, as `Adam.step` leaves a parameter without a gradient."""
    lr, beta1, beta2, eps, weight_decay = state.hyperparameters
    corrections = state.bias_corrections
    if corrections is None:  # step counts on a GPU: computed in the step (before it counts)
        corrections = bias_corrections_on_device(state.step, lr, beta1, beta2)
    for i, (p, g, m, v, step) in enumerate(zip(state.params, grads, state.exp_avg,
                                               state.exp_avg_sq, state.step, strict=True)):
        if g is None:
            continue
        step.add_(1)
        step_size, bias_correction2_sqrt = corrections[:, i].to(p.dtype)
        if weight_decay != 0:
            g = g + weight_decay * p
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + eps))
