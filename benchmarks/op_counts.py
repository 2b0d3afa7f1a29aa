"""How many kernels the loop's small steps run: a GPU's launches, counted on any machine.

    python benchmarks/op_counts.py [--env hopper]

On a GPU each PyTorch operation outside a CUDA graph is a launch that costs the host time,
and each one inside a graph is a kernel the GPU runs one after another; for seeds trained
together on one GPU the host's work per real step bounds the throughput (benchmarks/
RESULTS.md). This counts, with a `TorchDispatchMode`, the operations that run a kernel
(views left out) of: one real step's action (outside any graph), one write of a transition
to the replay buffer (outside any graph), one SAC update (a graph's share: the forward and
backward passes and the three Adam steps), one TOM dual step, one step of TOM's discriminator
and one minibatch step of the model's fit (the mixture-density network; likewise), at the paper
preset's sizes on the CPU. The counts are the same on every machine and run: a change's
effect on them needs no GPU to measure.

It also counts each step's floating-point operations in matrix products (with torch's
`flop_counter` rules) and times this machine's 256×256×256 float32 product on ``--threads``
threads: the products' floor, the time each step would take if its products ran at that rate
and nothing else took time, to hold against the steps' measured times (`tom bench`).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import torch
from throughput import median_time  # benchmarks/throughput.py, next to this script
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from tom.buffer import ReplayBuffer, Transition
from tom.config import resolve
from tom.dynamics import make_model
from tom.envs import get_task
from tom.objectives import make_objective
from tom.objectives.tom import (
    Discriminator,
    PolicyGaussians,
    discriminator_loss,
    draw_dual_inputs,
    sas,
)
from tom.optim import adam
from tom.sac import SAC

# Operations that make a view of their input and run no kernel.
VIEWS = frozenset({"view", "select", "reshape", "_reshape_alias", "alias", "as_strided", "t",
                   "expand", "unsqueeze", "squeeze", "slice", "detach", "split", "chunk",
                   "split_with_sizes", "transpose", "_unsafe_view", "lift_fresh", "unbind"})


class _Counting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            self.ops[name] += 1
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in flop_registry:  # the products (torch.utils.flop_counter)
            self.flops += flop_registry[func.overloadpacket](*args, **(kwargs or {}),
                                                             out_val=out)
        return out


def count(step: Callable[[], object]) -> tuple[Counter[str], int]:
    """The kernel-running operations of one call of ``step``, by name, and the floating-point
    operations of its matrix products. (torch's `FlopCounterMode` would count the same, but
    its module hooks fail inside the discriminator's `autograd.grad`.)"""
    mode = _Counting()
    with mode:
        step()
    return mode.ops, mode.flops


def gemm_rate(threads: int, size: int = 256) -> float:
    """This machine's float32 rate (FLOP/s) on a ``size``³ product, median of 7 × 1 000."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_time(lambda: a @ b, repeats=7, inner=1000, warmup=200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--threads", type=int, default=2, help="for the product's rate")
    args = parser.parse_args()
    cfg = resolve(args.env, "tom", preset="paper")
    task = get_task(args.env)
    obs_dim, act_dim, rows = task.obs_dim, task.act_dim, cfg.sac.batch_size
    torch.manual_seed(0)
    agent = SAC(obs_dim, act_dim, cfg.sac)
    buffer = ReplayBuffer(1000, obs_dim, act_dim)
    objective = make_objective(cfg, obs_dim, act_dim)
    obs = torch.randn(obs_dim)
    action = agent.act(obs)
    batch = Transition(torch.randn(rows, obs_dim), torch.rand(rows, act_dim) * 2 - 1,
                       torch.randn(rows), torch.randn(rows, obs_dim), torch.zeros(rows))
    replay = ReplayBuffer(rows, obs_dim, act_dim)  # the dual's: R, with one initial state
    replay.add_batch(batch)
    replay.add_initial_state(obs)
    policy, rho = PolicyGaussians.of(agent, replay), torch.randn(rows)

    def dual_step() -> None:  # with its inputs' draws (the policy's Gaussians are a refit's)
        loss = objective.dual_minibatch_loss(draw_dual_inputs(replay, rho, policy, cfg.tom))
        objective.q_opt.zero_grad(set_to_none=True)
        loss.backward()
        objective.q_opt.step()

    disc = Discriminator(obs_dim, act_dim, cfg.tom.disc_hidden, batch)
    disc_opt = adam(disc.parameters(), lr=cfg.tom.disc_lr)
    disc_rows = sas(batch)[:cfg.tom.disc_batch]

    def disc_step() -> None:
        loss = discriminator_loss(disc, disc_rows, disc_rows.flip(0), cfg.tom.replay_label,
                                  cfg.tom.grad_penalty)
        disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        disc_opt.step()

    model = make_model(cfg.model, obs_dim, act_dim, task.termination)
    model_opt = adam(model.parameters(), lr=cfg.model.lr)
    model_rows = cfg.model.batch_size
    x, y = torch.randn(1, model_rows, model.in_dim), torch.randn(1, model_rows, model.out_dim)

    def model_step() -> None:  # `DynamicsModel.fit`'s minibatch step, unweighted
        loss = model._objective(x, y, None)
        model_opt.zero_grad(set_to_none=True)
        loss.backward()
        model_opt.step()

    steps = {
        "a real step's action": lambda: agent.act(obs),
        "a transition written to the buffer": lambda: buffer.add(
            obs, action, 0.5, obs, 0.0, policy_updates=1),
        "a SAC update": lambda: agent.update(batch),
        "a TOM dual step": dual_step,
        "a TOM discriminator step": disc_step,
        f"a model-fit minibatch step ({cfg.model.kind})": model_step,
    }
    rate = gemm_rate(args.threads)
    print(f"{args.env}, paper preset: kernels per step (a GPU's launches outside graphs, "
          "or kernels inside one), and the floating-point operations of its matrix products")
    print(f"(the products' floor: at this machine's 256³ float32 rate, {rate / 1e9:.0f} GFLOP/s "
          f"on {args.threads} thread(s))")
    print("| step | kernels | most frequent | product GFLOP | products' floor (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for name, step in steps.items():
        step()  # first calls create the optimisers' moments
        ops, flops = count(step)
        common = ", ".join(f"{op} {n}" for op, n in ops.most_common(4))
        print(f"| {name} | {sum(ops.values())} | {common} | {flops / 1e9:.3f} "
              f"| {flops / rate * 1e3:.3f} |")


if __name__ == "__main__":
    main()
