"""What stacking P runs' SAC updates into one (`tom.stacked_sac`, ``stack_sac: true``) saves:
a block of updates of P members as one stacked block, against the members' own blocks one
after another (as runs in turns do them), at the paper's sizes.

    python benchmarks/stacked_sac.py --threads 2 --members 1 2 5 10 [--repeats 5]
        [--device cuda]

Both sides are what the training loop runs: `SAC.update_block` of each member, and
`StackedSAC.update_block` with each member's noise drawn as its run draws it
(`draw_noise`) and the members' states copied into the stack and back. On a GPU both replay
CUDA graphs (``cuda_graph``), one per block, and are timed to the end of the GPU's work.
Prints milliseconds per member per update and the speed-up per member.
"""

from __future__ import annotations

import argparse

import torch
from throughput import median_time  # benchmarks/throughput.py, next to this script

from tom.buffer import Transition
from tom.config import resolve
from tom.envs import get_task
from tom.sac import SAC
from tom.stacked_sac import StackedSAC, draw_noise


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task, cfg = get_task(args.env), resolve(args.env, "mle", preset="paper")
    graph = args.device == "cuda"
    updates, rows = cfg.schedule.update_block, cfg.sac.batch_size
    where = (torch.cuda.get_device_name() + ", CUDA graphs" if graph
             else f"{args.threads} CPU thread(s)")
    print(f"{args.env} at the paper preset, {where}, torch {torch.__version__}: blocks of "
          f"{updates} SAC updates; ms per member per update (median of {args.repeats})")
    for p in args.members:
        agents = [SAC(task.obs_dim, task.act_dim, cfg.sac, args.device, cuda_graph=graph)
                  for _ in range(p)]
        data = blocks(p, updates, rows, task.obs_dim, task.act_dim, args.device)

        stack = StackedSAC(agents, cuda_graph=graph)

        def own(agents=agents, data=data) -> None:
            for agent, block in zip(agents, data, strict=True):
                agent.update_block(block)

        def stacked(stack=stack, data=data) -> None:
            stack.update_block(data, [draw_noise(block) for block in data])

        per_update = p * updates
        t_own = 1e3 * median_time(own, args.repeats, warmup=2) / per_update
        t_stacked = 1e3 * median_time(stacked, args.repeats, warmup=2) / per_update
        print(f"  P = {p:2d}: own blocks {t_own:6.3f} ms, stacked {t_stacked:6.3f} ms "
              f"({t_own / t_stacked:4.2f}×)", flush=True)


if __name__ == "__main__":
    main()
