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
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tom.buffer import ReplayBuffer, Transition, weighted_indices
from tom.checkpoint import env_state, rng_state, set_env_state, set_rng_state
from tom.config import RunConfig
from tom.dynamics import DynamicsModel, make_model
from tom.envs import get_task, make_env
from tom.evaluation import Evaluation
from tom.interrupt import Interrupted, StopRequest
from tom.objectives import (
    Objective,
    RefitContext,
    make_objective,
    weight_by_age,
    weight_statistics,
)
from tom.sac import SAC
from tom.stacked_sac import draw_action_noise, draw_noise
from tom.turns import pass_turn, together

PHASES = ("env", "objective", "model", "rollout", "sac", "eval")


class NumericalFault(FloatingPointError):
    """A NaN or Inf in a loss, weight or model prediction; names the phase and the real step."""

    def __init__(self, phase: str, env_steps: int, what: str) -> None:
        super().__init__(f"{what} is not finite, in phase '{phase}' at real step {env_steps}")
        self.phase, self.env_steps = phase, env_steps


def _require_finite(phase: str, env_steps: int, **values: Tensor | float | None) -> None:
    for name, value in values.items():
        if value is None:
            continue
        finite = (torch.isfinite(value).all().item() if isinstance(value, Tensor)
                  else math.isfinite(value))
        if not finite:
            raise NumericalFault(phase, env_steps, name.replace("_", " "))


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
        # Evaluation episodes come from environments and a seed stream of their own.
        self.evaluation = Evaluation(cfg.env, cfg.seed + 10_000, sch.eval_episodes,
                                     sch.max_episode_steps)
        obs_dim, act_dim = task.obs_dim, task.act_dim
        self.total_steps = sch.epochs * sch.epoch_length
        self.real = ReplayBuffer(self.total_steps, obs_dim, act_dim, self.device)
        refits_per_epoch = math.ceil(sch.epoch_length / cfg.rollout.every)
        model_capacity = (cfg.rollout.retain_epochs * refits_per_epoch * cfg.rollout.starts
                          * cfg.rollout.length)
        self.imagined = ReplayBuffer(model_capacity, obs_dim, act_dim, self.device)
        self.agent = SAC(obs_dim, act_dim, cfg.sac, self.device, compile=cfg.compile,
                         cuda_graph=cfg.cuda_graph)
        self.model: DynamicsModel = make_model(cfg.model, obs_dim, act_dim, task.termination,
                                               self.device, compile=cfg.compile,
                                               cuda_graph=cfg.cuda_graph,
                                               graph_steps=cfg.cuda_graph_steps)
        self.objective: Objective = make_objective(cfg, obs_dim, act_dim)
        self.env_steps = 0
        self.model_fitted = False
        # Where the schedule stands: epochs done, real steps and SAC updates into the current
        # epoch, seconds spent in it and in the run (carried across a resume).
        self.obs: Tensor | None = None
        self.epoch, self.epoch_step, self.epoch_updates = 0, 0, 0
        self.epoch_time = self.wall_time = 0.0
        self.latest: dict[str, float] = {}  # last refit's measurements, carried into metrics
        self.sac_stats: Mapping[str, float] = {}
        self.times: dict[str, float] = defaultdict(float)
        # Seconds inside this run's phases not spent on its own work: in a population, the
        # other runs' turns and the stacked work it ran (`tom.population` adds them).
        self.away = 0.0
        self.result = TrainResult(agent=self.agent)

    # -- the schedule -------------------------------------------------------------------------

    def run(self, progress: bool = False, on_epoch: Callable[[TrainResult], None] | None = None,
            checkpoint: Callable[[dict[str, Any]], None] | None = None,
            checkpoint_every: int = 0, stop: StopRequest | None = None) -> TrainResult:
        """Run the schedule from where the trainer stands (the start, or a loaded state).

        ``checkpoint(state)`` is called with `state_dict()` after every ``checkpoint_every``-th
        epoch, and after the current real step when ``stop`` has received a signal; the run
        then raises `Interrupted`. A non-finite loss, weight or prediction raises
        `NumericalFault` before anything after it is checkpointed.
        """
        for _ in self.run_steps(progress, on_epoch, checkpoint, checkpoint_every, stop):
            pass
        return self.result

    def run_steps(self, progress: bool = False,
                  on_epoch: Callable[[TrainResult], None] | None = None,
                  checkpoint: Callable[[dict[str, Any]], None] | None = None,
                  checkpoint_every: int = 0, stop: StopRequest | None = None
                  ) -> Iterator[None]:
        """`run`, one real step (with the refit and SAC updates after it) per iteration, so that
        several runs can take turns (`tom.population`); `result` holds what it produced."""
        sch = self.cfg.schedule
        self._clock = time.perf_counter() - self.wall_time
        if self.obs is None:
            self.obs = self._reset()
        bar = _progress_bar(self.total_steps, self.env_steps, progress, self.cfg)
        while self.epoch < sch.epochs:
            epoch_clock = time.perf_counter() - self.epoch_time
            while self.epoch_step < sch.epoch_length:
                self.epoch_step += 1
                self.obs = self._real_step(self.obs)
                if self._refit_due():
                    self._refit()
                if (self.model_fitted
                        and self.epoch_updates < sch.updates_per_step * self.epoch_step):
                    self.epoch_updates += self._sac_block()
                if stop is not None and stop.signal is not None:
                    self._interrupt(stop.signal, checkpoint, epoch_clock)
                if self.epoch_step < sch.epoch_length:  # the epoch's last step: after its eval
                    yield
            row = self._evaluate(self.epoch, self.epoch_updates,
                                 time.perf_counter() - epoch_clock,
                                 time.perf_counter() - self._clock)
            self.result.metrics.append(row)
            self.epoch, self.epoch_step, self.epoch_updates, self.epoch_time = (
                self.epoch + 1, 0, 0, 0.0)
            if bar is not None:
                bar.update(sch.epoch_length)
                bar.set_postfix(ret=f"{row['return_mean']:.0f}", sps=f"{row['sps']:.0f}")
            if on_epoch is not None:
                on_epoch(self.result)
            saved = False
            # Not after the last epoch: the run's files are written next.
            if (checkpoint is not None and checkpoint_every and self.epoch < sch.epochs
                    and self.epoch % checkpoint_every == 0):
                self._save(checkpoint)
                saved = True
            if stop is not None and stop.signal is not None and self.epoch < sch.epochs:
                self._interrupt(stop.signal, None if saved else checkpoint, time.perf_counter())
            yield
        if bar is not None:
            bar.close()

    def _save(self, checkpoint: Callable[[dict[str, Any]], None]) -> None:
        self.wall_time = time.perf_counter() - self._clock
        checkpoint(self.state_dict())

    def _interrupt(self, signum: int, checkpoint: Callable[[dict[str, Any]], None] | None,
                   epoch_clock: float) -> None:
        self.epoch_time = time.perf_counter() - epoch_clock
        if checkpoint is not None:
            self._save(checkpoint)
        raise Interrupted(signum)

    # -- checkpointing ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything `run` needs to continue exactly (see `tom.checkpoint`)."""
        return {
            "agent": self.agent.state_dict(), "model": self.model.training_state(),
            "objective": self.objective.state_dict(),
            "real": self.real.state_dict(), "imagined": self.imagined.state_dict(),
            "env": env_state(self.env),
            "eval_env_rng": self.evaluation.rng.bit_generator.state,
            "rng": rng_state(),
            "obs": self.obs, "env_steps": self.env_steps, "model_fitted": self.model_fitted,
            "epoch": self.epoch, "epoch_step": self.epoch_step,
            "epoch_updates": self.epoch_updates, "epoch_time": self.epoch_time,
            "wall_time": self.wall_time, "times": dict(self.times),
            "latest": dict(self.latest), "sac_stats": dict(self.sac_stats),
            "metrics": list(self.result.metrics), "weights": list(self.result.weights),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.model.load_training_state(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.real.load_state_dict(state["real"])
        self.imagined.load_state_dict(state["imagined"])
        set_env_state(self.env, state["env"])
        self.evaluation.rng.bit_generator.state = state["eval_env_rng"]
        set_rng_state(state["rng"])
        self.obs = None if state["obs"] is None else state["obs"].to(self.device)
        self.env_steps, self.model_fitted = state["env_steps"], state["model_fitted"]
        self.epoch, self.epoch_step = state["epoch"], state["epoch_step"]
        self.epoch_updates, self.epoch_time = state["epoch_updates"], state["epoch_time"]
        self.wall_time = state["wall_time"]
        self.times = defaultdict(float, state["times"])
        self.latest, self.sac_stats = dict(state["latest"]), dict(state["sac_stats"])
        self.result.metrics, self.result.weights = list(state["metrics"]), list(state["weights"])

    # -- phases -------------------------------------------------------------------------------

    def _reset(self) -> Tensor:
        obs, _ = self.env.reset()
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self.real.add_initial_state(obs)
        return obs

    def _phase_clock(self) -> float:
        """Seconds on the phase timers' clock: wall time less `away`."""
        return time.perf_counter() - self.away

    def _real_step(self, obs: Tensor) -> Tensor:
        t0 = self._phase_clock()
        if self.env_steps < self.cfg.schedule.init_steps:
            act = torch.as_tensor(self.env.action_space.sample(), dtype=torch.float32)
        else:
            # On the device alone (the buffer keeps that copy: no round trip through the
            # host), on the host where a population stacks its runs' actions.
            act = together(
                "act", lambda: self.agent.act(obs),
                lambda: (self.agent, obs, draw_action_noise(self.agent)))
        next_obs, reward, terminated, truncated, _ = self.env.step(act.cpu().numpy())
        next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=self.device)
        self.real.add(obs, act, float(reward), next_obs, float(terminated),
                      policy_updates=self.agent.num_updates)
        self.env_steps += 1
        out = self._reset() if terminated or truncated else next_obs
        self.times["env"] += self._phase_clock() - t0
        return out

    def _refit_due(self) -> bool:
        since = self.env_steps - self.cfg.schedule.init_steps
        return since >= 0 and since % self.cfg.rollout.every == 0 and len(self.real) > 1

    def _refit(self) -> None:
        cfg = self.cfg
        t0 = self._phase_clock()
        if self.model_fitted:  # error on the newest data, measured before the model sees it
            recent = self.real.recent(cfg.tom.recent_window)
            self.latest["model_error_recent"] = self.model.squared_error(recent).mean().item()
            self.latest["model_nll_recent"] = self.model.nll(recent).mean().item()
            _require_finite("model", self.env_steps,
                            model_error_on_recent_data=self.latest["model_error_recent"])
        learner_steps = max(0, self.env_steps - cfg.schedule.init_steps)
        try:
            self.objective.update(RefitContext(self.real, self.agent, self.env_steps,
                                               learner_steps))
        except FloatingPointError as err:
            raise NumericalFault("objective", self.env_steps, str(err)) from err
        weights, start_weights = self.objective.fit_weights(), self.objective.start_weights()
        dim_weights = self.objective.fit_dim_weights()
        nll_dim_weights = self.objective.fit_nll_dim_weights()
        _require_finite("objective", self.env_steps, fit_weights=weights,
                        start_weights=start_weights, per_dimension_weights=dim_weights,
                        per_dimension_NLL_weights=nll_dim_weights,
                        **{f"objective_statistic_{k}": v
                           for k, v in self.objective.stats().items()})
        t1 = self._phase_clock()
        fit = self.model.fit(self.real.all(), weights, dim_weights=dim_weights,
                             nll_dim_weights=nll_dim_weights)
        _require_finite("model", self.env_steps, model_training_loss=fit.train_loss,
                        model_holdout_loss=fit.holdout_loss)
        self.model_fitted = True
        t2 = self._phase_clock()
        self._rollouts(start_weights)
        t3 = self._phase_clock()
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
            _require_finite("rollout", self.env_steps, model_prediction=torch.cat(
                [step.next_obs, step.reward[:, None]], dim=1))
            self.imagined.add_batch(step)
            alive = step.done == 0
            if not alive.any():
                break
            obs = step.next_obs[alive]

    def _sac_block(self) -> int:
        t0 = self._phase_clock()
        sch, sac = self.cfg.schedule, self.cfg.sac
        # Truncated, as MBPO's and the paper's code: 256 · 0.05 = 12.8 gives 12 real rows.
        n_real = int(sac.batch_size * self.cfg.rollout.real_ratio)
        if len(self.imagined) == 0:
            n_real = sac.batch_size
        # The objective may mix model data into only some minibatches (the rest are their
        # real part alone); MBPO mixes every one, and then no coin is drawn.
        learner_epoch = max(0, self.env_steps - 1 - sch.init_steps) // sch.epoch_length
        p_model = self.objective.model_batch_probability(learner_epoch)
        block = sch.update_block
        if n_real == sac.batch_size:
            mixed = [False] * block
        elif p_model >= 1.0:
            mixed = [True] * block
        else:
            mixed = (torch.rand(block) < p_model).tolist()
        # The block's minibatches are drawn at once: [update, row, ...].
        real = self.real.sample_minibatches(block, n_real)
        n_mixed = sum(mixed)
        model = (self.imagined.sample_minibatches(n_mixed, sac.batch_size - n_real)
                 if n_mixed else None)
        if n_mixed == block:
            real = Transition(*(torch.cat(parts, 1) for parts in zip(real, model, strict=True)))
            model = None
        if model is None:  # the block's minibatches have one shape: one call (on a GPU, one graph)
            self.sac_stats = together(  # in a population that stacks its runs' work, as one
                "sac", lambda: self.agent.update_block(real),
                lambda: (self.agent, real, draw_noise(real)))
        else:
            k = 0
            for i in range(block):
                batch = real.index(i)
                if mixed[i]:
                    batch, k = Transition.cat([batch, model.index(k)]), k + 1
                self.sac_stats = self.agent.update(batch)
        pass_turn()  # in a population, the next member's step runs while this block does
        _require_finite("sac", self.env_steps,
                        **{f"SAC_{k.replace('_', ' ')}": v for k, v in self.sac_stats.items()})
        self.times["sac"] += self._phase_clock() - t0
        return block

    def _eval_actions(self, obs: Tensor) -> Tensor:
        """The deterministic actions for a batch of evaluation observations, on the host:
        this run's own also where a population stacks its runs' work (stacked, ten seeds'
        evaluations took longer than in turns, on a GPU and on a CPU;
        benchmarks/RESULTS.md)."""
        return self.agent.act(obs, deterministic=True).cpu()

    @torch.no_grad()
    def _evaluate(self, epoch: int, epoch_updates: int, epoch_time: float, wall: float
                  ) -> dict[str, float]:
        t0, phase_t0 = time.perf_counter(), self._phase_clock()
        returns, lengths = self.evaluation.run(self._eval_actions, self.device)
        self.times["eval"] += self._phase_clock() - phase_t0
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


class _ProgressLines:
    """Where stderr is a file (a pipeline job's log), one plain line per epoch instead of a
    progress bar: tqdm's carriage returns make a log unreadable."""

    def __init__(self, total: int, done: int, desc: str) -> None:
        self.total, self.done, self.desc = total, done, desc

    def update(self, steps: int) -> None:
        self.done += steps

    def set_postfix(self, ret: str, sps: str) -> None:
        print(f"{self.desc}: {self.done}/{self.total} real steps "
              f"({100 * self.done / self.total:.0f} %), {sps} steps/s, return {ret}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress_bar(total: int, done: int, enabled: bool, cfg: RunConfig):
    if not enabled:
        return None
    desc = f"{cfg.env}/{cfg.objective}/{cfg.seed}"
    if not sys.stderr.isatty():
        return _ProgressLines(total, done, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="step", desc=desc)


def train(cfg: RunConfig, progress: bool = False,
          on_epoch: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Run one (env, objective, seed) training run and return its metrics."""
    return Trainer(cfg).run(progress=progress, on_epoch=on_epoch)
