"""What stacking P seeds' work into one (``stack_seeds: true``) saves, at the paper's sizes: a
block of SAC updates (`tom.stacked_sac`), a TOM refit's dual training and its discriminator's
(`tom.stacked_tom`), and a model-fit epoch (`tom.stacked_model`) of P members as one, against
the members' own one after another (as seeds in turns do them).

    python benchmarks/stacked.py --threads 2 --members 1 2 5 10 [--repeats 5] [--device cuda]
        [--dual-steps 100] [--disc-passes 5] [--model mdn|ensemble]

Both sides are what the training loop runs: `SAC.update_block`,
`TOMObjective._train_dual_alone`, `train_discriminator` and a fit epoch's steps inside
`DynamicsModel.fit` of each member, against `StackedSAC.update_block`, `StackedDual.train`,
`StackedDiscriminator.train` and `StackedFit.train` with each member's random inputs drawn as
its run draws them (`draw_noise`, `draw_dual_work`, `draw_disc_work`, the fit's own drawing;
counted in the stacked time) and the members' states copied into the stack and back. On a
GPU both sides replay CUDA graphs and are timed to the end of the GPU's work. Prints
milliseconds per member per SAC update, dual step, discriminator step and model-fit step,
and the speed-up per member.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from throughput import median_time  # benchmarks/throughput.py, next to this script

from tom import turns
from tom.buffer import ReplayBuffer, Transition
from tom.checkpoint import rng_state, set_rng_state
from tom.config import resolve
from tom.dynamics import DynamicsModel, FitEpoch, make_model
from tom.envs import get_task
from tom.objectives.tom import (
    Discriminator,
    PolicyGaussians,
    TOMObjective,
    draw_disc_work,
    draw_dual_work,
    train_discriminator,
)
from tom.optim import adam
from tom.sac import SAC
from tom.stacked_model import StackedFit
from tom.stacked_sac import StackedSAC, draw_noise
from tom.stacked_tom import StackedDiscriminator, StackedDual


def blocks(members: int, updates: int, rows: int, obs_dim: int, act_dim: int,
           device: str) -> list[Transition]:
    """One random block of minibatches ([update, row, ...]) per member."""
    def block() -> Transition:
        obs = torch.randn(updates, rows, obs_dim, device=device)
        return Transition(obs, torch.rand(updates, rows, act_dim, device=device) * 2 - 1,
                          torch.randn(updates, rows, device=device),
                          obs + 0.1 * torch.randn_like(obs),
                          (torch.rand(updates, rows, device=device) < 0.05).float())
    return [block() for _ in range(members)]


def replay_buffer(size: int, obs_dim: int, act_dim: int, device: str) -> ReplayBuffer:
    """``size`` random transitions, an initial state every 1 000."""
    buf = ReplayBuffer(size, obs_dim, act_dim, device)
    data = blocks(1, 1, size, obs_dim, act_dim, device)[0]
    buf.add_batch(Transition(*(t[0] for t in data)))
    for obs in data.obs[0, ::1000]:
        buf.add_initial_state(obs)
    return buf


class _EpochTimes:
    """`tom.turns.Turns` that times each epoch of a fit (its own steps, ``alone``) and keeps
    what its drawing draws ahead (`FitEpoch`) and the time that takes. The random state is
    put back after the drawing, so that the fit itself goes on as alone."""

    def __init__(self) -> None:
        self.alone: list[float] = []
        self.drawing: list[float] = []
        self.epochs: list[FitEpoch] = []
        self.passes = False  # no other runs: loops run at once, as alone

    def pass_turn(self) -> None:
        pass

    def together(self, kind, alone, part):
        state = rng_state()
        start = _now()
        self.epochs.append(part()[1])
        self.drawing.append(_now() - start)
        set_rng_state(state)
        start = _now()
        out = alone()
        self.alone.append(_now() - start)
        return out


def _now() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def fit_epoch_times(models: list[DynamicsModel], data: Transition, weights: torch.Tensor,
                    repeats: int, graph: bool) -> tuple[float, float]:
    """Median seconds of the P members' fit epochs one after another, and as one (their
    drawing included). Each repeat is a two-epoch fit of each member, of which the second
    epoch is timed (the first captures the fit's CUDA graphs on a GPU), then that epoch again,
    stacked, from where the fit left it."""
    own, stacked, stack = [], [], None
    for _ in range(repeats + 1):  # the first: warm-up (and Adam's state, which a stack needs)
        times = _EpochTimes()
        turns.register(times)
        try:
            for model in models:
                model.fit(data, weights)
        finally:
            turns.register(None)
        if len(times.epochs) != 2 * len(models):
            raise RuntimeError(f"a fit stopped early: {len(times.epochs)} epochs for "
                               f"{len(models)} fits of 2")
        stack = stack or StackedFit(models, cuda_graph=graph)
        start = _now()
        stack.train(times.epochs[1::2])
        own.append(sum(times.alone[1::2]))
        stacked.append(_now() - start + sum(times.drawing[1::2]))
    return statistics.median(own[1:]), statistics.median(stacked[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dual-steps", type=int, default=100,
                        help="dual steps per measured training (the paper preset's 1 000 "
                        "take ten times as long)")
    parser.add_argument("--disc-passes", type=int, default=5,
                        help="discriminator passes over the 1 000-row recent window per "
                        "measured training (4 steps each; the paper preset's 100 take 20 "
                        "times as long)")
    parser.add_argument("--model", default=None, choices=("mdn", "ensemble"),
                        help="the dynamics model (default: the preset's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = get_task(args.env)
    cfg = resolve(args.env, "tom", preset="paper", device=args.device,
                  overrides=[f"tom.dual_steps={args.dual_steps}",
                             f"tom.disc_passes={args.disc_passes}", "model.max_epochs=2",
                             "model.patience=2",
                             *([f"model.kind={args.model}"] if args.model else [])])
    graph = args.device == "cuda"
    o, a = task.obs_dim, task.act_dim
    updates, rows = cfg.schedule.update_block, cfg.sac.batch_size
    buf = replay_buffer(20_000, o, a, args.device)
    rho = torch.randn(len(buf), device=args.device)
    recent = buf.recent_mask(cfg.tom.recent_window)
    recent_idx = torch.nonzero(recent).squeeze(-1)
    disc_steps = args.disc_passes * -(-len(recent_idx) // cfg.tom.disc_batch)
    where = (torch.cuda.get_device_name() + ", CUDA graphs" if graph
             else f"{args.threads} CPU thread(s)")
    print(f"{args.env} at the paper preset, {where}, torch {torch.__version__}: blocks of "
          f"{updates} SAC updates, {args.dual_steps} dual steps, {disc_steps} "
          f"discriminator steps and a {cfg.model.kind} fit epoch of "
          f"{cfg.model.steps_per_epoch} steps on a 20 000-transition buffer; ms per member "
          f"per update or step (median of {args.repeats})")
    fit_data, fit_weights = buf.all(), torch.rand(len(buf), device=args.device) + 0.1
    for p in args.members:
        agents = [SAC(o, a, cfg.sac, args.device, cuda_graph=graph) for _ in range(p)]
        objectives = [TOMObjective(cfg, o, a) for _ in range(p)]
        data = blocks(p, updates, rows, o, a, args.device)
        stack_sac = StackedSAC(agents, cuda_graph=graph)
        stack_dual = StackedDual(objectives, cuda_graph=graph)

        def own_sac(agents=agents, data=data) -> None:
            for agent, block in zip(agents, data, strict=True):
                agent.update_block(block)

        def stacked_sac(stack=stack_sac, data=data) -> None:
            stack.update_block(data, [draw_noise(block) for block in data])

        def own_dual(agents=agents, objectives=objectives) -> None:
            for agent, objective in zip(agents, objectives, strict=True):
                objective._train_dual_alone(buf, PolicyGaussians.of(agent, buf), rho)

        def stacked_dual(stack=stack_dual, agents=agents) -> None:
            stack.train([draw_dual_work(buf, rho, PolicyGaussians.of(agent, buf), cfg.tom)
                         for agent in agents])

        def own_disc(members=p) -> None:
            for _ in range(members):
                train_discriminator(buf, recent, cfg.tom, o, a, cuda_graph=graph)

        def stacked_disc(members=p) -> None:  # fresh discriminators, as each refit has
            discs = [Discriminator(o, a, cfg.tom.disc_hidden, buf.all()).to(args.device)
                     for _ in range(members)]
            opts = [adam(d.parameters(), lr=cfg.tom.disc_lr, capturable=graph) for d in discs]
            works = [draw_disc_work(buf, recent_idx, cfg.tom) for _ in discs]
            StackedDiscriminator(discs, opts, cfg.tom, cuda_graph=graph).train(works)

        times = [1e3 * median_time(fn, args.repeats, warmup=2) / (p * n) for fn, n in (
            (own_sac, updates), (stacked_sac, updates), (own_dual, args.dual_steps),
            (stacked_dual, args.dual_steps), (own_disc, disc_steps),
            (stacked_disc, disc_steps))]
        models = [make_model(cfg.model, o, a, task.termination, args.device, cuda_graph=graph)
                  for _ in range(p)]
        times += [1e3 * t / (p * cfg.model.steps_per_epoch) for t in fit_epoch_times(
            models, fit_data, fit_weights, args.repeats, graph)]
        kinds = ("SAC update", "dual step", "discriminator step", "model-fit step")
        print(f"  P = {p:2d}: " + "; ".join(
            f"{what} own {own:6.3f} ms, stacked {mine:6.3f} ms ({own / mine:4.2f}×)"
            for what, own, mine in zip(kinds, times[::2], times[1::2], strict=True)),
            flush=True)


if __name__ == "__main__":
    main()
