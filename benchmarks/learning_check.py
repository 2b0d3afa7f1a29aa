"""Learning check (not a CI test): MBPO with MLE and TOM learns at paper hyperparameters.

Paper hyperparameters (ALGORITHM.md §7) except the budget:
  inverted_pendulum: 5 000 real steps (1 000 of them random), 3 seeds; pass if the evaluation
                     return reaches >= 900 for at least 2 of 3 seeds, per objective
  hopper:            25 000 real steps (5 000 random), 1 seed; pass if the return reaches >= 1000

Runs `tom train` as subprocesses, ``--jobs`` at a time, one torch thread each, and prints the
evaluation return at every epoch and each run's wall time. Usage:

    python benchmarks/learning_check.py --out runs/learning_check [--jobs 2] [--only hopper]
        [--seeds 1 2]   # other seeds than the check's own (e.g. to tell seed luck from a bug)
        [--objectives mle] [--set schedule.updates_per_step=20 ...]   # diagnostics, not the check

Runs with ``--set`` are diagnostics (the check is at paper hyperparameters): give them their own
``--out``, since a finished run directory is reused as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

CHECKS = {  # env: (extra overrides, seeds, threshold)
    "inverted_pendulum": (["schedule.epochs=5", "schedule.init_steps=1000"], [0, 1, 2], 900.0),
    "hopper": (["schedule.epochs=25"], [0], 1000.0),
}
OBJECTIVES = ("mle", "tom")


def run_one(out: Path, env: str, objective: str, seed: int, overrides: list[str]) -> float:
    run_dir = out / env / objective / str(seed)
    if (run_dir / "config.json").exists():  # finished before: reuse
        return float("nan")
    cmd = [sys.executable, "-m", "tom.cli", "train", "--env", env, "--objective", objective,
           "--seed", str(seed), "--preset", "paper", "--out", str(run_dir), "--quiet",
           "--set", *overrides]
    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "log.txt", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def report(out: Path, only: str | None = None, seeds_override: list[int] | None = None,
           objectives: tuple[str, ...] = OBJECTIVES) -> bool:
    ok = True
    for env, (_, check_seeds, threshold) in CHECKS.items():
        if only not in (None, env):
            continue
        seeds = seeds_override or check_seeds
        for objective in objectives:
            reached = 0
            for seed in seeds:
                path = out / env / objective / str(seed) / "metrics.csv"
                if not path.exists():
                    print(f"{env:>18} {objective:>5} seed {seed}: missing")
                    continue
                m = pd.read_csv(path)
                wall = m["wall_time"].iloc[-1]
                best = m["return_mean"].max()
                reached += best >= threshold
                curve = " ".join(f"{r:.0f}" for r in m["return_mean"])
                print(f"{env:>18} {objective:>5} seed {seed}: best {best:7.1f}  "
                      f"wall {wall:6.0f} s  returns by epoch: {curve}")
            need = 2 if len(seeds) == 3 else len(seeds)
            passed = reached >= need
            ok &= passed
            print(f"{env:>18} {objective:>5}: {reached}/{len(seeds)} seeds reach {threshold:.0f} "
                  f"-> {'PASS' if passed else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/learning_check")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", choices=list(CHECKS), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds to run instead of each check's own")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra `tom train --set` overrides (a diagnostic, not the check)")
    args = parser.parse_args()
    out = Path(args.out)
    jobs = [(env, obj, seed, overrides + args.set)
            for env, (overrides, seeds, _) in CHECKS.items() if args.only in (None, env)
            for seed in (args.seeds or seeds) for obj in args.objectives]
    jobs.sort(key=lambda j: j[0] != "hopper")  # the long runs first
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda j: run_one(out, *j), jobs))
    return 0 if report(out, args.only, args.seeds, tuple(args.objectives)) else 1


if __name__ == "__main__":
    sys.exit(main())
