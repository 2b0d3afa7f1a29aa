"""Where a window of real steps spends its time, seen by `torch.profiler`: the GPU's busy share
and how many kernels ran at once, and each host thread's time in the CUDA calls that launch
work or wait for it. The question under `tom.population`'s throughput on a GPU
(benchmarks/RESULTS.md: ten runs in turns keep the GPU busy 82 % of the time, as one run does,
and run only 1.5× as fast together).

    python benchmarks/gpu_timeline.py --seeds 10 --skip 100 --steps 20 [--objective tom]
        [--buffer-size 20000] [--device cuda] [--preset paper] [--trace timeline.json]

It prepares the runs as `tom bench` does (hopper, paper preset, the buffer filled with random
real transitions, a first fit), lets the first run take ``--skip`` real steps, profiles the
next ``--steps`` (every run takes as many: they take turns one real step at a time), and
prints:
- the window's wall time and real steps per second per run;
- GPU (``--device cuda``): the share of the window in which at least one kernel, copy or
  memset ran, the mean number at once while any ran, and the share of the window with 1, 2,
  3-4 and 5 or more at once;
- host: per thread (a run's, or the caller's), the time in the CUDA runtime calls that launch
  work (graph replays, kernels, copies) and in those that wait for the GPU (synchronisations),
  as shares of the window. Runs in turns hold the turn one at a time, so a thread's waits are
  time in which no other run's host work went ahead.
A refit falls every 250 real steps (``--skip 245 --steps 10`` holds one): keep the window
short, since a GPU records thousands of kernels per real step and run. ``--trace`` also writes
the Chrome trace (large).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

from tom import mbpo
from tom.bench import measure_throughput

# CUDA runtime calls in which the host waits for the GPU, and those that queue work.
WAITS = frozenset({"cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize",
                   "cudaMemcpy"})
LAUNCHES = frozenset({"cudaGraphLaunch", "cudaLaunchKernel", "cudaLaunchKernelExC",
                      "cuLaunchKernel", "cuLaunchKernelEx", "cudaMemcpyAsync",
                      "cudaMemsetAsync"})


def overlap(intervals: Iterable[tuple[float, float]]) -> tuple[float, float, dict[str, float]]:
    """For (start, end) intervals: the time covered by at least one, the mean number running
    while any runs, and the time with 1, 2, 3-4 and >= 5 running at once (a sweep over the
    interval ends)."""
    edges = sorted([(s, 1) for s, e in intervals if e > s] + [(e, -1) for s, e in intervals
                                                               if e > s])
    levels = {"1": 0.0, "2": 0.0, "3-4": 0.0, "5+": 0.0}
    covered = weighted = 0.0
    running, last = 0, None
    for t, change in edges:
        if running and last is not None:
            span = t - last
            covered += span
            weighted += running * span
            levels["1" if running == 1 else "2" if running == 2 else
                   "3-4" if running <= 4 else "5+"] += span
        running, last = running + change, t
    return covered, (weighted / covered if covered else 0.0), levels


def host_calls(events: Iterable[tuple[int, str, float]]) -> dict[int, dict[str, float]]:
    """Per thread, the time in waits (WAITS) and in launches (LAUNCHES) of (thread, name,
    duration) records; other calls are left out."""
    per_thread: dict[int, dict[str, float]] = defaultdict(lambda: {"wait": 0.0, "launch": 0.0})
    for thread, name, duration in events:
        if name in WAITS:
            per_thread[thread]["wait"] += duration
        elif name in LAUNCHES:
            per_thread[thread]["launch"] += duration
    return dict(per_thread)


def _window(skip: int, steps: int, prof: profile, clock: dict[str, float]) -> None:
    """Make the first trainer's real steps start and stop ``prof`` (a wrapper of
    `Trainer.run_steps`, which single runs and runs in turns both go through)."""
    original = mbpo.Trainer.run_steps
    first: list[mbpo.Trainer] = []

    def run_steps(self: mbpo.Trainer, *args, **kwargs) -> Iterator[None]:
        if not first:
            first.append(self)
        for done, _ in enumerate(original(self, *args, **kwargs), start=1):
            if self is first[0] and done == skip:
                prof.start()
                clock["start"] = time.perf_counter()
            if self is first[0] and done == skip + steps:
                clock["end"] = time.perf_counter()
                prof.stop()
            yield

    mbpo.Trainer.run_steps = run_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--objective", default="tom")
    parser.add_argument("--seeds", type=int, default=1, help="runs in turns (tom bench --seeds)")
    parser.add_argument("--buffer-size", type=int, default=20_000)
    parser.add_argument("--skip", type=int, default=100, help="real steps before the window")
    parser.add_argument("--steps", type=int, default=20, help="real steps in the window")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trace", help="also write the Chrome trace here")
    args = parser.parse_args()
    if args.skip < 1 or args.steps < 1:
        parser.error(f"--skip {args.skip} and --steps {args.steps}: each must be >= 1")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda"
                                           else [])
    try:  # every thread's operations, not only those of the thread that starts the profiler
        config = _ExperimentalConfig(profile_all_threads=True)
    except TypeError:
        print("this torch's profiler records the CPU operations of one thread only (the CUDA "
              "calls of all)")
        config = None
    prof = profile(activities=activities, experimental_config=config)
    clock: dict[str, float] = {}
    _window(args.skip, args.steps, prof, clock)
    measure_throughput(args.env, args.objective, buffer_size=args.buffer_size,
                       steps=args.skip + args.steps + 1, device=args.device,
                       threads=args.threads, preset=args.preset, overrides=args.set,
                       population=args.seeds)
    if "end" not in clock:  # a window across the end of an epoch (its last step does not yield)
        raise SystemExit(f"the window (real steps {args.skip + 1}-{args.skip + args.steps}) "
                         "was not reached: it must end before the last step of an epoch")
    wall = clock["end"] - clock["start"]
    events = prof.events()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    print(f"{args.env}/{args.objective}, {args.seeds} run(s) in turns, {args.device}, "
          f"real steps {args.skip + 1}-{args.skip + args.steps} of the timed epoch: "
          f"{wall * 1e3:.1f} ms, {args.steps / wall:.2f} real steps/s per run")
    device = [(e.time_range.start, e.time_range.end) for e in events
              if e.device_type == DeviceType.CUDA]
    if device:
        covered, mean, levels = overlap(device)
        span = wall * 1e6  # the profiler's times are microseconds
        print(f"GPU: {len(device)} kernels, copies and memsets; busy {covered / span:.0%} of "
              f"the window, {mean:.2f} at once while busy; share of the window with "
              + ", ".join(f"{k} at once {v / span:.0%}" for k, v in levels.items()))
    calls = host_calls((e.thread, e.name, e.time_range.end - e.time_range.start)
                       for e in events if e.device_type == DeviceType.CPU)
    waits = sum(c["wait"] for c in calls.values())
    launches = sum(c["launch"] for c in calls.values())
    print(f"host, all threads: waiting for the GPU {waits / 1e3:.1f} ms "
          f"({waits / (wall * 1e6):.0%} of the window), launching {launches / 1e3:.1f} ms "
          f"({launches / (wall * 1e6):.0%})")
    for thread, c in sorted(calls.items()):
        print(f"  thread {thread}: waiting {c['wait'] / 1e3:8.1f} ms, "
              f"launching {c['launch'] / 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
