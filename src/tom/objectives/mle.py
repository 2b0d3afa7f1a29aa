"""MLE: plain maximum likelihood on the whole replay buffer, uniform rollout starts (MBPO)."""

from tom.objectives.base import Objective


class MLEObjective(Objective):
    """Uniform weights everywhere: the base class's behaviour, named for the registry."""
