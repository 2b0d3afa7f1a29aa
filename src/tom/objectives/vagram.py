"""VaGraM: value-gradient weighted model loss (Voelcker, Liao, Garg, Farahmand, ICLR 2022,
"Value Gradient weighted Model-Based Reinforcement Learning").

A model only needs to be right where its errors change the value: the value-aware error of a
predicted next state ŝ' is V(ŝ') − V(s'). VaGraM makes that trainable in two steps.

1. Taylor expansion at the *observed* next state: V(ŝ') − V(s') ≈ g·(ŝ' − s'), g = ∇V(s'). V is
   then only evaluated and differentiated on real data, where it was trained, never at the
   model's possibly off-distribution predictions.
2. (g·e)² is zero for every error orthogonal to g, a degenerate loss whose minimisers can lie
   far from s'. The paper replaces it by its diagonal upper bound (Cauchy–Schwarz, up to the
   constant factor dim s), Σ_j g_j² e_j², which vanishes only at e_j = 0 wherever g_j ≠ 0: a
   squared error with each dimension weighted by its squared value gradient.

Per transition, in raw units (the error of ŝ' equals the error of the predicted Δs):

    L = Σ_j g_j² (Δŝ_j − Δs_j)² + (r̂ − r)²,   g = ∇_s V(s) at s = s'.

Choices, and why:

- V(s') = Q(s', π(s')) is `SAC.value`: the pessimistic twin critic at the deterministic action,
  differentiated through the policy as well (the gradient of V^π for that policy). The authors'
  code averages the loss over both critics and both target critics with the action held fixed.
- Bound clipping, as in the authors' code (`bound_clipping`, quantile 0.95): a few states have
  huge value gradients and would dominate the fit, so every gradient whose L2 norm exceeds the
  `vagram.clip_quantile` quantile of the norms is rescaled to exactly that norm, direction
  kept; the rest are unchanged. Their code takes the quantile per minibatch; here the gradients
  are computed once per refit, batched over the whole buffer, and the quantile is the buffer's.
- Variance head: none is trained. VaGraM is not a likelihood and the authors' code fits
  deterministic models with it, so the fit becomes `DynamicsModel.fit`'s mean-only loss: MDN and
  ensemble learn through their predicted mean, and rollouts use the mean (ensemble: a random
  elite's mean per row, so member disagreement is the only rollout noise). Consequently the
  logged `model_nll_recent` is nan for this objective; `model_error_recent` stays comparable.
- Reward: its squared error with weight 1 in raw units, as the authors' code adds it unweighted
  to the value-gradient term (which it averages over dimensions where we sum).
- Scale: the fit divides the weights by their mean, so the growing scale of V changes neither
  the step size nor the balance with the ensemble's weight decay, only relative weights count.
- Rollout starts stay uniform: VaGraM changes the loss, not the data distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tom.objectives.base import Objective, RefitContext

if TYPE_CHECKING:
    from tom.config import RunConfig


def value_gradients(value: Callable[[Tensor], Tensor], states: Tensor,
                    chunk: int = 65_536) -> Tensor:
    """∇_s V(s) for every row [N, obs_dim], batched over chunks.

    V acts row by row, so the gradient of ΣV w.r.t. the states is every row's own gradient;
    only the states are differentiated, so no parameter gradient is accumulated.
    """
    parts = []
    for lo in range(0, states.shape[0], chunk):
        s = states[lo:lo + chunk].detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(value(s).sum(), s)
        parts.append(grad)
    return torch.cat(parts)


def clip_gradient_norms(grads: Tensor, quantile: float) -> tuple[Tensor, float]:
    """Bound clipping: rows with ‖g‖ above the ``quantile`` of all norms are scaled to it.

    Returns the clipped gradients and the bound; quantile 1 is the largest norm (no clipping).
    """
    norms = grads.norm(dim=-1)
    bound = torch.quantile(norms, quantile)
    scale = torch.where(norms > bound, bound / norms.clamp_min(1e-30), torch.ones_like(norms))
    return grads * scale[:, None], bound.item()


def vagram_error(pred_next_obs: Tensor, next_obs: Tensor, grads: Tensor) -> Tensor:
    """Σ_j g_j² (ŝ'_j − s'_j)² per row [B]: VaGraM's bound on the Taylor value error (g·e)²."""
    return (grads ** 2 * (pred_next_obs - next_obs) ** 2).sum(-1)


def vagram_dim_weights(grads: Tensor) -> Tensor:
    """Model-fit weights [N, 1 + obs_dim] over the targets [reward, Δs]: 1 and g_j²."""
    return torch.cat([torch.ones_like(grads[:, :1]), grads ** 2], dim=-1)


class VaGraMObjective(Objective):
    """Uniform data, value-gradient weighted mean-only model loss (see the module docstring)."""

    def __init__(self, cfg: RunConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.clip_quantile = cfg.vagram.clip_quantile
        self.dim_weights: Tensor | None = None
        self._stats: dict[str, float] = {}

    def update(self, ctx: RefitContext) -> None:
        grads = value_gradients(ctx.agent.value, ctx.buffer.all().next_obs)
        clipped, bound = clip_gradient_norms(grads, self.clip_quantile)
        self.dim_weights = vagram_dim_weights(clipped)
        self._stats = {"vagram_grad_norm_median": grads.norm(dim=-1).median().item(),
                       "vagram_clip_bound": bound}

    def fit_dim_weights(self) -> Tensor | None:
        return self.dim_weights

    def stats(self) -> dict[str, float]:
        return dict(self._stats)
