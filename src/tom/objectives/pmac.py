"""PMAC: policy-adapted mixture weights (Wang, Wongkamjan, Huang 2022, "Live in the Moment:
Learning Dynamics Model Adapted to Evolving Policy"; PMAC in its 2022 version and in the TOM
paper, PDML in the ICML 2023 version).

The replay buffer is a mixture of the occupancies of all historical policies. PMAC reweights
that mixture towards the current policy: each real transition weighs decay^k, where k is the
number of policy versions between the one that collected it and the current one, and the
same weights serve as model-fit weights and as the rollout start distribution (ALGORITHM.md §6).

Which unit k counts is the main choice. The paper's "historical policies" π_1, …, π_t are
policy *iterations*: its code appends one policy snapshot per model training (every K = 250
real steps) and gives every transition collected between two model trainings the weight of the
snapshot before it. A SAC gradient step is not a policy version: MBPO takes ~5 per real step,
so 0.9 per gradient step would leave weight only on the last few dozen transitions. Here a
policy version is therefore a refit round: at every `update` the agent's update count is
recorded as a snapshot (when it changed since the last one), and a transition collected at
update count u belongs to version v(u) = #{snapshots ≤ u}. With V versions so far its weight is

    w ∝ decay^(V − v(u)),

so a transition collected k policy iterations ago weighs exactly decay^k times a fresh one.
This uses the update count the buffer stores per transition (`collected_at_update`), so it is
right across buffer wrap-around. Data of the initial random phase (update count 0) counts as
collected by the first snapshot's policy.

Weights are computed in log space relative to the freshest transition (decay^k underflows
float64 only for k > ~6700 at 0.9); `distribution` sums to one, and `fit_weights` /
`start_weights` return the same shape scaled to mean 1 over the buffer, so the logged weight
statistics read like TOM's (whose weights have mean ≈ 1). The normalised distribution is
``w / w.sum()``. Not implemented: the 2023 PDML variant that sets the mixture weights from
estimated total-variation distances between historical and current policies.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tom.objectives.base import RefitContext, ReweightingObjective

if TYPE_CHECKING:
    from tom.config import RunConfig


def policy_versions(collected_at_update: Tensor, snapshots: Tensor) -> Tensor:
    """Version v(u) = number of snapshot update counts ≤ u (snapshots sorted, increasing)."""
    return torch.searchsorted(snapshots, collected_at_update.to(snapshots.dtype), right=True)


def pmac_distribution(staleness: Tensor, decay: float) -> Tensor:
    """decay^k over the buffer, normalised to sum to one (float64).

    Computed relative to the freshest row (exponent k − min k ≥ 0), so the largest term is 1 and
    the sum never underflows; only weights below ~1e-308 of the freshest round to zero.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    k = staleness.to(torch.float64)
    w = torch.exp((k - k.min()) * math.log(decay))
    return w / w.sum()


class PMACObjective(ReweightingObjective):
    """Weights decay^(policy versions since collection), for the model fit and rollout starts."""

    def __init__(self, cfg: RunConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.decay = cfg.pmac.decay
        self.snapshots: list[int] = []  # the agent's update count at each new policy version

    def update(self, ctx: RefitContext) -> None:
        now = int(ctx.agent.num_updates)
        if self.snapshots and now < self.snapshots[-1]:
            raise ValueError(f"the agent's update count went back from {self.snapshots[-1]} "
                             f"to {now}; PMAC's policy versions need a monotone count")
        if not self.snapshots or now > self.snapshots[-1]:
            self.snapshots.append(now)
        collected = ctx.buffer.collected_at_update()
        snaps = torch.tensor(self.snapshots, dtype=torch.long, device=collected.device)
        staleness = len(self.snapshots) - policy_versions(collected, snaps)
        p = pmac_distribution(staleness, self.decay)
        self.weights = (p * p.numel()).to(torch.float32)  # mean 1 over the buffer
        self._stats = {"pmac_policy_versions": float(len(self.snapshots)),
                       "pmac_max_staleness": float(staleness.max().item())}

    def distribution(self) -> Tensor | None:
        """The normalised mixture weights (sum to one), aligned with ``buffer.all()``."""
        return None if self.weights is None else self.weights / self.weights.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": list(self.snapshots)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = list(state["snapshots"])
