"""The SAC updates of several runs (a `tom.population`'s members) as one: a population axis;
and their actions of a real step (`StackedPolicy`).

Every network of P agents is stacked into one set of tensors with a leading member axis (the
actors' layers [P, in, out], the twin critics' [2P, in, out], the temperatures [P]), so that
one batched matmul per layer does every member's update. That is the issue's design for
many seeds on a GPU (benchmarks/RESULTS.md): there one member's update leaves most of the
chip idle, and ten members' kernels launched on their own streams ran at most 3.7 at once.
On a CPU the matmuls are compute-bound and stacking saves nothing (RESULTS.md, second
session); there it is only for the tests.

Each network of all members is one flat tensor (`tom.stacking`), so that a gradient, an Adam
step and the Polyak average are each a few operations for all members and layers. The
members stay the `SAC` agents they are: their parameters, Adam moments and step counts are
copied into the stack before a block of updates and back after it, so that everything else a
run does with its agent (acting, rollouts, its objective, checkpoints, its own updates where
its minibatches differ in shape) sees the agent it would see in a single run. The copies
cost a read and a write of each member's SAC state per block (about 3 MB per member at the
paper's sizes), against a block's 20 updates.

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

import torch
from torch import Tensor

from tom.buffer import Transition
from tom.cuda_graph import GraphedStep
from tom.sac import SAC, soft_q_target
from tom.stacking import (
    Copies,
    FlatStack,
    StackedAdam,
    actor_action,
    actor_sample,
    member_parameters,
    mlp,
)


def draw_noise(batches: Transition) -> Tensor:
    """The standard normal noise a block of updates on ``batches`` ([update, row, ...]) draws
    from the global generator, as [update, 2, row, act_dim]: per update, the next action's
    (the critics' target) and then the actor's, each drawn as `SAC.sample` draws it."""
    updates, rows, act_dim = batches.act.shape
    draws = [torch.randn(rows, act_dim, device=batches.act.device)
             for _ in range(2 * updates)]
    return torch.stack(draws).view(updates, 2, rows, act_dim)


def draw_action_noise(agent: SAC) -> Tensor:
    """The standard normal noise ``agent.act`` draws for one observation, [act_dim]."""
    return torch.randn(agent.act_dim, device=agent.device)


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
        self._actor = FlatStack(member_parameters([a.actor for a in agents]), transposed=True)
        self._critic = FlatStack(member_parameters([a.critic for a in agents]), rows_per_member=2)
        self._target = FlatStack(member_parameters([a.critic_target for a in agents]),
                                 rows_per_member=2)
        self._alpha = FlatStack([[a.log_alpha for a in agents]])
        self._copies = Copies()
        self._adams: dict[str, StackedAdam] = {}
        for name, stack, optimisers in (
                ("actor", self._actor, [a.actor_opt for a in agents]),
                ("critic", self._critic, [a.critic_opt for a in agents]),
                ("alpha", self._alpha, [a.alpha_opt for a in agents])):
            self._copies.add(stack.member_views(stack.flat), stack.members)
            self._adams[name] = StackedAdam(stack, optimisers, self._copies, name)
            stack.flat.requires_grad_(True)
        self._copies.add(self._target.member_views(self._target.flat), self._target.members)
        self._block = GraphedStep(self._update_block, warmup=1, enabled=cuda_graph)

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
            next_q = self._q(self._target.flat, next_obs, next_act).min(dim=1).values
            target = soft_q_target(reward, done, next_q, next_logp, alpha, self.cfg.gamma)
        q = self._q(self._critic.flat, obs, act)
        q_loss = (q - target[:, None]).pow(2).mean(dim=2).sum(dim=1)  # [P]
        (grad,) = torch.autograd.grad(q_loss.sum(), [self._critic.flat])
        self._adams["critic"].update(grad)

        # The actor's step: the critics (just updated) without gradient for their weights.
        new_act, logp = self._sample(obs, noise[:, 1])
        q_new = self._q(self._critic.flat.detach(), obs, new_act).min(dim=1).values
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
        return actor_sample(self._actor.layers(self._actor.flat), obs, noise)

    def _q(self, flat: Tensor, obs: Tensor, act: Tensor) -> Tensor:
        """Both critics of every member from ``flat`` (the critics', the targets', or the
        critics' detached): [P, row, ·] -> [P, 2, row]."""
        x = torch.cat([obs, act], dim=-1)
        members, rows = x.shape[:2]
        x = x[:, None].expand(-1, 2, -1, -1).reshape(2 * members, rows, -1)
        return mlp(self._critic.layers(flat), x).view(members, 2, rows)


class StackedPolicy:
    """P agents' policies acting at once: one batched forward and one copy to the host for
    every member's action of a real step, instead of one of each per member (`SAC.act`, not
    deterministic, with the noise each member drew, `draw_action_noise`)."""

    def __init__(self, agents: list[SAC]) -> None:
        self.agents = agents
        self._actor = FlatStack(member_parameters([a.actor for a in agents]), transposed=True)
        self._copies = Copies()  # the members' current actors, read before each action
        self._copies.add(self._actor.member_views(self._actor.flat), self._actor.members,
                         store=False)

    @torch.no_grad()
    def act(self, obs: list[Tensor], noise: list[Tensor]) -> Tensor:
        """Member i's action for ``obs[i]`` ([obs_dim]) with ``noise[i]``: [P, act_dim], on
        the host."""
        self._copies.load()
        actions = actor_action(self._actor.layers(self._actor.flat),
                               torch.stack(obs)[:, None], torch.stack(noise)[:, None])
        return actions[:, 0].cpu()
