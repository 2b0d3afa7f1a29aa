"""What training P seeds in one process could gain: the two inner steps that take most of a
run's time (a SAC update; a model minibatch step), for P members at once against P times one.

    python benchmarks/population.py --threads 2 --members 1 2 5 10 [--repeats 7] [--device cuda]
        [--graph]

"At once" stacks the P members' parameters ([P, ...] tensors, `torch.func.stack_module_state`)
and evaluates each loss and its gradient for all members in one pass (`torch.func.vmap` of
`torch.func.grad` over `functional_call`), each member on its own minibatch, followed by one
fused Adam step over the stacked parameters. It estimates what a population of seeds could
gain in these steps; it is not a population trainer: no environments, buffers or early
stopping, and the SAC step here is the critic and actor losses with their Adam steps (no
temperature, no Polyak average). Prints milliseconds per step per member and the speed-up per
seed over running the members one after another. A third column stacks only the twin
critics, by hand without vmap (`StackedLinear`), the cheapest form stacking can take.

With ``--graph`` (``--device cuda`` only) each stacked step is replayed from a CUDA graph
(`tom.cuda_graph.GraphedStep`), as the training loop replays its steps: what a stacked
population's steps would cost against the loop's own graphed ones (benchmarks/RESULTS.md:
a graphed SAC update of one run is about 0.5 ms on an H100, and members in turns on their own
streams overlap little).
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from throughput import median_time  # benchmarks/throughput.py, next to this script
from torch.func import functional_call, grad, stack_module_state, vmap

from tom.config import resolve
from tom.cuda_graph import GraphedStep
from tom.dynamics import make_model
from tom.envs import get_task
from tom.optim import adam
from tom.sac import SAC, StackedLinear, tanh_normal_log_prob


def median_ms(fn: Callable[[], object], repeats: int, inner: int) -> float:
    """`throughput.median_time` (this script's neighbour) in milliseconds."""
    return 1e3 * median_time(fn, repeats, inner)


def sac_losses(agent: SAC) -> tuple[Callable, Callable]:
    """The critic loss and the actor loss of one member, as functions of its parameters, its
    minibatch and its action noise (so that each member draws its own)."""
    gamma, alpha = agent.cfg.gamma, 0.2

    def actor(actor_p, obs, eps):
        mean, log_std = functional_call(agent.actor, actor_p, (obs,))
        u = mean + log_std.exp() * eps
        return u.tanh(), tanh_normal_log_prob(u, mean, log_std)

    def critic_loss(critic_p, target_p, actor_p, obs, act, reward, next_obs, done, eps):
        next_act, next_logp = actor(actor_p, next_obs, eps)
        next_q = functional_call(agent.critic_target, target_p, (next_obs, next_act)).min(0)
        target = reward + gamma * (1 - done) * (next_q.values - alpha * next_logp)
        q = functional_call(agent.critic, critic_p, (obs, act))
        return (q - target.detach()).pow(2).mean(1).sum()

    def actor_loss(actor_p, critic_p, obs, eps):
        new_act, logp = actor(actor_p, obs, eps)
        q = functional_call(agent.critic, critic_p, (obs, new_act)).min(0).values
        return (alpha * logp - q).mean()

    return critic_loss, actor_loss


def graphed(step: Callable[[], None], enabled: bool) -> Callable[[], object]:
    """``step``, replayed from a CUDA graph after two eager calls where ``enabled``."""
    if not enabled:
        return step
    done = torch.zeros(())

    def with_output() -> torch.Tensor:
        step()
        return done

    replay = GraphedStep(with_output, warmup=2)
    for _ in range(3):  # the eager calls and the capture
        replay()
    if replay.captured != 1:
        raise RuntimeError(f"{step.__qualname__} was not captured as a CUDA graph")
    return replay


def sac_step(agents: list[SAC], batch: int, obs_dim: int, act_dim: int,
             capturable: bool = False) -> Callable[[], None]:
    """One SAC step (critic and actor losses, gradients, Adam) for all members at once."""
    p, dev = len(agents), agents[0].device
    critic_p, _ = stack_module_state([a.critic for a in agents])
    target_p, _ = stack_module_state([a.critic_target for a in agents])
    actor_p, _ = stack_module_state([a.actor for a in agents])
    critic_loss, actor_loss = sac_losses(copy.deepcopy(agents[0]))
    q_grad, pi_grad = vmap(grad(critic_loss)), vmap(grad(actor_loss))
    opt = adam([*critic_p.values(), *actor_p.values()], lr=3e-4, capturable=capturable)

    def step() -> None:
        obs = torch.randn(p, batch, obs_dim, device=dev)
        act = torch.rand(p, batch, act_dim, device=dev) * 2 - 1
        reward, done = torch.randn(p, batch, device=dev), torch.zeros(p, batch, device=dev)
        next_obs = obs + 0.1 * torch.randn(p, batch, obs_dim, device=dev)
        eps, eps2 = (torch.randn(p, batch, act_dim, device=dev) for _ in range(2))
        g_c = q_grad(critic_p, target_p, actor_p, obs, act, reward, next_obs, done, eps)
        # (`SAC.update` steps the critics before the actor's loss; one Adam step for both
        # here costs the same.)
        frozen = {k: v.detach() for k, v in critic_p.items()}
        for k, v in critic_p.items():
            v.grad = g_c[k]
        g_a = pi_grad(actor_p, frozen, obs, eps2)
        for k, v in actor_p.items():
            v.grad = g_a[k]
        opt.step()

    return step


def stacked_critic_step(p: int, batch: int, in_dim: int, hidden: int, device: str = "cpu",
                        capturable: bool = False) -> Callable[[], None]:
    """Without vmap: the twin critics of P members as one stack of 2P networks ([2P, ·, ·]
    weights, one `baddbmm` per layer, as `TwinQ` stacks its two), a squared-error step with
    fused Adam. The cheapest form stacking can take."""
    net = torch.nn.Sequential(StackedLinear(2 * p, in_dim, hidden), torch.nn.ReLU(),
                              StackedLinear(2 * p, hidden, hidden), torch.nn.ReLU(),
                              StackedLinear(2 * p, hidden, 1)).to(device)
    opt = adam(net.parameters(), lr=3e-4, capturable=capturable)
    x, y = torch.randn(2 * p, batch, in_dim, device=device), torch.randn(2 * p, batch, 1,
                                                                          device=device)

    def step() -> None:
        loss = (net(x) - y).pow(2).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class _MemberNLL(torch.nn.Module):
    """A model's mean minibatch NLL as a module call, for `functional_call`."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model._member_nll(x[None], y[None]).mean()


def model_step(models: list, batch: int, in_dim: int, out_dim: int,
               capturable: bool = False) -> Callable[[], None]:
    """One MDN minibatch step (NLL, gradient, Adam) for all members at once."""
    p, dev = len(models), models[0].in_mean.device
    wrapped = [_MemberNLL(m) for m in models]
    params, buffers = stack_module_state(wrapped)
    template = copy.deepcopy(wrapped[0])
    g = vmap(grad(lambda prm, buf, x, y: functional_call(template, (prm, buf), (x, y))))
    opt = adam(list(params.values()), lr=1e-3, capturable=capturable)

    def step() -> None:
        x = torch.randn(p, batch, in_dim, device=dev)
        y = torch.randn(p, batch, out_dim, device=dev)
        grads = g(params, buffers, x, y)
        for k, v in params.items():
            v.grad = grads[k]
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="hopper")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--graph", action="store_true",
                        help="replay each stacked step from a CUDA graph (--device cuda)")
    args = parser.parse_args()
    dev, g = args.device, args.graph
    if g and dev != "cuda":
        parser.error(f"--graph needs --device cuda, not --device {dev}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = get_task(args.env)
    cfg = resolve(args.env, "mle", preset="paper")
    o, a = task.obs_dim, task.act_dim
    where = torch.cuda.get_device_name() if dev == "cuda" else f"{args.threads} CPU thread(s)"
    print(f"{args.env} at the paper preset, {where}, torch {torch.__version__}"
          f"{', CUDA graphs' if g else ''}; "
          f"ms per step per member (median of {args.repeats}); speed-up per seed against "
          "one member's own step")
    single_sac = single_model = single_critic = None
    for p in args.members:
        agents = [SAC(o, a, cfg.sac, dev) for _ in range(p)]
        t_sac = median_ms(graphed(sac_step(agents, cfg.sac.batch_size, o, a, g), g),
                          args.repeats, 10) / p
        models = [make_model(cfg.model, o, a, task.termination, dev) for _ in range(p)]
        t_model = median_ms(graphed(model_step(models, cfg.model.batch_size, o + a, 1 + o, g),
                                    g), args.repeats, 10) / p
        t_critic = median_ms(graphed(stacked_critic_step(p, cfg.sac.batch_size, o + a,
                                                         cfg.sac.hidden_size, dev, g), g),
                             args.repeats, 50) / p
        single_sac, single_model = single_sac or t_sac, single_model or t_model
        single_critic = single_critic or t_critic
        print(f"  P = {p:2d}: SAC step {t_sac:6.2f} ms ({single_sac / t_sac:4.2f}×), "
              f"MDN step {t_model:6.2f} ms ({single_model / t_model:4.2f}×), "
              f"stacked twin critics {t_critic:5.2f} ms ({single_critic / t_critic:4.2f}×)",
              flush=True)


if __name__ == "__main__":
    main()
