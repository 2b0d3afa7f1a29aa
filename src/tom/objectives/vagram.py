"""VaGraM: value-gradient weighted model loss (Voelcker, Liao, Garg, Farahmand, ICLR 2022,
"Value Gradient weighted Model-Based Reinforcement Learning"), in two versions (`vagram.loss`).

A model only needs to be right where its errors change the value: the value-aware error of a
predicted next state ŝ' is V(ŝ') − V(s'). VaGraM makes that trainable in two steps.

1. Taylor expansion at the *observed* next state: V(ŝ') − V(s') ≈ g·(ŝ' − s'), g = ∇V(s'). V is
   then only evaluated and differentiated on real data, where it was trained, never at the
   model's possibly off-distribution predictions.
2. (g·e)² is zero for every error orthogonal to g, a degenerate loss whose minimisers can lie
   far from s'. The paper replaces it by its diagonal upper bound (Cauchy–Schwarz, up to the
   constant factor dim s), Σ_j g_j² e_j², which vanishes only at e_j = 0 wherever g_j ≠ 0: a
   squared error with each dimension weighted by its squared value gradient.

``paper-code`` (the default): what the TOM paper ran as its VaGraM baseline (method ``vaml``,
class ``VAML(MDN)`` in ``vaml.py``, mode ``use_scaling``). It keeps the mixture-density model
and its likelihood and weights the NLL of each normalised target dimension by the value
gradient, as computed there:

- g from the two critics and the two target critics, V_i(s') = Q_i(s', a̅(s')) at the policy's
  mean action (held fixed), differentiated w.r.t. the raw s'. The four gradients are taken one
  after another into the same ``.grad`` without zeroing it, so the i-th is the running sum
  G_i = ∇V_1 + … + ∇V_i; the loss averages the four: ḡ = (4∇Q_1 + 3∇Q_2 + 2∇Q'_1 + ∇Q'_2)/4.
- Bound clipping of each G_i at the 0.95 quantile of its norms applies only where the norm is
  also ≥ 1e5 (``norms < quantile or norms < 100000`` keeps the rest), i.e. practically never.
- ḡ is used signed, not squared, as a weight on an NLL: where it is negative the fit is
  rewarded for a *worse* likelihood of that dimension.
- Targets are [reward, Δs], but the weights are aligned as if they were [Δs, reward]: ḡ_j
  multiplies the NLL of target column j (column 0 is the reward, so the last Δs dimension gets
  no gradient weight), and the unweighted "reward" term is the NLL of the last column (the last
  Δs dimension). Per transition the loss is the mean over the obs_dim weighted columns,
  (1/obs_dim) Σ_j ḡ_j nll_j + nll_last, plus the mean NLL over all targets during the first
  epoch of the learning policy (``add_mse``, switched off after that epoch's evaluation).
  ``paper-code-aligned`` is the same with each ḡ_j on its own Δs_j and the reward's NLL as the
  reward term, what the code evidently meant.
- SAC minibatches (`vagram.sac_mix=paper-code`): with probability p(e) = 0.95·min(e/20, 1) in
  learner epoch e the usual real/model mix, otherwise only the minibatch's real part (12
  transitions) — ``mbpo.py`` fills VaGraM's batches so; ``mbpo`` mixes every batch.

The gradients are computed once per refit for the whole buffer, batched: the critics are fixed
during a fit, so this equals the paper code's per-minibatch computation (which it caches per
row for the same reason); only the never-binding clip uses the buffer's quantile instead of
the minibatch's (``vagram_clipped_rows`` counts the rows it touches).

``vagram-paper``: the VaGraM paper's own loss. Per transition, in raw units (the error of ŝ'
equals the error of the predicted Δs):

    L = Σ_j g_j² (Δŝ_j − Δs_j)² + (r̂ − r)²,   g = ∇_s V(s) at s = s'.

- V(s') = Q(s', π(s')) is `SAC.value`: the pessimistic twin critic at the deterministic action,
  differentiated through the policy as well (the gradient of V^π for that policy). The authors'
  code averages the loss over both critics and both target critics with the action held fixed.
- Bound clipping (quantile `vagram.clip_quantile`): a few states have huge value gradients and
  would dominate the fit, so every gradient whose L2 norm exceeds the quantile of the norms is
  rescaled to exactly that norm, direction kept. The authors' code takes the quantile per
  minibatch; here it is the buffer's, once per refit.
- Variance head: none is trained (the authors' code fits deterministic models with it), so the
  fit becomes `DynamicsModel.fit`'s mean-only loss and rollouts use the mean; the logged
  `model_nll_recent` is nan for this version; `model_error_recent` stays comparable.
- Scale: the fit divides the weights by their mean, so the growing scale of V changes neither
  the step size nor the balance with the ensemble's weight decay, only relative weights count.

Either way rollout starts stay uniform: VaGraM changes the loss, not the data distribution.
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


# The paper code's bound clipping keeps every gradient whose norm is below this, whatever the
# quantile (``norms < quantile or norms < 100000``).
PAPER_CODE_CLIP_FLOOR = 1e5
# The paper code's SAC data mix for VaGraM: p ramps linearly to its maximum over these epochs.
MODEL_BATCH_RAMP_EPOCHS, MODEL_BATCH_MAX = 20, 0.95


def critic_value_gradients(agent, next_obs: Tensor, chunk: int = 65_536) -> Tensor:
    """∇_s' Q_i(s', a̅(s')) [4, N, obs_dim] for the two critics and the two target critics,
    at the policy's mean action a̅ = tanh(mean) held fixed (the paper code's ``values``)."""
    parts = []
    for lo in range(0, next_obs.shape[0], chunk):
        s = next_obs[lo:lo + chunk].detach().requires_grad_(True)
        with torch.no_grad():
            act = agent.actor(s)[0].tanh()
        with torch.enable_grad():
            values = torch.cat([agent.critic(s, act), agent.critic_target(s, act)])  # [4, B]
            parts.append(torch.stack([torch.autograd.grad(v.sum(), s, retain_graph=True)[0]
                                      for v in values]))
    return torch.cat(parts, dim=1)


def paper_code_gradient(grads: Tensor, quantile: float) -> tuple[Tensor, float, int]:
    """ḡ [N, obs_dim] from the four critics' gradients [4, N, obs_dim], as the paper's code
    combines them: running sums G_i = Σ_{k≤i} ∇V_k (its ``.grad`` is never zeroed), each
    clipped where its norm is ≥ both the ``quantile`` of the norms and 1e5, then averaged.

    Returns ḡ, the largest clip bound (quantile) of the four, and the rows clipped (0 almost
    always: the 1e5 floor).
    """
    running = grads.cumsum(0)
    total, bound, clipped = torch.zeros_like(grads[0]), 0.0, 0
    for g in running:
        norms = g.norm(dim=-1)
        q = torch.quantile(norms, quantile)
        keep = (norms < q) | (norms < PAPER_CODE_CLIP_FLOOR)
        total = total + torch.where(keep[:, None], g, g * (q / norms.clamp_min(1e-30))[:, None])
        bound, clipped = max(bound, q.item()), clipped + int((~keep).sum())
    return total / len(grads), bound, clipped


def paper_code_nll_weights(g: Tensor, first_epoch: bool, aligned: bool = False) -> Tensor:
    """NLL weights [N, 1 + obs_dim] over the targets [reward, Δs] of the paper code's loss
    (1/obs_dim) Σ_j ḡ_j nll_{col j} + nll_{last col} (+ the mean NLL of all targets in the
    first learner epoch). ``aligned``: ḡ_j on Δs_j and the reward's own NLL instead."""
    n, obs_dim = g.shape
    w = torch.zeros(n, 1 + obs_dim, device=g.device)
    if aligned:
        w[:, 1:] = g / obs_dim
        w[:, 0] = 1.0
    else:
        w[:, :obs_dim] = g / obs_dim  # column 0 is the reward: the code's misalignment
        w[:, obs_dim] += 1.0
    if first_epoch:
        w += 1.0 / (1 + obs_dim)
    return w


def model_batch_probability(learner_epoch: int) -> float:
    """The paper code's ``truncated_linear(0, 20, 0, 0.95, epoch)``."""
    return MODEL_BATCH_MAX * min(max(learner_epoch, 0) / MODEL_BATCH_RAMP_EPOCHS, 1.0)


class VaGraMObjective(Objective):
    """Uniform data, a value-gradient weighted model loss (see the module docstring)."""

    def __init__(self, cfg: RunConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.loss, self.sac_mix = cfg.vagram.loss, cfg.vagram.sac_mix
        self.clip_quantile = cfg.vagram.clip_quantile
        self.epoch_length = cfg.schedule.epoch_length
        self.dim_weights: Tensor | None = None
        self.nll_dim_weights: Tensor | None = None
        self._stats: dict[str, float] = {}

    def update(self, ctx: RefitContext) -> None:
        next_obs = ctx.buffer.all().next_obs
        if self.loss == "vagram-paper":
            grads = value_gradients(ctx.agent.value, next_obs)
            clipped, bound = clip_gradient_norms(grads, self.clip_quantile)
            self.dim_weights = vagram_dim_weights(clipped)
            self._stats = {"vagram_grad_norm_median": grads.norm(dim=-1).median().item(),
                           "vagram_clip_bound": bound}
            return
        g, bound, clipped_rows = paper_code_gradient(
            critic_value_gradients(ctx.agent, next_obs), self.clip_quantile)
        first_epoch = ctx.learner_steps < self.epoch_length
        self.nll_dim_weights = paper_code_nll_weights(
            g, first_epoch, aligned=self.loss == "paper-code-aligned")
        self._stats = {"vagram_grad_norm_median": g.norm(dim=-1).median().item(),
                       "vagram_clip_bound": bound,
                       "vagram_clipped_rows": float(clipped_rows),
                       "vagram_negative_share": (g < 0).float().mean().item()}

    def fit_dim_weights(self) -> Tensor | None:
        return self.dim_weights

    def fit_nll_dim_weights(self) -> Tensor | None:
        return self.nll_dim_weights

    def model_batch_probability(self, learner_epoch: int) -> float:
        return model_batch_probability(learner_epoch) if self.sac_mix == "paper-code" else 1.0

    def stats(self) -> dict[str, float]:
        return dict(self._stats)
