"""Backbone diagnostics (not a CI test): is the model or the critic what holds MBPO back?

Trains one run and prints, after every epoch once the model is fitted:
  - the model's one-step error on the newest 1 000 real transitions (the recent window): mean
    and 99th-percentile absolute reward error of a sampled step, reward error of the mean
    prediction, next-state RMSE, and the termination rate of model steps against the real one;
  - the critics' TD error (sum of both critics' mean squared errors, as SAC's q_loss) on 5 000
    real and 5 000 model transitions, with the mean Q on each, and the temperature.

Usage (paper hyperparameters, like the learning check; extra `--set` overrides as in `tom train`):

    python benchmarks/backbone_diagnostics.py --env hopper --epochs 12 [--objective mle]
        [--seed 0] [--set schedule.updates_per_step=20 ...]
"""

from __future__ import annotations

import argparse

import torch

from tom.buffer import Transition
from tom.config import resolve
from tom.mbpo import Trainer, TrainResult

RECENT = 1000
TD_BATCH = 5000


@torch.no_grad()
def td_error(trainer: Trainer, batch: Transition) -> tuple[float, float]:
    """SAC's critic loss on ``batch`` (no update) and the mean Q of the batch."""
    agent = trainer.agent
    loss = agent.critic_loss(batch, agent.alpha)
    return loss.item(), agent.critic(batch.obs, batch.act).mean().item()


@torch.no_grad()
def model_error(trainer: Trainer) -> str:
    recent = trainer.real.recent(RECENT)
    step = trainer.model.step(recent.obs, recent.act)
    reward_error = (step.reward - recent.reward).abs()
    mean_reward, _ = trainer.model.predict_mean(recent.obs, recent.act)
    state_rmse = (step.next_obs - recent.next_obs).pow(2).mean().sqrt()
    return (f"model |dr| {reward_error.mean():.3f} (p99 {reward_error.quantile(0.99):.2f}, "
            f"mean prediction {(mean_reward - recent.reward).abs().mean():.3f}) "
            f"s' rmse {state_rmse:.3f} done {step.done.mean():.3f} vs real "
            f"{recent.done.mean():.3f}")


def report(trainer: Trainer, result: TrainResult) -> None:
    row = result.metrics[-1]
    line = f"{row['env_steps']:>7.0f} steps  return {row['return_mean']:7.1f}"
    if trainer.model_fitted and len(trainer.imagined) > 0:
        td_real, q_real = td_error(trainer, trainer.real.sample(TD_BATCH))
        td_model, q_model = td_error(trainer, trainer.imagined.sample(TD_BATCH))
        line += (f"  | {model_error(trainer)}  | TD real {td_real:6.1f} (Q {q_real:6.1f}) "
                 f"model {td_model:6.1f} (Q {q_model:6.1f})  alpha {trainer.agent.alpha:.3f}")
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--objective", default="mle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = resolve(args.env, args.objective, args.seed, "paper",
                  [f"schedule.epochs={args.epochs}", *args.set])
    trainer = Trainer(cfg)
    trainer.run(on_epoch=lambda result: report(trainer, result))


if __name__ == "__main__":
    main()
