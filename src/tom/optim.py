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
    beta1, beta2 = group["betas"]
    return AdamState(list(group["params"]), exp_avg, exp_avg_sq, step,
                     (float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                      float(group["weight_decay"])))


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
    for p, g, m, v, step in zip(state.params, grads, state.exp_avg, state.exp_avg_sq,
                                state.step, strict=True):
        if g is None:
            continue
        step.add_(1)
        count = step.double()
        step_size = (lr / (1 - beta1 ** count)).to(p.dtype)
        bias_correction2_sqrt = (1 - beta2 ** count).sqrt().to(p.dtype)
        if weight_decay != 0:
            g = g + weight_decay * p
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.sub_(step_size * m / (v.sqrt() / bias_correction2_sqrt + eps))
