"""The SAC updates of several runs (a `tom.population`'s members) as one: a population axis.

Every network of P agents is stacked into one set of tensors with a leading member axis (the
actors' layers [P, in, out], the twin critics' [2P, in, out], the temperatures [P]), so that
one batched matmul per layer does every member's update. That is the issue's design for
many seeds on a GPU (benchmarks/RESULTS.md): there one member's update leaves most of the
chip idle, and ten members' kernels launched on their own streams ran at most 3.7 at once.
On a CPU the matmuls are compute-bound and stacking saves nothing (RESULTS.md, second
session); there it is only for the tests.

The members stay the `SAC` agents they are: their parameters, Adam moments and step counts
are copied into the stack before a block of updates and back after it, so that everything
else a run does with its agent (acting, rollouts, checkpoints, a run's own updates where its
minibatches differ in shape) sees the agent it would see in a single run. The copies cost two
reads and writes of each member's SAC state per block (about 3 MB per member at the paper's
sizes), against five updates of a few hundred kernels each.

What a member computes: the same updates as `SAC.update_block` (critics, actor, temperature,
Polyak targets; Adam with each member's own step count), from the same minibatches and the
same Gaussian noise, drawn by the member from its own random state in the order its single
run draws it (`draw_noise`). Not bit for bit: a batched matmul of P members does not always
round as P single ones do (the actor's `nn.Linear` against a slice of a batched matmul
differed by up to 5e-5 in a gradient on this CPU), and Adam is written out here, not fused.
tests/test_stacked_sac.py bounds the difference after one block; over a run the members
then drift from their single runs as any rounding change makes RL runs drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tom.buffer import Transition
from tom.cuda_graph import GraphedStep
from tom.sac import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    SAC,
    StackedLinear,
    soft_q_target,
    tanh_normal_log_prob,
)

Split = Callable[[Tensor], list[Tensor]]  # a stacked tensor -> views shaped as members' tensors


def draw_noise(batches: Transition) -> Tensor:
    """The standard normal noise a block of updates on ``batches`` ([update, row, ...]) draws
    from the global generator, as [update, 2, row, act_dim]: per update, the next action's
    (the critics' target) and then the actor's, each drawn as `SAC.sample` draws it."""
    updates, rows, act_dim = batches.act.shape
    draws = [torch.randn(rows, act_dim, device=batches.act.device)
             for _ in range(2 * updates)]
    return torch.stack(draws).view(updates, 2, rows, act_dim)


class _Slot:
    """A stacked tensor and the members' tensors it holds: ``split(stacked)[i]`` is a view
    shaped as member i's."""

    def __init__(self, stacked: Tensor, split: Split, members: list[Tensor]) -> None:
        self.stacked, self.split, self.members = stacked, split, members
        self.views = split(stacked)

    @torch.no_grad()
    def load(self) -> None:
        torch._foreach_copy_(self.views, self.members)

    @torch.no_grad()
    def store(self) -> None:
        torch._foreach_copy_(self.members, self.views)


class _Adam:
    """torch.optim.Adam's algorithm (no weight decay) over stacked tensors, with one step count
    per member, as each member's optimiser keeps its own."""

    def __init__(self, params: list[Tensor], rows_per_member: list[int], members: int,
                 lr: float, betas: tuple[float, float], eps: float) -> None:
        self.params, self.rows = params, rows_per_member
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.step = torch.zeros(members, device=params[0].device)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps

    @torch.no_grad()
    def update(self, grads: Iterable[Tensor]) -> None:
        self.step += 1
        step_size = self.lr / (1 - self.beta1 ** self.step)  # [P]
        correction2_sqrt = (1 - self.beta2 ** self.step).sqrt()
        for p, g, m, v, rows in zip(self.params, grads, self.exp_avg, self.exp_avg_sq,
                                    self.rows, strict=True):
            shape = (-1,) + (1,) * (p.dim() - 1)  # member rows first
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / correction2_sqrt.repeat_interleave(rows).view(shape)
                     ).add_(self.eps)
            p.addcdiv_(m * step_size.repeat_interleave(rows).view(shape), denom, value=-1)


class StackedSAC:
    """P `SAC` agents (one SAC config and device) whose blocks of updates run as one."""

    def __init__(self, agents: list[SAC], cuda_graph: bool = False) -> None:
        if not agents:
            raise ValueError("StackedSAC needs at least one agent, got none")
        first = agents[0]
        for agent in agents[1:]:
            if agent.cfg != first.cfg or agent.device != first.device:
                raise ValueError(f"StackedSAC needs agents of one SAC config and device; got "
                                 f"{agent.cfg} on {agent.device} and {first.cfg} on "
                                 f"{first.device}")
        self.agents, self.cfg, self.members = agents, first.cfg, len(agents)
        self.target_entropy = first.target_entropy
        n = len(agents)
        self.actor = [_stack(layer, n, _linear_weight, _linear_bias)
                      for layer in zip(*(_layers(a.actor, nn.Linear) for a in agents), strict=True)]
        self.critic = [_stack(layer, n, _twin, _twin)
                       for layer in zip(*(_layers(a.critic, StackedLinear) for a in agents),
                                          strict=True)]
        self.target = [_stack(layer, n, _twin, _twin)
                       for layer in zip(*(_layers(a.critic_target, StackedLinear)
                                          for a in agents), strict=True)]
        self.log_alpha = _Slot(torch.empty(n, device=first.device),
                               lambda t: list(t.unbind(0)), [a.log_alpha for a in agents])
        self._slots = [s for pair in self.actor + self.critic + self.target for s in pair]
        self._slots.append(self.log_alpha)
        self._steps: list[tuple[_Slot, list[list[Tensor]]]] = []
        self._adams: dict[str, _Adam] = {}
        for name, slots, optimiser in (
                ("actor", [s for pair in self.actor for s in pair], lambda a: a.actor_opt),
                ("critic", [s for pair in self.critic for s in pair], lambda a: a.critic_opt),
                ("alpha", [self.log_alpha], lambda a: a.alpha_opt)):
            self._adams[name] = self._adam(name, slots, [optimiser(a) for a in agents])
        self._params = {"actor": [s.stacked for pair in self.actor for s in pair],
                        "critic": [s.stacked for pair in self.critic for s in pair]}
        for param in [*self._params["actor"], *self._params["critic"], self.log_alpha.stacked]:
            param.requires_grad_(True)
        self._block = GraphedStep(self._update_block, warmup=1, enabled=cuda_graph)

    def _adam(self, name: str, slots: list[_Slot],
              optimisers: list[torch.optim.Optimizer]) -> _Adam:
        """The stacked Adam of the ``slots``' parameters, its moments and step counts slotted
        to the members' optimisers' state (created as their first step would create it)."""
        group = optimisers[0].param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError(f"StackedSAC implements plain Adam; the {name} optimiser has "
                             f"weight_decay={group['weight_decay']}, amsgrad="
                             f"{group['amsgrad']}, maximize={group['maximize']}")
        adam = _Adam([s.stacked for s in slots], [len(s.stacked) // self.members for s in slots],
                     self.members, group["lr"], group["betas"], group["eps"])
        states = [[_adam_state(opt, p) for opt, p in zip(optimisers, slot.members, strict=True)]
                  for slot in slots]
        for slot, moments, avg, avg_sq in zip(slots, states, adam.exp_avg, adam.exp_avg_sq,
                                              strict=True):
            for stacked, key in ((avg, "exp_avg"), (avg_sq, "exp_avg_sq")):
                self._slots.append(_Slot(stacked, slot.split, [state[key] for state in moments]))
        # A member's optimiser counts steps per parameter, all equal: loaded from the first,
        # stored to each.
        step = _Slot(adam.step, lambda t: list(t.unbind(0)),
                     [state["step"] for state in states[0]])
        self._steps.append((step, [[state["step"] for state in per_slot]
                                   for per_slot in states]))
        return adam

    # -- the block ---------------------------------------------------------------------------

    def update_block(self, batches: list[Transition], noise: list[Tensor]) -> Tensor:
        """Member i's block of updates on ``batches[i]`` ([update, row, ...]) with ``noise[i]``
        (`draw_noise`), for every member at once, as `SAC.update_block` does them; the
        members' agents hold the result. Returns each member's last update's statistics,
        [P, 4] in `UpdateStats.NAMES` order."""
        shapes = {tuple(tuple(t.shape) for t in b) for b in batches}
        if len(batches) != self.members or len(noise) != self.members or len(shapes) != 1:
            raise ValueError(f"StackedSAC.update_block needs one block of one shape per member "
                             f"({self.members}); got {len(batches)} blocks and "
                             f"{len(noise)} noise tensors, of shapes {sorted(shapes)}")
        stacked = [torch.stack(parts) for parts in zip(*batches, strict=True)]
        for slot in self._slots:
            slot.load()
        for step, _ in self._steps:
            step.load()
        stats = self._block(*stacked, torch.stack(noise))
        for slot in self._slots:
            slot.store()
        for step, per_param in self._steps:
            for members in per_param:
                torch._foreach_copy_(members, step.views)
        for agent in self.agents:
            agent.num_updates += len(batches[0].obs)
        return stats

    def _update_block(self, obs: Tensor, act: Tensor, reward: Tensor, next_obs: Tensor,
                      done: Tensor, noise: Tensor) -> Tensor:
        stats = torch.empty(0)
        for u in range(obs.shape[1]):
            stats = self._update(obs[:, u], act[:, u], reward[:, u], next_obs[:, u],
                                 done[:, u], noise[:, u])
        return stats

    def _update(self, obs: Tensor, act: Tensor, reward: Tensor, next_obs: Tensor,
                done: Tensor, noise: Tensor) -> Tensor:
        """One update of every member, `SAC._update`'s steps in its order: [P, row, ...]
        minibatches, noise [P, 2, row, act_dim]."""
        log_alpha = self.log_alpha.stacked
        alpha = log_alpha.detach().exp()[:, None]  # before this update's temperature step
        with torch.no_grad():
            next_act, next_logp = self._sample(next_obs, noise[:, 0])
            next_q = self._q(self.target, next_obs, next_act).min(dim=1).values
            target = soft_q_target(reward, done, next_q, next_logp, alpha, self.cfg.gamma)
        q_loss = (self._q(self.critic, obs, act) - target[:, None]).pow(2).mean(dim=2).sum(1)
        self._adams["critic"].update(torch.autograd.grad(q_loss.sum(), self._params["critic"]))

        new_act, logp = self._sample(obs, noise[:, 1])
        q_new = self._q(self.critic, obs, new_act, frozen=True).min(dim=1).values
        actor_loss = (alpha * logp - q_new).mean(dim=1)
        self._adams["actor"].update(torch.autograd.grad(actor_loss.sum(), self._params["actor"]))

        logp = logp.detach()
        if self.cfg.auto_entropy:
            alpha_loss = -(log_alpha[:, None] * (logp + self.target_entropy)).mean(dim=1)
            self._adams["alpha"].update(torch.autograd.grad(alpha_loss.sum(), [log_alpha]))

        with torch.no_grad():
            for target_pair, pair in zip(self.target, self.critic, strict=True):
                for target_slot, slot in zip(target_pair, pair, strict=True):
                    target_slot.stacked.lerp_(slot.stacked, self.cfg.tau)
        return torch.stack([q_loss.detach(), actor_loss.detach(), log_alpha.detach().exp(),
                            -logp.mean(dim=1)], dim=1)

    def _sample(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """`SAC.sample` of every member with the given noise."""
        x = obs
        for k, (weight, bias) in enumerate(self.actor):
            x = torch.baddbmm(bias.stacked, x, weight.stacked)
            if k < len(self.actor) - 1:
                x = F.relu(x)
        mean, log_std = x.chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        pre_tanh = mean + log_std.exp() * noise
        return pre_tanh.tanh(), tanh_normal_log_prob(pre_tanh, mean, log_std)

    @staticmethod
    def _q(layers: list[tuple[_Slot, _Slot]], obs: Tensor, act: Tensor,
           frozen: bool = False) -> Tensor:
        """Both critics of every member, [P, row, ·] -> [P, 2, row]; ``frozen``: no gradient
        for their weights (the actor's step), as `SAC` freezes its critics there."""
        x = torch.cat([obs, act], dim=-1)
        members, rows = x.shape[:2]
        x = x[:, None].expand(-1, 2, -1, -1).reshape(2 * members, rows, -1)
        for k, (weight, bias) in enumerate(layers):
            w, b = weight.stacked, bias.stacked
            if frozen:
                w, b = w.detach(), b.detach()
            x = torch.baddbmm(b, x, w)
            if k < len(layers) - 1:
                x = F.relu(x)
        return x.view(members, 2, rows)


def _layers(module: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


def _stack(layers: tuple[nn.Module, ...], members: int, weight: Callable[..., _Slot],
           bias: Callable[..., _Slot]) -> tuple[_Slot, _Slot]:
    """One layer of every member as a (weight, bias) pair of slots."""
    return (weight([layer.weight for layer in layers], members),
            bias([layer.bias for layer in layers], members))


def _linear_weight(params: list[Tensor], members: int) -> _Slot:
    """``nn.Linear`` weights [out, in] as [P, in, out] (kept transposed, as a batched matmul
    takes them)."""
    out_dim, in_dim = params[0].shape
    return _Slot(torch.empty(members, in_dim, out_dim, device=params[0].device),
                 lambda t: [v.T for v in t.unbind(0)], params)


def _linear_bias(params: list[Tensor], members: int) -> _Slot:
    """``nn.Linear`` biases [out] as [P, 1, out]."""
    return _Slot(torch.empty(members, 1, params[0].shape[0], device=params[0].device),
                 lambda t: [v[0] for v in t.unbind(0)], params)


def _twin(params: list[Tensor], members: int) -> _Slot:
    """Twin-critic weights [2, in, out] (or biases [2, 1, out]) as [2P, in, out]: member i's
    critics are rows 2i and 2i + 1."""
    shape = params[0].shape
    return _Slot(torch.empty(members * shape[0], *shape[1:], device=params[0].device),
                 lambda t: list(t.view(members, *shape).unbind(0)), params)


def _adam_state(optimiser: torch.optim.Optimizer, param: Tensor) -> dict[str, Tensor]:
    """``param``'s state in ``optimiser``; where it has none yet, the state its first step
    would create (zero moments, step 0), so that the stack can write its moments back."""
    state = optimiser.state[param]
    if not state:
        group = optimiser.param_groups[0]
        on_device = group["fused"] or group["capturable"]
        state.update(step=torch.zeros((), dtype=torch.float32,
                                      device=param.device if on_device else "cpu"),
                     exp_avg=torch.zeros_like(param, memory_format=torch.preserve_format),
                     exp_avg_sq=torch.zeros_like(param, memory_format=torch.preserve_format))
    return state
