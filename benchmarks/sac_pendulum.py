"""SAC sanity check (not a CI test): `tom.sac` alone, model-free, on Gymnasium's Pendulum-v1.

Separates the SAC learner from MBPO: reference SAC implementations bring Pendulum-v1 from about
-1 500 to about -200 or better within 5 000 to 10 000 steps at one update per step. Prints the
mean return of 5 deterministic evaluation episodes every 1 000 steps.

    python benchmarks/sac_pendulum.py [--seed 0] [--steps 15000]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

from tom.buffer import ReplayBuffer
from tom.config import SACConfig
from tom.sac import SAC

RANDOM_STEPS = 1000
EVAL_EVERY = 1000
EVAL_EPISODES = 5


def evaluate(env: gym.Env, agent: SAC, scale: float) -> float:
    returns = []
    for _ in range(EVAL_EPISODES):
        obs, _ = env.reset()
        total, done = 0.0, False
        while not done:
            act = agent.act(torch.as_tensor(obs, dtype=torch.float32), deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(act.numpy() * scale)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=15_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    env, eval_env = gym.make("Pendulum-v1"), gym.make("Pendulum-v1")
    scale = float(env.action_space.high[0])  # the agent acts in [-1, 1]
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(obs_dim, act_dim, SACConfig())
    buffer = ReplayBuffer(args.steps, obs_dim, act_dim)
    obs = torch.as_tensor(env.reset(seed=args.seed)[0], dtype=torch.float32)
    env.action_space.seed(args.seed)
    eval_env.reset(seed=args.seed + 10_000)
    for step in range(1, args.steps + 1):
        if step <= RANDOM_STEPS:
            act = torch.as_tensor(env.action_space.sample() / scale, dtype=torch.float32)
        else:
            act = agent.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(act.numpy() * scale)
        next_obs = torch.as_tensor(next_obs, dtype=torch.float32)
        buffer.add(obs, act, float(reward), next_obs, float(terminated))
        obs = (torch.as_tensor(env.reset()[0], dtype=torch.float32) if terminated or truncated
               else next_obs)
        if step > RANDOM_STEPS:
            agent.update(buffer.sample(agent.cfg.batch_size))
        if step % EVAL_EVERY == 0:
            print(f"{step:>6} steps  return {evaluate(eval_env, agent, scale):8.1f}", flush=True)


if __name__ == "__main__":
    main()
