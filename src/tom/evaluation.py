"""A run's deterministic evaluation: its episodes side by side, one policy call per step.

Each epoch a run evaluates its policy on ``episodes`` episodes of its own evaluation
environment. One after another, every step of every episode is a policy forward pass and a
copy to the host: on a GPU about 0.2 ms each, so late in a run, when episodes last their
1 000 steps, some 5 000 of them per epoch (benchmarks/RESULTS.md). Here the episodes run
side by side, one environment each, and each step is one policy call for all of them: a
[episodes, obs_dim] batch, always that shape (an episode that has ended keeps its row and
its last observation, and is no longer stepped), so that each episode's actions depend only
on its own observations and its row, not on how many others are still running. In a
population whose runs take turns in threads (on a GPU), a run passes the turn every
`tom.turns.STEPS_PER_TURN` steps of its evaluation, as in its other long loops.

The episodes start where the old one-after-another evaluation started them: the
environments share one random generator (the first environment's, seeded with the run's
evaluation seed), and are reset in order at the start, so the k-th draws the k-th initial
state from that stream. A MuJoCo task's steps draw nothing from it (the tests check the
tasks), so the stream is left where one environment evaluating episode after episode would
leave it, and a checkpoint keeps it as before. The actions of a batch differ from those
for one observation at a time in the last bits (the matrix products add in another order),
and the returns with them; the policy and the initial states are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from tom.envs import make_env
from tom.turns import pass_turn_every


class Evaluation:
    """``episodes`` evaluation environments of task ``env`` with one random stream, seeded
    with ``seed``."""

    def __init__(self, env: str, seed: int, episodes: int, max_episode_steps: int) -> None:
        if episodes < 1:
            raise ValueError(f"evaluation episodes must be at least 1, got {episodes}")
        self.envs: list[gym.Env] = [make_env(env, seed=seed, max_episode_steps=max_episode_steps)]
        self.envs += [make_env(env, max_episode_steps=max_episode_steps)
                      for _ in range(episodes - 1)]
        for other in self.envs[1:]:
            other.unwrapped.np_random = self.rng

    @property
    def rng(self) -> np.random.Generator:
        """The stream the episodes' initial states come from (kept in checkpoints)."""
        return self.envs[0].unwrapped.np_random

    def run(self, policy: Callable[[Tensor], Tensor], device: torch.device
            ) -> tuple[list[float], list[int]]:
        """Every episode to its end: their returns and lengths. ``policy`` maps a
        [episodes, obs_dim] float32 batch on ``device`` to the actions [episodes, act_dim]
        on the host."""
        obs = np.stack([env.reset()[0] for env in self.envs])
        returns, lengths = [0.0] * len(self.envs), [0] * len(self.envs)
        running, steps = list(range(len(self.envs))), 0
        while running:
            actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)).numpy()
            still = []
            for k in running:
                obs[k], reward, terminated, truncated, _ = self.envs[k].step(actions[k])
                returns[k] += float(reward)
                lengths[k] += 1
                if not (terminated or truncated):
                    still.append(k)
            running, steps = still, steps + 1
            pass_turn_every(steps)  # in a population on a GPU: the others queue work meanwhile
        return returns, lengths
