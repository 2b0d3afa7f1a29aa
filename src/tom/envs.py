"""Task registry: Gymnasium MuJoCo v5 environments with MBPO's observations and termination rules.

Model-based rollouts need to know when an imagined transition ends an episode, so every task
carries a batched ``termination(obs, act, next_obs)`` that reproduces the real environment's
``terminated`` flag from the observation alone. Each rule is derived from the installed
Gymnasium v5 source (``is_healthy`` / ``step``) with the env's default thresholds; the few
places where the observation cannot see what the env checks are stated per function.

Exactness holds when the rule is evaluated in float64 (the env's own dtype). In float32, a value
within float32 rounding of a threshold (half an ulp: ~6e-8 for thresholds in [0.5, 2], ~4e-6
at Hopper's ±100) may be classified differently.

InvertedDoublePendulum-v5 is deliberately absent: its ``terminated`` tests the tip height
``site_xpos`` left over from MuJoCo's last internal (RK4) stage, not the returned ``qpos``, so no
function of ``next_obs`` matches it exactly (the heights differ by up to 0.012; the best rule
disagreed on 1 of 20,000 random-action steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers import RescaleAction
from torch import Tensor

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]

# Default thresholds of the Gymnasium v5 envs (constructor defaults; tests check they still match).
HOPPER_HEALTHY_STATE_RANGE = (-100.0, 100.0)
HOPPER_HEALTHY_Z_RANGE = (0.7, float("inf"))
HOPPER_HEALTHY_ANGLE_RANGE = (-0.2, 0.2)
WALKER2D_HEALTHY_Z_RANGE = (0.8, 2.0)
WALKER2D_HEALTHY_ANGLE_RANGE = (-1.0, 1.0)
ANT_HEALTHY_Z_RANGE = (0.2, 1.0)
HUMANOID_HEALTHY_Z_RANGE = (1.0, 2.0)
INVERTED_PENDULUM_MAX_ANGLE = 0.2  # hard-coded in InvertedPendulumEnv.step


@dataclass(frozen=True)
class TaskSpec:
    """Everything a run needs to build a task and to end imagined rollouts like the real env."""

    name: str
    gym_id: str
    make_kwargs: dict[str, Any] = field(hash=False)
    obs_dim: int
    act_dim: int
    termination: TerminationFn
    description: str


def _open_interval(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    """``low < x < high`` elementwise; NaN is outside, as with the env's Python comparisons."""
    low, high = bounds
    return (x > low) & (x < high)


def inverted_pendulum_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Pole angle ``next_obs[..., 1]`` beyond ±0.2 rad, or any non-finite entry.

    Exact: the env applies this very test to the observation it returns.
    """
    finite = torch.isfinite(next_obs).all(dim=-1)
    return ~finite | (next_obs[..., 1].abs() > INVERTED_PENDULUM_MAX_ANGLE)


def hopper_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy Hopper: z (index 0) <= 0.7, |angle| (index 1) >= 0.2, or state out of ±100.

    Observation layout: ``[z, angle, 3 joint angles, clip(qvel, ±10) (6)]``. The env requires
    ``qpos[2:]`` and the raw ``qvel`` strictly inside (-100, 100); here ``next_obs[..., 1:]`` is
    tested instead. The position part is exact, but the velocities are clipped to ±10 in the
    observation, so this rule cannot see ``|qvel| >= 100`` (it still catches NaN). That is the
    one gap: a state whose only fault is a raw velocity of 100 or more terminates in the env but
    not here. Random-action rollouts never reach it (velocities stay far below 100).
    """
    healthy = (
        _open_interval(next_obs[..., 1:], HOPPER_HEALTHY_STATE_RANGE).all(dim=-1)
        & _open_interval(next_obs[..., 0], HOPPER_HEALTHY_Z_RANGE)
        & _open_interval(next_obs[..., 1], HOPPER_HEALTHY_ANGLE_RANGE)
    )
    return ~healthy


def walker2d_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy Walker2d: z (index 0) outside (0.8, 2.0) or torso angle (index 1) outside (-1, 1).

    Exact: Walker2d-v5 has no state-range check, and z and angle are unclipped positions.
    """
    healthy = _open_interval(next_obs[..., 0], WALKER2D_HEALTHY_Z_RANGE) & _open_interval(
        next_obs[..., 1], WALKER2D_HEALTHY_ANGLE_RANGE
    )
    return ~healthy


def halfcheetah_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """HalfCheetah never terminates; only the time limit ends an episode."""
    return torch.zeros(next_obs.shape[:-1], dtype=torch.bool, device=next_obs.device)


def ant_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy Ant: torso z (index 0) outside the closed [0.2, 1.0], or any non-finite entry.

    The env checks finiteness of the full ``qpos, qvel``; the observation lacks the x, y
    position, so a state non-finite only in x or y would be missed. MuJoCo resets the simulation
    when a position or velocity turns non-finite, so this does not occur in practice.
    """
    low, high = ANT_HEALTHY_Z_RANGE
    z = next_obs[..., 0]
    healthy = torch.isfinite(next_obs).all(dim=-1) & (z >= low) & (z <= high)
    return ~healthy


def humanoid_termination(obs: Tensor, act: Tensor, next_obs: Tensor) -> Tensor:
    """Unhealthy Humanoid: torso z (index 0, ``qpos[2]``) outside the open (1.0, 2.0). Exact."""
    return ~_open_interval(next_obs[..., 0], HUMANOID_HEALTHY_Z_RANGE)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="inverted_pendulum",
            gym_id="InvertedPendulum-v5",
            make_kwargs={},
            obs_dim=4,
            act_dim=1,
            termination=inverted_pendulum_termination,
            description="cart-pole balance; ends when |pole angle| > 0.2 rad",
        ),
        TaskSpec(
            name="hopper",
            gym_id="Hopper-v5",
            make_kwargs={},
            obs_dim=11,
            act_dim=3,
            termination=hopper_termination,
            description="one-legged hopper, forward speed; ends when it falls",
        ),
        TaskSpec(
            name="walker2d",
            gym_id="Walker2d-v5",
            make_kwargs={},
            obs_dim=17,
            act_dim=6,
            termination=walker2d_termination,
            description="planar biped, forward speed; ends when it falls",
        ),
        TaskSpec(
            name="halfcheetah",
            gym_id="HalfCheetah-v5",
            make_kwargs={},
            obs_dim=17,
            act_dim=6,
            termination=halfcheetah_termination,
            description="planar cheetah, forward speed; never terminates",
        ),
        TaskSpec(
            name="ant",
            gym_id="Ant-v5",
            make_kwargs={"include_cfrc_ext_in_observation": False},
            obs_dim=27,
            act_dim=8,
            termination=ant_termination,
            description="quadruped, forward speed, no contact forces in obs; ends on torso z",
        ),
        TaskSpec(
            name="humanoid",
            gym_id="Humanoid-v5",
            make_kwargs={
                "include_cinert_in_observation": False,
                "include_cvel_in_observation": False,
                "include_qfrc_actuator_in_observation": False,
                "include_cfrc_ext_in_observation": False,
            },
            obs_dim=45,
            act_dim=17,
            termination=humanoid_termination,
            description="3D humanoid, forward speed, obs qpos[2:]+qvel only; ends when it falls",
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """Look up a task by short name, failing loudly with the allowed names on a typo."""
    try:
        return TASKS[name]
    except KeyError:
        allowed = ", ".join(TASKS)
        raise ValueError(f"unknown task {name!r}; allowed: {allowed}") from None


def make_env(name: str, seed: int | None = None, max_episode_steps: int = 1000) -> gym.Env:
    """Build the task's env with actions rescaled to [-1, 1] so agents never see native ranges.

    With ``seed``, the env is reset once with it and the action space is seeded, so that both
    the first episode and ``env.action_space.sample()`` are reproducible.
    """
    spec = get_task(name)
    env = gym.make(spec.gym_id, max_episode_steps=max_episode_steps, **spec.make_kwargs)
    shape = env.action_space.shape
    env = RescaleAction(
        env, np.full(shape, -1.0, dtype=np.float32), np.full(shape, 1.0, dtype=np.float32)
    )
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
