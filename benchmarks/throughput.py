"""Throughput of the training loop (not a test; prints medians). Two modes:

``loop`` (the default; the same as ``tom bench``): the real training loop end to end at the
paper preset. The replay buffer is first filled with ``--buffer-size`` random real
transitions, the model fit once, then ``--steps`` real steps (whole epochs: refits, rollouts,
SAC updates, evaluation) are timed; prints real steps/s and the seconds per phase, and with
``--csv`` appends one row per measurement (with the git commit).

    python benchmarks/throughput.py loop --env hopper --objective mle tom \
        --buffer-size 20000 100000 --steps 1000 --threads 2 --csv benchmarks/throughput.csv

``micro``: single operations at paper-scale sizes on synthetic data of a task's dimensions:
  - one SAC update (batch 256, 256×256 critics and actor)
  - one dynamics-model minibatch step (4×200 MDN or 7-member ensemble, batch 256)
  - one rollout step of 100 000 start states through the model (sampling + termination)
  - one TOM refit of the objective (discriminator + dual Q + weights) on a 20 000-transition
    buffer with a 1 000-transition recent window

    python benchmarks/throughput.py micro [--env hopper] [--threads 1] [--repeats 5] [--compile]
        [--device cpu|cuda] [--sac eager compile graph graph+compile]

With ``--compile`` the steps are compiled as a run compiles them (`tom.compile`: on a CPU
each SAC update and model minibatch step whole, with CUDA graphs the losses alone); the
first call's time (the compilation) is printed separately. ``--sac`` times the SAC update
in each form listed (``graph``: captured as a CUDA graph, `tom.sac`; CUDA only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from tom.buffer import ReplayBuffer, Transition
from tom.config import resolve
from tom.dynamics import make_model
from tom.envs import get_task
from tom.objectives import RefitContext, make_objective
from tom.sac import SAC


def _sync() -> None:
    """Wait for queued GPU work, so that a host clock reads the time it took."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], repeats: int, inner: int = 1,
                label: str = "", warmup: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(warmup):  # with --compile: the compilation; with graphs: the capture
        fn()
    _sync()
    if label:
        print(f"  ({label}: first {warmup} call(s) {time.perf_counter() - start:.1f} s)")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def synthetic(n: int, obs_dim: int, act_dim: int, device: str = "cpu") -> Transition:
    obs = torch.randn(n, obs_dim)
    return Transition(obs, torch.rand(n, act_dim) * 2 - 1, torch.randn(n),
                      obs + 0.1 * torch.randn(n, obs_dim), torch.zeros(n)).to(device)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] != "micro":
        from tom.cli import main as tom_main

        args = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "loop" else sys.argv[1:]
        sys.exit(tom_main(["bench", *args]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="compile the inner steps")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sac", nargs="+", metavar="FORM",
                        choices=("eager", "compile", "graph", "graph+compile"),
                        help="forms of the SAC update to time (default: eager, or compile "
                        "with --compile)")
    args = parser.parse_args(sys.argv[2:])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = get_task(args.env)
    dev = args.device
    cfg = resolve(args.env, "tom", preset="paper", device=dev)
    o, a = task.obs_dim, task.act_dim
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"{args.env}: obs {o}, act {a}; torch {torch.__version__} on {name}, "
          f"{args.threads} thread(s); median of {args.repeats}; "
          f"{'compiled' if args.compile else 'eager'}")

    batch = synthetic(cfg.sac.batch_size, o, a, dev)
    for form in args.sac or ["compile" if args.compile else "eager"]:
        agent = SAC(o, a, cfg.sac, dev, compile="compile" in form, cuda_graph="graph" in form)
        t = median_time(lambda agent=agent: agent.update(batch), args.repeats, inner=20,
                        label=f"SAC update, {form}" if form != "eager" else "",
                        warmup=SAC.GRAPH_WARMUP + 2)
        per_step = t * cfg.schedule.updates_per_step * 1e3
        print(f"  SAC update ({form}, batch {cfg.sac.batch_size}): {t * 1e3:8.3f} ms"
              f"  -> {cfg.schedule.updates_per_step:.0f} per real step: {per_step:.1f} ms",
              flush=True)

    for kind in ("mdn", "ensemble"):
        cfg.model.kind = kind
        model = make_model(cfg.model, o, a, task.termination, dev, compile=args.compile)
        data = synthetic(20_000, o, a, dev)
        cfg.model.max_epochs, cfg.model.steps_per_epoch = 1, 50
        fit = median_time(lambda m=model, d=data: m.fit(d), max(1, args.repeats // 2),
                          label=f"{kind} fit" if args.compile else "")
        print(f"  model step ({kind:8s}, batch {cfg.model.batch_size}):   "
              f"{fit / 50 * 1e3:8.2f} ms")
        starts = synthetic(cfg.rollout.starts, o, a, dev)
        t = median_time(lambda m=model, s=starts: m.step(s.obs, s.act), args.repeats)
        print(f"  rollout step ({kind:8s}, {cfg.rollout.starts} starts): {t * 1e3:8.1f} ms")

    buf = ReplayBuffer(20_000, o, a, dev)
    buf.add_batch(synthetic(20_000, o, a, dev))
    for s in synthetic(100, o, a, dev).obs:
        buf.add_initial_state(s)
    objective = make_objective(cfg, o, a)
    ctx = RefitContext(buf, agent, env_steps=20_000, learner_steps=20_000)
    t = median_time(lambda: objective.update(ctx), max(1, args.repeats // 2))
    print(f"  TOM refit (disc {cfg.tom.disc_passes} passes, dual {cfg.tom.dual_steps} steps, "
          f"weights for 20 000): {t:6.2f} s")


if __name__ == "__main__":
    main()
