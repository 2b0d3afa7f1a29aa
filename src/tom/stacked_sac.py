"""The SAC updates of several runs (a `tom.population`'s members) as one: a population axis.

Every network of P agents is stacked into one set of tensors with a leading member axis (the
actors' layers [P, in, out], the twin critics' [2P, in, out], the temperatures [P]), so that
one batched matmul per layer does every member's update. That is the issue's design for
many seeds on a GPU (benchmarks/RESULTS.md): there one member's update leaves most of the
chip idle, and ten members' kernels launched on their own streams ran at most 3.7 at once.
On a CPU the matmuls are compute-bound and stacking saves nothing (RESULTS.md, second
session); there it is only for the tests.

Each network of all members is one flat tensor (the layers are views of it), so that a
gradient, an Adam step and the Polyak average are each a few operations for all members and
layers, not a few per layer. The members stay the `SAC` agents they are: their parameters,
Adam moments and step counts are copied into the stack before a block of updates and back
after it, so that everything else a run does with its agent (acting, rollouts, checkpoints,
a run's own updates where its minibatches differ in shape) sees the agent it would see in a
single run. The copies cost a read and a write of each member's SAC state per block (about
3 MB per member at the paper's sizes), against a block's 20 updates.

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

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tom.buffer import Transition
from tom.cuda_graph import GraphedStep
from tom.sac import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    SAC,
    soft_q_target,
    tanh_normal_log_prob,
)


def draw_noise(batches: Transition) -> Tensor:
    """The standard normal noise a block of updates on ``batches`` ([update, row, ...]) draws
    from the global generator, as [update, 2, row, act_dim]: per update, the next action's
    (the critics' target) and then the actor's, each drawn as `SAC.sample` draws it."""
    updates, rows, act_dim = batches.act.shape
    draws = [torch.randn(rows, act_dim, device=batches.act.device)
             for _ in range(2 * updates)]
    return torch.stack(draws).view(updates, 2, rows, act_dim)


class _Flat:
    """The tensors of one network (or the temperature) of every member in one flat tensor
    [rows, n]: a row per member, or two per member for the twin critics (member i's are rows
    2i and 2i + 1). The layers are views of it, so that the gradient, each Adam operation and
    the Polyak average are one operation on one tensor rather than one per layer.

    ``members[k][i]`` is member i's k-th tensor (a parameter, in the order its module lists
    them); with ``transposed``, an ``nn.Linear`` weight [out, in] is kept as [in, out], as a
    batched matmul takes it. Adam's moments have the same layout (`member_views` of them)."""

    def __init__(self, members: list[list[Tensor]], rows_per_member: int,
                 transposed: bool = False) -> None:
        self.members, self.rows_per_member, self.transposed = members, rows_per_member, transposed
        self.rows = len(members[0]) * rows_per_member
        self.row_shapes = []  # what one row holds of each tensor
        for tensors in members:
            shape = (tensors[0].T if transposed and tensors[0].dim() == 2 else tensors[0]).shape
            self.row_shapes.append(tuple(shape[1:] if rows_per_member > 1 else shape))
        sizes = [math.prod(shape) for shape in self.row_shapes]
        self.bounds = list(zip(itertools.accumulate([0, *sizes[:-1]]),
                               itertools.accumulate(sizes), strict=True))
        self.flat = torch.zeros(self.rows, sum(sizes), device=members[0][0].device)

    def stacked(self, flat: Tensor) -> list[Tensor]:
        """Each tensor of every member, as a view of ``flat``: [rows, *row shape]."""
        return [flat[:, a:b].view(self.rows, *shape)
                for (a, b), shape in zip(self.bounds, self.row_shapes, strict=True)]

    def member_views(self, flat: Tensor) -> list[list[Tensor]]:
        """``[k][i]``: member i's k-th tensor as a view of ``flat``, shaped as the member's."""
        out = []
        for view, tensors in zip(self.stacked(flat), self.members, strict=True):
            rows = view.view(len(tensors), self.rows_per_member, *view.shape[1:])
            per_member = []
            for member_rows, tensor in zip(rows.unbind(0), tensors, strict=True):
                v = member_rows if self.rows_per_member > 1 else member_rows[0]
                v = v.T if self.transposed and tensor.dim() == 2 else v.reshape(tensor.shape)
                per_member.append(v)
            out.append(per_member)
        return out


class _Copies:
    """Pairs of (stack view, member tensor) copied into the stack before a block and back
    after it."""

    def __init__(self) -> None:
        self.stack: list[Tensor] = []
        self.members: list[Tensor] = []

    def add(self, views: list[list[Tensor]], members: list[list[Tensor]]) -> None:
        for vs, ms in zip(views, members, strict=True):
            self.stack += vs
            self.members += ms

    @torch.no_grad()
    def load(self) -> None:
        torch._foreach_copy_(self.stack, self.members)

    @torch.no_grad()
    def store(self) -> None:
        torch._foreach_copy_(self.members, self.stack)


class _Adam:
    """torch.optim.Adam's algorithm (no weight decay) over a `_Flat`, with one step count per
    member, as each member's optimiser keeps its own."""

    def __init__(self, flat: _Flat, members: int, group: dict) -> None:
        self.param, self.rows_per_member = flat.flat, flat.rows_per_member
        self.exp_avg = torch.zeros_like(self.param)
        self.exp_avg_sq = torch.zeros_like(self.param)
        self.step = torch.zeros(members, device=self.param.device)
        self.lr, (self.beta1, self.beta2), self.eps = group["lr"], group["betas"], group["eps"]

    @torch.no_grad()
    def update(self, grad: Tensor) -> None:
        self.step += 1
        step = self.step.repeat_interleave(self.rows_per_member)[:, None]  # [rows, 1]
        step_size = self.lr / (1 - self.beta1 ** step)
        correction2_sqrt = (1 - self.beta2 ** step).sqrt()
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        denom = (self.exp_avg_sq.sqrt() / correction2_sqrt).add_(self.eps)
        self.param.addcdiv_(self.exp_avg * step_size, denom, value=-1)


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

        actor = [list(ps) for ps in zip(*(a.actor.parameters() for a in agents), strict=True)]
        critic = [list(ps) for ps in zip(*(a.critic.parameters() for a in agents), strict=True)]
        target = [list(ps) for ps in zip(*(a.critic_target.parameters() for a in agents),
                                         strict=True)]
        alpha = [[a.log_alpha for a in agents]]
        self._actor = _Flat(actor, 1, transposed=True)
        self._critic = _Flat(critic, 2)
        self._target = _Flat(target, 2)
        self._alpha = _Flat(alpha, 1)
        self._copies = _Copies()
        self._step_copies: list[tuple[list[Tensor], list[Tensor]]] = []
        self._adams: dict[str, _Adam] = {}
        for name, flat, optimisers in (
                ("actor", self._actor, [a.actor_opt for a in agents]),
                ("critic", self._critic, [a.critic_opt for a in agents]),
                ("alpha", self._alpha, [a.alpha_opt for a in agents])):
            self._copies.add(flat.member_views(flat.flat), flat.members)
            self._adams[name] = self._adam(name, flat, optimisers)
            flat.flat.requires_grad_(True)
        self._copies.add(self._target.member_views(self._target.flat), self._target.members)
        self._block = GraphedStep(self._update_block, warmup=1, enabled=cuda_graph)

    def _adam(self, name: str, flat: _Flat, optimisers: list[torch.optim.Optimizer]) -> _Adam:
        """The stacked Adam of ``flat``, its moments and step counts copied from and to the
        members' optimisers' state (created as their first step would create it)."""
        group = optimisers[0].param_groups[0]
        if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
            raise ValueError(f"StackedSAC implements plain Adam; the {name} optimiser has "
                             f"weight_decay={group['weight_decay']}, amsgrad="
                             f"{group['amsgrad']}, maximize={group['maximize']}")
        adam = _Adam(flat, self.members, group)
        states = [[_adam_state(opt, p) for opt, p in zip(optimisers, tensors, strict=True)]
                  for tensors in flat.members]
        for moment, key in ((adam.exp_avg, "exp_avg"), (adam.exp_avg_sq, "exp_avg_sq")):
            self._copies.add(flat.member_views(moment),
                             [[state[key] for state in per_tensor] for per_tensor in states])
        # A member's optimiser counts steps per parameter, all equal: copied from its first
        # parameter's, and back to each.
        steps = list(adam.step.unbind(0))
        self._copies.stack += steps
        self._copies.members += [state["step"] for state in states[0]]
        for per_tensor in states[1:]:
            self._step_copies.append((steps, [state["step"] for state in per_tensor]))
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
        self._copies.load()
        stats = self._block(*stacked, torch.stack(noise))
        self._copies.store()
        with torch.no_grad():
            for steps, members in self._step_copies:
                torch._foreach_copy_(members, steps)
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
        log_alpha = self._alpha.flat[:, 0]
        alpha = log_alpha.detach().exp()[:, None]  # before this update's temperature step
        with torch.no_grad():
            next_act, next_logp = self._sample(next_obs, noise[:, 0])
            next_q = _q(self._target, self._target.flat, next_obs, next_act).min(dim=1).values
            target = soft_q_target(reward, done, next_q, next_logp, alpha, self.cfg.gamma)
        q = _q(self._critic, self._critic.flat, obs, act)
        q_loss = (q - target[:, None]).pow(2).mean(dim=2).sum(dim=1)  # [P]
        (grad,) = torch.autograd.grad(q_loss.sum(), [self._critic.flat])
        self._adams["critic"].update(grad)

        # The actor's step: the critics (just updated) without gradient for their weights.
        new_act, logp = self._sample(obs, noise[:, 1])
        q_new = _q(self._critic, self._critic.flat.detach(), obs, new_act).min(dim=1).values
        actor_loss = (alpha * logp - q_new).mean(dim=1)
        (grad,) = torch.autograd.grad(actor_loss.sum(), [self._actor.flat])
        self._adams["actor"].update(grad)

        logp = logp.detach()
        if self.cfg.auto_entropy:
            alpha_loss = -(log_alpha[:, None] * (logp + self.target_entropy)).mean(dim=1)
            (grad,) = torch.autograd.grad(alpha_loss.sum(), [self._alpha.flat])
            self._adams["alpha"].update(grad)

        with torch.no_grad():  # the targets: one Polyak average for every member's critics
            self._target.flat.lerp_(self._critic.flat, self.cfg.tau)
        return torch.stack([q_loss.detach(), actor_loss.detach(), log_alpha.detach().exp(),
                            -logp.mean(dim=1)], dim=1)

    def _sample(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """`SAC.sample` of every member with the given noise."""
        x = obs
        layers = _layers(self._actor, self._actor.flat)
        for k, (weight, bias) in enumerate(layers):
            x = torch.baddbmm(bias, x, weight)
            if k < len(layers) - 1:
                x = F.relu(x)
        mean, log_std = x.chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        pre_tanh = mean + log_std.exp() * noise
        return pre_tanh.tanh(), tanh_normal_log_prob(pre_tanh, mean, log_std)


def _q(critics: _Flat, flat: Tensor, obs: Tensor, act: Tensor) -> Tensor:
    """Both critics of every member, from their flat tensor ``flat`` (a critics' or targets'
    `_Flat`, or it detached): [P, row, ·] -> [P, 2, row]."""
    x = torch.cat([obs, act], dim=-1)
    members, rows = x.shape[:2]
    x = x[:, None].expand(-1, 2, -1, -1).reshape(2 * members, rows, -1)
    layers = _layers(critics, flat)
    for k, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias, x, weight)
        if k < len(layers) - 1:
            x = F.relu(x)
    return x.view(members, 2, rows)


def _layers(network: _Flat, flat: Tensor) -> list[tuple[Tensor, Tensor]]:
    """A network's (weight [rows, in, out], bias [rows, 1, out]) per layer, as views of
    ``flat``; made anew for each use, so that each autograd graph has views of its own."""
    views = network.stacked(flat)
    return [(weight, bias if bias.dim() == 3 else bias[:, None])
            for weight, bias in zip(views[::2], views[1::2], strict=True)]


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
