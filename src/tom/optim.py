"""The one optimiser constructor: Adam with PyTorch's fused kernel where the device has one.

The fused kernel updates every parameter tensor in one pass instead of a Python loop of small
operations per tensor; on 2 CPU threads it takes a SAC update at the paper preset from 8.2 to
5.9 ms (benchmarks/RESULTS.md). Same algorithm (torch.optim.Adam, L2 weight decay added to
the gradient), not bit-identical to the per-tensor loop.

``capturable`` keeps Adam's step count on the device, so that its step can be captured in a
CUDA graph (`tom.sac`'s ``cuda_graph``); it changes nothing in what is computed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0,
         capturable: bool = False) -> torch.optim.Adam:
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True,
                                capturable=capturable)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=capturable)
