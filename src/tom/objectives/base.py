"""The model-learning objective interface, and the weight statistics every objective reports.

An objective decides *which* real transitions the dynamics model should be right on. It sees
the replay buffer and the agent once per refit (`update`), and answers two questions:
per-sample weights for the model fit (`fit_weights`) and the distribution of rollout start
states (`start_weights`). ``None`` means uniform, which is plain MBPO. An objective that needs
a different loss rather than different weights (VaGraM) also returns `fit_dim_weights` or
`fit_nll_dim_weights`, and one may change how SAC minibatches mix real and model data
(`model_batch_probability`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tom.buffer import ReplayBuffer
    from tom.config import RunConfig
    from tom.sac import SAC


@dataclass
class RefitContext:
    """What an objective may look at when the loop refits the model."""

    buffer: ReplayBuffer
    agent: SAC
    env_steps: int
    learner_steps: int  # real steps taken by the learning policy (the random ones excluded)


class Objective:
    """Uniform weights; subclasses override `update` and the two weight methods."""

    def __init__(self, cfg: RunConfig, obs_dim: int, act_dim: int) -> None:
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.device = torch.device(cfg.device)

    def update(self, ctx: RefitContext) -> None:
        """Recompute whatever the weights depend on (called before every model fit)."""

    def fit_weights(self) -> Tensor | None:
        """Per-transition weights for the model fit, aligned with ``buffer.all()``."""
        return None

    def start_weights(self) -> Tensor | None:
        """Unnormalised rollout start distribution over ``buffer.all()``."""
        return None

    def fit_dim_weights(self) -> Tensor | None:
        """Per-transition, per-target weights [N, 1 + obs_dim] in raw units, aligned with
        ``buffer.all()``; not None switches the model fit to the weighted squared error of its
        mean instead of the NLL (VaGraM needs a different loss, not just different weights)."""
        return None

    def fit_nll_dim_weights(self) -> Tensor | None:
        """Per-transition, per-target weights [N, 1 + obs_dim] of the NLL of each normalised
        target dimension, any sign, aligned with ``buffer.all()``; not None switches the fit to
        Σ_d W_d · nll_d (VaGraM as the TOM paper's code computes it)."""
        return None

    def model_batch_probability(self, learner_epoch: int) -> float:
        """Probability that a SAC minibatch of this epoch mixes model data in (real_ratio
        real, the rest model); otherwise it holds only its real part. ``learner_epoch``
        counts epochs of the learning policy from 0 (the random phase excluded). 1: MBPO,
        always mixed; VaGraM as the paper's code ramps it up."""
        del learner_epoch
        return 1.0

    def stats(self) -> dict[str, float]:
        """Objective-specific scalars for metrics.csv (e.g. discriminator accuracy)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class ReweightingObjective(Objective):
    """An objective whose one weight vector, set by `update`, drives both the model fit and
    the rollout starts (TOM, PMAC)."""

    def __init__(self, cfg: RunConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.weights: Tensor | None = None
        self._stats: dict[str, float] = {}

    def fit_weights(self) -> Tensor | None:
        return self.weights

    def start_weights(self) -> Tensor | None:
        return self.weights

    def stats(self) -> dict[str, float]:
        return dict(self._stats)


def weight_statistics(weights: Tensor | None, n: int) -> dict[str, float]:
    """Mean, max and normalised effective sample size (Σw)²/(n Σw²) of the fit weights."""
    if weights is None:
        return {"weight_mean": 1.0, "weight_max": 1.0, "weight_ess": 1.0}
    w = weights.double()
    return {"weight_mean": w.mean().item(), "weight_max": w.max().item(),
            "weight_ess": (w.sum() ** 2 / (n * (w * w).sum())).item()}


def weight_by_age(weights: Tensor | None, ages: Tensor, bins: int) -> list[dict[str, float]]:
    """Mean weight, relative to the buffer's mean weight, in equal-width bins of age.

    Age is counted in real transitions since insertion (0 = newest). A uniform objective gives
    1.0 in every bin; TOM's claim 1 is that the newest bins rise above 1.
    """
    n = ages.numel()
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double().cpu()
    w = w / w.mean()
    ages = ages.cpu()
    width = max(1, -(-n // bins))  # ceil(n / bins)
    index = torch.div(ages, width, rounding_mode="floor").clamp(max=bins - 1)
    sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, w)
    counts = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, torch.ones_like(w))
    rows = []
    for b in range(bins):
        if counts[b] > 0:
            rows.append({"age_bin": b, "age_lo": b * width, "age_hi": min((b + 1) * width, n),
                         "mean_weight": (sums[b] / counts[b]).item(),
                         "count": int(counts[b].item())})
    return rows
