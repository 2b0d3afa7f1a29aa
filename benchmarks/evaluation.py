"""What a run's evaluation costs once its episodes last their 1 000 steps, as late in a
run they do, for one run and for P seeds in one process (in turns).

    python benchmarks/evaluation.py --threads 2 [--env halfcheetah] [--members 1 2 5 10]
        [--repeats 3] [--device cuda]

`tom bench` times an epoch early in a run, whose evaluation episodes are short (a policy
after one fit falls within a few dozen steps); late in a hopper run each of the epoch's 5
evaluation episodes lasts 1 000 steps, and every step is a policy call. Here each run's one
epoch is its evaluation and nothing else (a schedule of one random real step, before any
fit), at the paper preset's sizes, by default on HalfCheetah, whose episodes always last
``max_episode_steps``: the real `Trainer` (`tom.evaluation`) and `tom.population` code,
timed around `Trainer.run` or `Population.run` (building the runs is not timed). Prints
seconds per evaluation per run, evaluation steps per second per run, and the speed-up per
run against one run alone; and how much of a run's evaluation the environments' own steps
take (on the host, one after another).

Until 2026-11-26 it also timed the seeds' evaluations stacked (one policy call per step for
every seed's episodes, with ``stack_seeds``): that took longer than in turns on this CPU and
on an H200 (benchmarks/RESULTS.md), and a population no longer stacks evaluations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tom.config import resolve
from tom.envs import make_env
from tom.mbpo import Trainer
from tom.population import Population


def _config(env: str, seed: int, device: str):
    return resolve(env, "mle", seed=seed, preset="paper", device=device, overrides=[
        "schedule.epochs=1", "schedule.epoch_length=1", "schedule.init_steps=2",
        "rollout.every=1"])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_evaluations(env: str, members: int, device: str, population: bool
                     ) -> tuple[float, float]:
    """Seconds of one evaluation of ``members`` runs, and their evaluation steps per run:
    alone (one run without a population), or a population in turns."""
    if not population:
        trainer = Trainer(_config(env, 0, device))
        _sync(device)
        start = time.perf_counter()
        results = [trainer.run()]
    else:
        runs = Population()
        for seed in range(members):
            runs.add(lambda seed=seed: Trainer(_config(env, seed, device)))
        _sync(device)
        start = time.perf_counter()
        results = runs.run()
    _sync(device)
    seconds = time.perf_counter() - start
    episodes = _config(env, 0, device).schedule.eval_episodes
    steps = statistics.mean(r.metrics[0]["episode_length"] * episodes for r in results)
    return seconds, steps


def time_environments(env: str, steps: int) -> float:
    """Seconds of ``steps`` steps of the task's environment alone (zero actions, resets not
    counted): the part of an evaluation that is not policy calls, one step after another
    on the host."""
    environment = make_env(env, seed=0)
    action = np.zeros(environment.action_space.shape, dtype=np.float32)
    environment.reset()
    seconds = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        _, _, terminated, truncated, _ = environment.step(action)
        seconds += time.perf_counter() - start
        if terminated or truncated:
            environment.reset()
    return seconds


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s for s, _ in runs), statistics.mean(n for _, n in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="halfcheetah")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    probe = _config(args.env, 0, args.device).schedule
    print(f"{args.env}, {probe.eval_episodes} episodes of up to {probe.max_episode_steps} "
          f"steps per evaluation, device {args.device}, {args.threads} threads; "
          f"median of {args.repeats}")
    alone, steps = _median([time_evaluations(args.env, 1, args.device, False)
                            for _ in range(args.repeats)])
    print(f"one run alone: {alone:.3f} s per evaluation of {steps:.0f} steps, "
          f"{steps / alone:.0f} steps/s")
    stepping = statistics.median(time_environments(args.env, round(steps))
                                 for _ in range(args.repeats))
    print(f"of which the environments' steps alone: {stepping:.3f} s "
          f"({1e6 * stepping / steps:.0f} µs each; per run, also in a population)")
    print("| runs in turns | s per evaluation per run | steps/s per run | per run against alone |")
    print("| --- | --- | --- | --- |")
    for members in args.members:
        seconds, steps = _median([time_evaluations(args.env, members, args.device, True)
                                  for _ in range(args.repeats)])
        seconds /= members
        print(f"| {members} | {seconds:.3f} | {steps / seconds:.0f} | {alone / seconds:.2f}× |",
              flush=True)


if __name__ == "__main__":
    main()
