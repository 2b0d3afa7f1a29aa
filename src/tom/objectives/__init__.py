"""Model-learning objectives, one module each; adding one is a module and a registry line.

Each registry entry names the class, a one-line description for ``tom envs``, and the config
values the objective changes relative to the defaults (applied below the preset, so presets and
``--set`` still win).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tom.objectives.base import Objective, RefitContext, weight_by_age, weight_statistics
from tom.objectives.mle import MLEObjective
from tom.objectives.pmac import PMACObjective
from tom.objectives.tom import TOMObjective
from tom.objectives.vagram import VaGraMObjective


@dataclass(frozen=True)
class ObjectiveSpec:
    cls: type[Objective]
    description: str
    config_overrides: dict[str, Any] = field(default_factory=dict)


# The paper's code holds out 10 % of the buffer for TOM's model and 20 % for MLE's.
_TOM = {"model.holdout_fraction": 0.1}

OBJECTIVES: dict[str, ObjectiveSpec] = {
    "mle": ObjectiveSpec(MLEObjective, "maximum likelihood, uniform rollout starts (MBPO)"),
    "tom": ObjectiveSpec(TOMObjective, "TOM: discriminator-shaped chi^2 dual weights", _TOM),
    "tom-nodisc": ObjectiveSpec(TOMObjective, "TOM ablation: binary reward, no discriminator",
                                {**_TOM, "tom.reward": "binary"}),
    "tom-kl": ObjectiveSpec(TOMObjective, "TOM ablation: KL instead of chi^2",
                            {**_TOM, "tom.divergence": "kl"}),
    "pmac": ObjectiveSpec(PMACObjective, "PMAC/PDML: weights decay^k, k = policy versions "
                          "since collection"),
    "vagram": ObjectiveSpec(VaGraMObjective, "VaGraM as the paper's code: MDN likelihood "
                            "weighted per dimension by the critics' value gradient"),
}


def make_objective(cfg, obs_dim: int, act_dim: int) -> Objective:
    """Instantiate the objective ``cfg.objective`` names."""
    return OBJECTIVES[cfg.objective].cls(cfg, obs_dim, act_dim)


__all__ = ["OBJECTIVES", "Objective", "ObjectiveSpec", "RefitContext", "make_objective",
           "weight_by_age", "weight_statistics"]
