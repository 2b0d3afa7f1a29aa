"""PMAC: policy-adapted mixture weights (Wang, Wongkamjan, Huang 2022, "Live in the Moment:
Learning Dynamics Model Adapted to Evolving Policy"; PMAC in its 2022 version and in the TOM
paper, PDML in the ICML 2023 version).

The replay buffer is a mixture of the occupancies of all historical policies. PMAC reweights
that mixture towards the current policy: older policy versions get geometrically less mass,
and the same distribution serves as model-fit weights and as the rollout start distribution
(ALGORITHM.md §6). What counts as a policy version is `pmac.version`:

'block' (default) follows the TOM paper's code (`update_litm_prob`, method `litm`): a version is
the set of transitions collected between two blocks of SAC updates. Incrementally: before any
block all transitions share the mass equally; on the first transition after a block every
probability is multiplied by d (= `pmac.decay`), and the transitions of the new version share
1 − d equally. Since the update count changes only by whole blocks and the loop takes at most
one block per real step, after storing its transition, the distinct values of the buffer's
`collected_at_update` are exactly the versions, in order. Numbering the versions present
0..V, the closed form computed here from the buffer alone is

    m_v = (1 − d) · d^(V − v)   for a version that started after a block,
    m_0 = d^V                   for the first version (collected at update count 0),
    p(row) = m_v / n_v,         n_v = that version's rows in the buffer,

normalised to sum to one (which changes anything only once the ring buffer has evicted rows).
A block after the newest transition starts no version until a transition follows it, as the
paper's code decays lazily at the next push. Masses are taken in float64 log space relative to
the largest, so d^V for V ~ 10^5 blocks never makes the sum underflow.

'refit' follows the PDML paper's policy snapshots, one per model training (every K = 250 real
steps): at every `update` the agent's update count is recorded as a snapshot (when it changed
since the last one), a transition collected at update count u belongs to version
v(u) = #{snapshots ≤ u}, and with V versions so far it weighs decay^(V − v(u)). Data of the
initial random phase (update count 0) counts as collected by the first snapshot's policy.

Both use the update count the buffer stores per transition, so both are right across buffer
wrap-around. `distribution` sums to one; `fit_weights` / `start_weights` return the same shape
scaled to mean 1 over the buffer, so the logged weight statistics read like TOM's (whose
weights have mean ≈ 1). Not implemented: the 2023 PDML variant that sets the mixture weights
from estimated total-variation distances between historical and current policies.
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
    """decay^k over the buffer, normalised to sum to one (float64; the 'refit' variant).

    Computed relative to the freshest row (exponent k − min k ≥ 0), so the largest term is 1 and
    the sum never underflows; only weights below ~1e-308 of the freshest round to zero.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    k = staleness.to(torch.float64)
    w = torch.exp((k - k.min()) * math.log(decay))
    return w / w.sum()


def block_distribution(collected_at_update: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    """The 'block' variant's per-row probabilities (float64, sum one) and each row's version.

    Versions are the distinct update counts in collection order; the masses are taken in log
    space and shifted so the largest per-row term is 1, so no sum underflows however many
    blocks there were (rows below ~1e-308 of the largest round to zero, as they should).
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in (0, 1) for the 'block' variant, got {decay} "
                         "(at 1 a new version would get no mass)")
    counts, version, n = torch.unique(collected_at_update, sorted=True, return_inverse=True,
                                      return_counts=True)
    newest = counts.numel() - 1
    age = (newest - torch.arange(newest + 1, device=counts.device)).to(torch.float64)
    log_m = age * math.log(decay) + math.log1p(-decay)  # (1 − d) d^(V − v)
    if counts[0].item() == 0:  # the first version, before any SAC update, holds d^V
        log_m[0] = newest * math.log(decay)
    log_p = log_m - n.to(torch.float64).log()
    w = torch.exp(log_p - log_p.max())[version]
    return w / w.sum(), version


class PMACObjective(ReweightingObjective):
    """Geometrically decaying mass per policy version, for the model fit and rollout starts."""

    def __init__(self, cfg: RunConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(cfg, obs_dim, act_dim)
        self.decay, self.version = cfg.pmac.decay, cfg.pmac.version
        if self.version == "block" and self.decay >= 1.0:  # fail at start, not at first refit
            raise ValueError("pmac.decay = 1 gives new versions no mass under pmac.version = "
                             "'block'; use a decay below 1, or 'refit' for uniform weights")
        self.snapshots: list[int] = []  # the agent's update count at each refit-round version
        self._p: Tensor | None = None  # float64, sums to one

    def update(self, ctx: RefitContext) -> None:
        now = int(ctx.agent.num_updates)
        if self.snapshots and now < self.snapshots[-1]:
            raise ValueError(f"the agent's update count went back from {self.snapshots[-1]} "
                             f"to {now}; PMAC's policy versions need a monotone count")
        if not self.snapshots or now > self.snapshots[-1]:
            self.snapshots.append(now)
        collected = ctx.buffer.collected_at_update()
        if self.version == "block":
            p, version = block_distribution(collected, self.decay)
            newest = int(version.max().item())  # versions in the buffer: 0..newest
            stats = {"pmac_policy_versions": float(newest + 1),
                     "pmac_max_staleness": float(newest)}
        else:
            snaps = torch.tensor(self.snapshots, dtype=torch.long, device=collected.device)
            staleness = len(self.snapshots) - policy_versions(collected, snaps)
            p = pmac_distribution(staleness, self.decay)
            stats = {"pmac_policy_versions": float(len(self.snapshots)),
                     "pmac_max_staleness": float(staleness.max().item())}
        self._p = p
        self.weights = (p * p.numel()).to(torch.float32)  # mean 1 over the buffer
        self._stats = stats

    def distribution(self) -> Tensor | None:
        """The normalised mixture weights (float64, sum to one), aligned with ``buffer.all()``."""
        return self._p

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": list(self.snapshots)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = list(state["snapshots"])
