"""One TOM refit round on a fixed replay buffer (not a CI test): what the discriminator and the
dual make of the same data, so two versions of the code can be compared on equal footing.

Two steps:

    # 1. a replay buffer and a policy: MBPO (mle) at the paper preset for N real steps
    python benchmarks/refit_round.py collect --env hopper --steps 10000 --out /tmp/hopper10k.pt
    # 2. one refit round of TOM at the paper preset on it, for several seeds
    python benchmarks/refit_round.py round --state /tmp/hopper10k.pt --seeds 0 1 2
        [--rounds 5] [--objective tom] [--set tom.next_action_samples=8 ...]

Step 2 prints, per seed: the discriminator's balanced accuracy on D^π (the newest
``tom.recent_window`` transitions) vs the rest of R, its logit mean ± std on each, and for the
fit weights (clipped) and the rollout start weights (unclipped) the normalised ESS
(Σw)²/(n Σw²), the newest-tenth/buffer ratio (the mean weight of the newest 10 % of R over
the mean weight of R) and the largest weight (TOM: the clip at ``tom.w_max`` binds above
it). ``--rounds K`` runs K rounds on the same buffer and reports the last: the dual Q is
warm-started across rounds as in training (1 000 steps from a fresh Q do not converge), the
discriminator is fresh each round. It uses only interfaces older versions share
(``TOMObjective.update`` and its ``_shaping_reward``), so the same ``round`` step can run
against an older checkout: ``PYTHONPATH=<checkout>/src python benchmarks/refit_round.py
round ...`` (the state file holds plain tensors).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tom.buffer import ReplayBuffer
from tom.config import resolve
from tom.mbpo import Trainer
from tom.objectives import RefitContext, make_objective, weight_statistics
from tom.sac import SAC


def collect(args: argparse.Namespace) -> None:
    epochs = -(-args.steps // 1000)
    cfg = resolve(args.env, "mle", seed=args.seed, preset="paper",
                  overrides={"schedule.epochs": epochs})
    trainer = Trainer(cfg)
    start = time.perf_counter()
    result = trainer.run()
    buf = trainer.real
    torch.save({"env": args.env, "seed": args.seed, "steps": trainer.env_steps,
                "buffer": {name: getattr(buf, name)[:len(buf)].clone() for name in
                           ("_obs", "_act", "_reward", "_next_obs", "_done", "_stamp",
                            "_updates")},
                "initial_states": buf.initial_states().clone(),
                "agent": trainer.agent.state_dict()}, args.out)
    print(f"{args.env}: {trainer.env_steps} real steps in {time.perf_counter() - start:.0f} s, "
          f"last return {result.metrics[-1]['return_mean']:.0f}; saved {args.out}")


def _load(path: str) -> tuple[dict, ReplayBuffer]:
    state = torch.load(path, weights_only=False)
    stores = state["buffer"]
    n, obs_dim = stores["_obs"].shape
    buf = ReplayBuffer(n, obs_dim, stores["_act"].shape[1])
    for name, values in stores.items():
        getattr(buf, name)[:n] = values
    buf.inserted = n
    for s in state["initial_states"]:
        buf.add_initial_state(s)
    return state, buf


def _weight_summary(w: torch.Tensor | None, ages: torch.Tensor) -> tuple[float, float, float]:
    """Normalised ESS, newest-tenth/buffer mean ratio, and the largest weight."""
    stats = weight_statistics(w, ages.numel())
    if w is None:
        return stats["weight_ess"], 1.0, stats["weight_max"]
    w = w.double()
    newest = ages < w.numel() // 10
    return stats["weight_ess"], (w[newest].mean() / w.mean()).item(), stats["weight_max"]


def refit_round(args: argparse.Namespace) -> None:
    state, buf = _load(args.state)
    cfg = resolve(state["env"], args.objective, seed=0, preset="paper", overrides=args.set)
    obs_dim, act_dim = buf._obs.shape[1], buf._act.shape[1]
    agent = SAC(obs_dim, act_dim, cfg.sac)
    agent.load_state_dict(state["agent"])
    recent = buf.recent_mask(cfg.tom.recent_window)
    ages = buf.ages()
    print(f"{state['env']}, {len(buf)} transitions after {state['steps']} real steps; "
          f"objective {args.objective}, paper preset {args.set or ''}, round {args.rounds} of "
          f"{args.rounds} (warm-started dual)")
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        obj = make_objective(cfg, obs_dim, act_dim)
        captured = {}
        shaping = obj._shaping_reward

        def capture(b, r, shaping=shaping, captured=captured):
            stats, rho = shaping(b, r)
            captured["rho"] = rho
            return stats, rho

        obj._shaping_reward = capture
        start = time.perf_counter()
        for _ in range(args.rounds):
            obj.update(RefitContext(buf, agent, state["steps"], 10**9))
        seconds = (time.perf_counter() - start) / args.rounds
        rho = captured["rho"].double()
        stats = obj.stats()
        fit_ess, fit_ratio, fit_max = _weight_summary(obj.fit_weights(), ages)
        start_ess, start_ratio, start_max = _weight_summary(obj.start_weights(), ages)
        row = {"disc_acc": stats.get("disc_acc", float("nan")),
               "rho_recent_mean": rho[recent].mean().item(),
               "rho_recent_std": rho[recent].std().item(),
               "rho_old_mean": rho[~recent].mean().item(), "rho_old_std": rho[~recent].std().item(),
               "fit_ess": fit_ess, "fit_newest_tenth": fit_ratio, "fit_max": fit_max,
               "start_ess": start_ess, "start_newest_tenth": start_ratio,
               "start_max": start_max, "seconds": seconds}
        rows.append(row)
        print(f"seed {seed}: disc acc {row['disc_acc']:.3f}  rho on D^pi "
              f"{row['rho_recent_mean']:+.2f} ± {row['rho_recent_std']:.2f}, on the rest "
              f"{row['rho_old_mean']:+.2f} ± {row['rho_old_std']:.2f}  |  fit w: ESS "
              f"{fit_ess:.3f}, newest tenth {fit_ratio:.2f}x, max {fit_max:.2f}  |  start w: "
              f"ESS {start_ess:.3f}, newest tenth {start_ratio:.2f}x, max {start_max:.2f}, mean "
              f"{obj.start_weights().mean().item():.3f}  ({seconds:.0f} s)", flush=True)
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.3f}"
                                 for k in rows[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--env", default="hopper")
    c.add_argument("--steps", type=int, default=10_000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True)
    r = sub.add_parser("round")
    r.add_argument("--state", required=True)
    r.add_argument("--objective", default="tom")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--rounds", type=int, default=1, help="warm-started rounds, last reported")
    r.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    collect(args) if args.command == "collect" else refit_round(args)


if __name__ == "__main__":
    main()
