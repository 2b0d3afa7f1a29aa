"""Checkpoint size, write time and resume time at the paper preset (not a test; prints medians).

Builds the paper preset's trainer for a task and objective, fills the real replay buffer
with N real transitions (uniformly random actions in the real environment) and the model
buffer to its capacity (one epoch of rollouts: 4 refits × 100 000 starts at hopper's
settings), then measures what `tom train` does at every epoch's end:

  - write: ``Trainer.state_dict()`` + ``tom.checkpoint.save`` (atomic, fsynced)
  - resume: ``tom.checkpoint.load`` + a fresh ``Trainer`` + ``load_state_dict``

    python benchmarks/checkpoint.py [--env hopper] [--objective tom] [--steps 20000 100000]
        [--repeats 5] [--dir /tmp]

Compare the write time with an epoch's wall time at the same preset on the same machine
(`tom train ... --preset paper` prints steps/s; an epoch is 1 000 real steps).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tom import checkpoint
from tom.bench import fill
from tom.buffer import Transition
from tom.config import resolve
from tom.mbpo import Trainer


def fill_model_buffer(trainer: Trainer) -> None:
    """The model buffer to its capacity (its size in a run after the first epoch)."""
    cap, real = trainer.imagined.capacity, trainer.real.all()
    obs_dim, act_dim = real.obs.shape[1], real.act.shape[1]
    trainer.imagined.add_batch(Transition(torch.randn(cap, obs_dim), torch.randn(cap, act_dim),
                                          torch.randn(cap), torch.randn(cap, obs_dim),
                                          torch.zeros(cap)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--objective", default="tom")
    parser.add_argument("--steps", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="folder for the checkpoint file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = resolve(args.env, args.objective, preset="paper")
    folder = Path(args.dir or tempfile.mkdtemp(prefix="tom-ckpt-bench-"))
    path = folder / checkpoint.CHECKPOINT
    print(f"{args.env}/{args.objective} paper preset, file in {folder}")
    print(f"{'real steps':>10} {'size MB':>8} {'write s':>8} {'resume s':>9}")
    for steps in args.steps:
        trainer = Trainer(cfg)
        fill(trainer, steps)
        fill_model_buffer(trainer)
        writes, resumes = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            checkpoint.save(path, cfg.to_dict(), "bench", trainer.state_dict())
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            state = checkpoint.load(path, cfg.to_dict(), "bench")
            Trainer(cfg).load_state_dict(state)
            resumes.append(time.perf_counter() - start)
        size = path.stat().st_size / 1e6
        print(f"{steps:>10} {size:>8.1f} {statistics.median(writes):>8.2f} "
              f"{statistics.median(resumes):>9.2f}")
    path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
