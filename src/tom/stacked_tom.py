"""TOM's refit work of several runs as one: a population axis for the dual Q
(`StackedDual`) and the discriminator (`StackedDiscriminator`).

A TOM refit takes ``tom.dual_steps`` (1 000 at the paper preset) Adam steps on the dual Q,
each a few hundred small kernels, and trains a fresh discriminator (400 steps, with the
gradient penalty's double backward): TOM's objective phase, which took a run on an H100
more time than its model fit (3.2 s against 1.9 s per 1 000 real steps; benchmarks/
RESULTS.md, sixth session). With ``stack_seeds``, the runs of a population
(`tom.population`) take these steps together: every member's dual Q is one flat tensor with
a member axis (`tom.stacking`), so one batched matmul per layer evaluates every member's
minibatch; likewise every member's discriminator.

What a member computes: the same steps as `TOMObjective._train_dual_alone` (and
`tom.objectives.tom._train_discriminator_alone`), from the same minibatches, initial states,
sampled actions and random numbers, drawn ahead by the member from its own random state in
the order its single run draws them (`draw_dual_work`, `draw_disc_work` there). The networks
and their Adam states are copied into the stack before and back after, so the member's
objective is then what its own training would leave, up to rounding: batched matmuls do not
always round as single ones do, and Adam is written out rather than fused
(tests/test_stacked_tom.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tom.config import TOMConfig
from tom.cuda_graph import GraphedStep
from tom.objectives.tom import (
    Discriminator,
    DiscWork,
    DualWork,
    TOMObjective,
    dual_residual,
    f_star,
)
from tom.stacking import Copies, FlatStack, StackedAdam, member_parameters, mlp


class StackedDual:
    """The dual training of P `TOMObjective`s (one TOM config and device) as one."""

    # The members' inputs are stacked this many steps at a time: all 1 000 at once would hold
    # another copy of every member's drawn minibatches (a few GB for ten Humanoid runs).
    STEPS_PER_STACK = 100

    def __init__(self, objectives: list[TOMObjective], cuda_graph: bool = False) -> None:
        first = objectives[0]
        for objective in objectives[1:]:
            if (objective.tom, objective.gamma, objective.device) != (
                    first.tom, first.gamma, first.device):
                raise ValueError("StackedDual needs objectives of one TOM config, discount and "
                                 f"device; got {objective.tom}, {objective.gamma}, "
                                 f"{objective.device} and {first.tom}, {first.gamma}, "
                                 f"{first.device}")
        self.objectives, self.members = objectives, len(objectives)
        self.tom, self.gamma = first.tom, first.gamma
        self._q = FlatStack(member_parameters([o.q for o in objectives]), transposed=True)
        self._copies = Copies()
        self._copies.add(self._q.member_views(self._q.flat), self._q.members)
        self._adam = StackedAdam(self._q, [o.q_opt for o in objectives], self._copies, "dual")
        self._q.flat.requires_grad_(True)
        self._step = GraphedStep(self._dual_step, enabled=cuda_graph)

    def train(self, work: list[DualWork]) -> Tensor:
        """Member i's dual steps with ``work[i]``, for every member at once; the members'
        objectives hold the result. Returns each member's last step's loss, [P]."""
        shapes = {tuple(tuple(t.shape) for t in w.tensors()) for w in work}
        if len(work) != self.members or len(shapes) != 1:
            raise ValueError(f"StackedDual.train needs one DualWork of one shape per member "
                             f"({self.members}); got {len(work)} of shapes {sorted(shapes)}")
        steps = len(work[0].rho)
        self._copies.load()
        loss = torch.empty(0)
        for lo in range(0, steps, self.STEPS_PER_STACK):  # [P, steps, ...] a slice at a time
            stacked = [torch.stack([t[lo:lo + self.STEPS_PER_STACK] for t in parts])
                       for parts in zip(*(w.tensors() for w in work), strict=True)]
            for u in range(stacked[0].shape[1]):
                loss = self._step(*(t[:, u] for t in stacked))
        self._copies.store()
        return loss

    def _dual_step(self, obs: Tensor, act: Tensor, reward: Tensor, next_obs: Tensor,
                   done: Tensor, rho: Tensor, s0: Tensor, a0: Tensor, next_act: Tensor
                   ) -> Tensor:
        """One dual step of every member, `TOMObjective.dual_minibatch_loss` and its Adam
        step: [P, row, ...] inputs (`DualWork.tensors`)."""
        del reward  # the dual's ρ takes its place
        next_rows = next_obs.repeat(1, self.tom.next_action_samples, 1)
        q = self._dual_q(obs, act)
        members, rows = q.shape
        next_v = self._dual_q(next_rows, next_act).view(
            members, self.tom.next_action_samples, rows).mean(1)
        residual = dual_residual(rho, q, next_v, done, self.gamma)
        # `dual_loss` of each member: its batch means, for every member at once.
        losses = ((1.0 - self.gamma) * self._dual_q(s0, a0).mean(dim=1)
                  + f_star(residual, self.tom.divergence).mean(dim=1))
        (grad,) = torch.autograd.grad(losses.sum(), [self._q.flat])
        self._adam.update(grad)
        return losses.detach()

    def _dual_q(self, obs: Tensor, act: Tensor) -> Tensor:
        """Every member's dual Q: [P, row, ·] -> [P, row]."""
        return mlp(self._q.layers(self._q.flat), torch.cat([obs, act], dim=-1)).squeeze(-1)


class StackedDiscriminator:
    """P members' fresh discriminators of a refit (one TOM config), trained as one."""

    def __init__(self, discs: list[Discriminator], optimisers: list[torch.optim.Optimizer],
                 cfg: TOMConfig, cuda_graph: bool = False) -> None:
        self.discs, self.cfg, self.members = discs, cfg, len(discs)
        self.obs_dim, self.act_dim = discs[0].obs_dim, discs[0].act_dim
        self._net = FlatStack(member_parameters(discs), transposed=True)
        self._scale = FlatStack([[d.mean for d in discs], [d.std for d in discs]])
        self._copies = Copies()
        self._copies.add(self._net.member_views(self._net.flat), self._net.members)
        self._adam = StackedAdam(self._net, optimisers, self._copies, "discriminator")
        self._copies.add(self._scale.member_views(self._scale.flat), self._scale.members,
                         store=False)
        self._net.flat.requires_grad_(True)
        self._step = GraphedStep(self._disc_step, enabled=cuda_graph)

    def train(self, work: list[DiscWork]) -> None:
        """Member i's discriminator steps with ``work[i]``, for every member at once; the
        members' discriminators and optimisers hold the result."""
        steps = {len(w.pos) for w in work}
        if len(work) != self.members or len(steps) != 1:
            raise ValueError(f"StackedDiscriminator.train needs one DiscWork of one length per "
                             f"member ({self.members}); got {len(work)} of lengths "
                             f"{sorted(steps)}")
        self._copies.load()
        for u in range(steps.pop()):
            inputs = [torch.stack([w.pos[u] for w in work]),
                      torch.stack([w.neg[u] for w in work])]
            if self.cfg.grad_penalty > 0:
                inputs.append(torch.stack([w.eps[u] for w in work]))
            self._step(*inputs)
        self._copies.store()

    def _disc_step(self, pos: Tensor, neg: Tensor, eps: Tensor | None = None) -> Tensor:
        """One step of every member, `discriminator_loss` and its Adam step: [P, row, ·]."""
        on_pos, on_neg = self._logit(pos), self._logit(neg)
        bce_pos = F.binary_cross_entropy_with_logits(on_pos, torch.ones_like(on_pos),
                                                     reduction="none").mean(1)
        bce_neg = F.binary_cross_entropy_with_logits(
            on_neg, torch.full_like(on_neg, self.cfg.replay_label), reduction="none").mean(1)
        losses = bce_pos + bce_neg
        if eps is not None:
            x = (eps * pos + (1.0 - eps) * neg).requires_grad_(True)
            (grad,) = torch.autograd.grad(self._logit(x).sum(), x, create_graph=True)
            losses = losses + self.cfg.grad_penalty * ((grad.norm(dim=-1) - 1.0) ** 2).mean(1)
        (grad,) = torch.autograd.grad(losses.sum(), [self._net.flat])
        self._adam.update(grad)
        return losses.detach()

    def _logit(self, x: Tensor) -> Tensor:
        """`Discriminator.forward` of every member: [P, row, 2·obs + act] -> [P, row]."""
        mean, std = self._scale.stacked(self._scale.flat)
        x = (x - mean[:, None]) / std[:, None]
        s, a, s2 = torch.split(x, [self.obs_dim, self.act_dim, self.obs_dim], dim=-1)
        enc_s, enc_a, enc_s2, *head = self._net.layers(self._net.flat)
        encoded = [torch.baddbmm(b, v, w).tanh() for v, (w, b) in
                   zip((s, a, s2), (enc_s, enc_a, enc_s2), strict=True)]
        return mlp(head, torch.cat(encoded, dim=-1), torch.tanh).squeeze(-1)
