"""The MBPO training loop (ALGORITHM.md §5), with the model-learning objective as a plug-in.

Reads in the order of the algorithm box:

    for each real step:
        act in the real environment (uniformly random for the first init_steps), store it
        every K real steps (from the end of the random phase on):
            measure the model's error on the recent window (data it has not been fit on yet)
            objective.update       (TOM: discriminator, dual Q, weights for every transition)
            model.fit              (weighted by objective.fit_weights)
            branched rollouts      (starts drawn ∝ objective.start_weights) -> model buffer
        SAC updates in blocks, at most updates_per_step per real step on average, on
            minibatches mixing real (real_ratio) and model transitions
        every epoch: deterministic evaluation on separate evaluation episodes

The loop is objective-agnostic: it never asks which objective it runs.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from tom.buffer import ReplayBuffer, Transition, weighted_indices
from tom.config import RunConfig
from tom.dynamics import DynamicsModel, make_model
from tom.envs import get_task, make_env
from tom.objectives import (
    Objective,
    RefitContext,
    make_objective,
    weight_by_age,
    weight_statistics,
)
from tom.sac import SAC

PHASES = ("env", "objective", "model", "rollout", "sac", "eval")


@dataclass
class TrainResult:
    """What a run produced: one metrics row per evaluation, weight profile rows per refit."""

    metrics: list[dict[str, float]] = field(default_factory=list)
    weights: list[dict[str, float]] = field(default_factory=list)
    agent: SAC | None = None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


class Trainer:
    """Holds one run's state; `run` executes the whole schedule."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        seed_everything(cfg.seed)
        self.device = torch.device(cfg.device)
        sch = cfg.schedule
        task = get_task(cfg.env)
        self.env = make_env(cfg.env, seed=cfg.seed, max_episode_steps=sch.max_episode_steps)
        # Evaluation episodes come from their own environment and seed stream.
        self.eval_env = make_env(cfg.env, seed=cfg.seed + 10_000,
                                 max_episode_steps=sch.max_episode_steps)
        obs_dim, act_dim = task.obs_dim, task.act_dim
        self.total_steps = sch.epochs * sch.epoch_length
        self.real = ReplayBuffer(self.total_steps, obs_dim, act_dim, self.device)
        refits_per_epoch = math.ceil(sch.epoch_length / cfg.rollout.every)
        model_capacity = (cfg.rollout.retain_epochs * refits_per_epoch * cfg.rollout.starts
                          * cfg.rollout.length)
        self.imagined = ReplayBuffer(model_capacity, obs_dim, act_dim, self.device)
        self.agent = SAC(obs_dim, act_dim, cfg.sac, self.device)
        self.model: DynamicsModel = make_model(cfg.model, obs_dim, act_dim, task.termination,
                                               self.device)
        self.objective: Objective = make_objective(cfg, obs_dim, act_dim)
        self.env_steps = 0
        self.model_fitted = False
        self.latest: dict[str, float] = {}  # last refit's measurements, carried into metrics
        self.sac_stats: dict[str, float] = {}
        self.times: dict[str, float] = defaultdict(float)
        self.result = TrainResult(agent=self.agent)

    # -- the schedule -------------------------------------------------------------------------

    def run(self, progress: bool = False, on_epoch: Callable[[TrainResult], None] | None = None
            ) -> TrainResult:
        sch, start = self.cfg.schedule, time.perf_counter()
        obs = self._reset()
        bar = _progress_bar(self.total_steps, progress, self.cfg)
        for epoch in range(sch.epochs):
            epoch_updates, epoch_start = 0, time.perf_counter()
            for epoch_step in range(1, sch.epoch_length + 1):
                obs = self._real_step(obs)
                if self._refit_due():
                    self._refit()
                if self.model_fitted and epoch_updates < sch.updates_per_step * epoch_step:
                    epoch_updates += self._sac_block()
            row = self._evaluate(epoch, epoch_updates, time.perf_counter() - epoch_start,
                                 time.perf_counter() - start)
            self.result.metrics.append(row)
            if bar is not None:
                bar.update(sch.epoch_length)
                bar.set_postfix(ret=f"{row['return_mean']:.0f}", sps=f"{row['sps']:.0f}")
            if on_epoch is not None:
                on_epoch(self.result)
        if bar is not None:
            bar.close()
        return self.result

    # -- phases -------------------------------------------------------------------------------

    def _reset(self) -> Tensor:
        obs, _ = self.env.reset()
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self.real.add_initial_state(obs)
        return obs

    def _real_step(self, obs: Tensor) -> Tensor:
        t0 = time.perf_counter()
        if self.env_steps < self.cfg.schedule.init_steps:
            act = torch.as_tensor(self.env.action_space.sample(), dtype=torch.float32)
        else:
            act = self.agent.act(obs).cpu()
        next_obs, reward, terminated, truncated, _ = self.env.step(act.numpy())
        next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=self.device)
        self.real.add(obs, act, float(reward), next_obs, float(terminated),
                      policy_updates=self.agent.num_updates)
        self.env_steps += 1
        out = self._reset() if terminated or truncated else next_obs
        self.times["env"] += time.perf_counter() - t0
        return out

    def _refit_due(self) -> bool:
        since = self.env_steps - self.cfg.schedule.init_steps
        return since >= 0 and since % self.cfg.rollout.every == 0 and len(self.real) > 1

    def _refit(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.model_fitted:  # error on the newest data, measured before the model sees it
            recent = self.real.recent(cfg.tom.recent_window)
            self.latest["model_error_recent"] = self.model.squared_error(recent).mean().item()
            self.latest["model_nll_recent"] = self.model.nll(recent).mean().item()
        learner_steps = max(0, self.env_steps - cfg.schedule.init_steps)
        self.objective.update(RefitContext(self.real, self.agent, self.env_steps, learner_steps))
        weights = self.objective.fit_weights()
        t1 = time.perf_counter()
        fit = self.model.fit(self.real.all(), weights,
                             dim_weights=self.objective.fit_dim_weights(),
                             nll_dim_weights=self.objective.fit_nll_dim_weights())
        self.model_fitted = True
        t2 = time.perf_counter()
        start_weights = self.objective.start_weights()
        self._rollouts(start_weights)
        t3 = time.perf_counter()
        self.times["objective"] += t1 - t0
        self.times["model"] += t2 - t1
        self.times["rollout"] += t3 - t2
        self.latest.update(weight_statistics(weights, len(self.real)))
        self.latest.update({f"start_{k}": v for k, v in
                            weight_statistics(start_weights, len(self.real)).items()})
        self.latest["model_holdout_loss"] = fit.holdout_loss
        self.latest["model_fit_epochs"] = fit.epochs
        self.latest.update(self.objective.stats())
        for row in weight_by_age(weights, self.real.ages(), cfg.tom.age_bins):
            self.result.weights.append({"env_steps": self.env_steps, **row})

    @torch.no_grad()
    def _rollouts(self, start_weights: Tensor | None) -> None:
        """Branched rollouts of the current policy in the model from buffer states."""
        n, roll = len(self.real), self.cfg.rollout
        idx = (torch.randint(n, (roll.starts,), device=self.device) if start_weights is None
               else weighted_indices(start_weights, roll.starts))
        obs = self.real.get(idx).obs
        for _ in range(roll.length):
            step = self.model.step(obs, self.agent.act(obs))
            self.imagined.add_batch(step)
            alive = step.done == 0
            if not alive.any():
                break
            obs = step.next_obs[alive]

    def _sac_block(self) -> int:
        t0 = time.perf_counter()
        sch, sac = self.cfg.schedule, self.cfg.sac
        # Truncated, as MBPO's and the paper's code: 256 · 0.05 = 12.8 gives 12 real rows.
        n_real = int(sac.batch_size * self.cfg.rollout.real_ratio)
        if len(self.imagined) == 0:
            n_real = sac.batch_size
        # The objective may mix model data into only some minibatches (the rest are their
        # real part alone); MBPO mixes every one, and then no coin is drawn.
        learner_epoch = max(0, self.env_steps - 1 - sch.init_steps) // sch.epoch_length
        p_model = self.objective.model_batch_probability(learner_epoch)
        for _ in range(sch.update_block):
            mixed = n_real < sac.batch_size and (p_model >= 1.0
                                                 or torch.rand(()).item() < p_model)
            batch = Transition.cat([self.real.sample(n_real),
                                    self.imagined.sample(sac.batch_size - n_real)]
                                   ) if mixed else self.real.sample(n_real)
            self.sac_stats = self.agent.update(batch)
        self.times["sac"] += time.perf_counter() - t0
        return sch.update_block

    @torch.no_grad()
    def _evaluate(self, epoch: int, epoch_updates: int, epoch_time: float, wall: float
                  ) -> dict[str, float]:
        t0 = time.perf_counter()
        returns, lengths = [], []
        for _ in range(self.cfg.schedule.eval_episodes):
            obs, _ = self.eval_env.reset()
            total, steps, done = 0.0, 0, False
            while not done:
                act = self.agent.act(torch.as_tensor(obs, dtype=torch.float32,
                                                     device=self.device), deterministic=True)
                obs, reward, terminated, truncated, _ = self.eval_env.step(act.cpu().numpy())
                total, steps, done = total + float(reward), steps + 1, terminated or truncated
            returns.append(total)
            lengths.append(steps)
        self.times["eval"] += time.perf_counter() - t0
        row: dict[str, float] = {
            "env_steps": self.env_steps, "epoch": epoch + 1,
            "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "episode_length": float(np.mean(lengths)),
            "sac_updates": self.agent.num_updates, "epoch_sac_updates": epoch_updates,
            "model_holdout_loss": math.nan, "model_error_recent": math.nan,
            "model_nll_recent": math.nan, "model_fit_epochs": math.nan,
            "weight_mean": math.nan, "weight_max": math.nan, "weight_ess": math.nan,
            "start_weight_mean": math.nan, "start_weight_max": math.nan,
            "start_weight_ess": math.nan,
        }
        row.update(self.latest)
        row.update({f"sac_{k}": v for k, v in self.sac_stats.items()})
        row.update({f"time_{k}": self.times[k] for k in PHASES})
        row["wall_time"] = wall + (time.perf_counter() - t0)
        row["sps"] = self.cfg.schedule.epoch_length / max(epoch_time, 1e-9)
        return row


def _progress_bar(total: int, enabled: bool, cfg: RunConfig):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", desc=f"{cfg.env}/{cfg.objective}/{cfg.seed}")


def train(cfg: RunConfig, progress: bool = False,
          on_epoch: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Run one (env, objective, seed) training run and return its metrics."""
    return Trainer(cfg).run(progress=progress, on_epoch=on_epoch)
