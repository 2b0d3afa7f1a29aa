"""Do the CUDA graphs of several runs replay at once on one GPU, and what does a replay cost
the host? The question under `tom.population`'s throughput on a GPU (benchmarks/RESULTS.md).

    python benchmarks/graph_streams.py --members 1 2 5 10 [--block 1] [--rounds 200]

P SAC agents at the paper preset's sizes (hopper), each with a CUDA stream of its own and its
update captured as a CUDA graph on that stream, as a population member's is. A round is one
update of every member (`SAC.update`: the batch copied in, the graph replayed, its
statistics copied out), or with ``--block N`` one block of N updates of every member
(`SAC.update_block`, one graph for the N, as the training loop replays them). Printed for
each P, medians of ``--repeats``:
- launch: host microseconds per update (or block) with the GPU idle before it (what a replay
  costs the host when nothing waits);
- one thread: milliseconds per round, the members launched in turn from one thread, until
  the GPU has finished, and until the host had launched them (about equal where a launch
  waits for earlier work; much less where the host runs ahead of the GPU);
- threads: the same with each member launching its own rounds from a thread of its own (as
  population members do, but without taking turns);
- the speed-up of each over P rounds of one member. If the members' graphs ran at once, a
  round of 10 would take about what a round of one does (speed-up about 10); if they ran one
  after another, about 10 times as long (speed-up about 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass

import torch
from throughput import synthetic  # benchmarks/throughput.py, next to this script

from tom.buffer import Transition
from tom.config import resolve
from tom.envs import get_task
from tom.sac import SAC


@dataclass
class Member:
    agent: SAC
    batch: Transition  # [block, row, ...] with a block, else [row, ...]
    stream: torch.cuda.Stream
    block: bool

    def updates(self, count: int) -> None:
        """``count`` updates, or blocks of updates."""
        update = self.agent.update_block if self.block else self.agent.update
        with torch.cuda.stream(self.stream):
            for _ in range(count):
                update(self.batch)


def make_members(count: int, env: str, block: int) -> list[Member]:
    """``count`` agents, each with its own stream, its update (or block of ``block`` > 1
    updates) captured on that stream."""
    cfg = resolve(env, "tom", preset="paper", device="cuda")
    task = get_task(env)
    members = []
    for _ in range(count):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            agent = SAC(task.obs_dim, task.act_dim, cfg.sac, "cuda", cuda_graph=True)
            rows = [synthetic(cfg.sac.batch_size, task.obs_dim, task.act_dim, "cuda")
                    for _ in range(block)]
            batch = (Transition(*(torch.stack(c) for c in zip(*rows, strict=True)))
                     if block > 1 else rows[0])
        member = Member(agent, batch, stream, block > 1)
        member.updates(SAC.GRAPH_WARMUP + 2)  # the eager warm-ups, the capture, a replay
        step = agent._block_step if block > 1 else agent._step
        assert step.captured == 1, "the SAC update was not captured"
        members.append(member)
    torch.cuda.synchronize()
    return members


def launch_us(member: Member, count: int = 200) -> float:
    """Host microseconds of one update with the GPU idle before it (median)."""
    times = []
    for _ in range(count):
        torch.cuda.synchronize()
        start = time.perf_counter()
        member.updates(1)
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return 1e6 * statistics.median(times)


def round_ms_one_thread(members: list[Member], rounds: int) -> tuple[float, float]:
    """Milliseconds per round: until the host has launched it, and until the GPU has run it.
    A host that runs ahead of the GPU launches much faster than the GPU runs; one whose
    launches wait for earlier work takes about as long for both."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        for member in members:
            member.updates(1)
    launched = time.perf_counter()
    torch.cuda.synchronize()
    done = time.perf_counter()
    return 1e3 * (launched - start) / rounds, 1e3 * (done - start) / rounds


def round_ms_threads(members: list[Member], rounds: int) -> float:
    barrier = threading.Barrier(len(members) + 1)

    def work(member: Member) -> None:
        barrier.wait()
        member.updates(rounds)

    threads = [threading.Thread(target=work, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    torch.cuda.synchronize()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--block", type=int, default=1,
                        help="updates per member per round, replayed as one graph if > 1")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for name in ("members", "block", "rounds", "repeats"):
        values = getattr(args, name)
        if min(values if isinstance(values, list) else [values]) < 1:
            parser.error(f"--{name} = {values} is not allowed: it must be >= 1")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device: it times CUDA graphs on CUDA streams")
    torch.manual_seed(0)
    print(f"{args.env}, paper preset; torch {torch.__version__} on "
          f"{torch.cuda.get_device_name()}; CUDA_DEVICE_MAX_CONNECTIONS="
          f"{os.environ.get('CUDA_DEVICE_MAX_CONNECTIONS', 'unset (8)')}; "
          f"{args.rounds} rounds of {args.block} update(s) per member, median of "
          f"{args.repeats}")
    base_one = base_threads = None
    base_count = 1
    for count in args.members:
        members = make_members(count, args.env, args.block)
        launch = launch_us(members[0])  # per round of one member
        timings = [round_ms_one_thread(members, args.rounds) for _ in range(args.repeats)]
        host = statistics.median(t[0] for t in timings)
        one = statistics.median(t[1] for t in timings)
        threads = statistics.median(round_ms_threads(members, args.rounds)
                                    for _ in range(args.repeats))
        if base_one is None:  # the first P is the baseline (1 unless told otherwise)
            base_one, base_threads, base_count = one, threads, count
        scale = count / base_count
        print(f"  P={count:3d}: launch {launch:6.1f} us; round, one thread {one:7.3f} ms "
              f"(launched in {host:7.3f} ms; speed-up {scale * base_one / one:5.2f}); "
              f"threads {threads:7.3f} ms "
              f"(speed-up {scale * base_threads / threads:5.2f})", flush=True)
        del members
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
