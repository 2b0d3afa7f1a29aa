"""Networks of several runs stacked with a member axis: the pieces `tom.stacked_sac`,
`tom.stacked_tom` and `tom.stacked_model` share.

A network of every member is one flat tensor [rows, n] (`FlatStack`): a row per member, or
several per member (SAC's twin critics, an ensemble's members). Its layers are views of it
([rows, in, out] weights, [rows, 1, out] biases), so that one batched matmul per layer
evaluates every member, and the gradient, each Adam operation and a Polyak average are one
operation on one tensor rather than one per layer and member. The members keep their own
modules and optimisers: `Copies` copies their tensors into the stack before stacked work and
back after it, so that everything else a run does sees what it would see alone.
`StackedAdam` is torch.optim.Adam's algorithm with each member's own step count, its moments
and counts copied from and to the members' optimisers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tom.optim import param_state
from tom.sac import LOG_STD_MAX, LOG_STD_MIN, tanh_normal_log_prob


def member_parameters(modules: list[nn.Module]) -> list[list[Tensor]]:
    """``[k][i]``: module i's k-th parameter (the layout `FlatStack` takes)."""
    return [list(ps) for ps in zip(*(m.parameters() for m in modules), strict=True)]


class FlatStack:
    """One network (or tensor) of every member in one flat tensor [rows, n].

    ``members[k][i]`` is member i's k-th tensor (its module's parameters in order). With
    ``rows_per_member`` 2 a member's tensors have a leading 2 (SAC's twin critics: member i's
    are rows 2i and 2i + 1). With ``transposed``, an ``nn.Linear`` weight [out, in] is kept as
    [in, out], as a batched matmul takes it. Adam's moments have the same layout."""

    def __init__(self, members: list[list[Tensor]], rows_per_member: int = 1,
                 transposed: bool = False) -> None:
        self.members, self.rows_per_member, self.transposed = members, rows_per_member, transposed
        self.count = len(members[0])
        self.rows = self.count * rows_per_member
        self.row_shapes = []  # what one row holds of each tensor
        for tensors in members:
            shape = (tensors[0].T if transposed and tensors[0].dim() == 2 else tensors[0]).shape
            self.row_shapes.append(tuple(shape[1:] if rows_per_member > 1 else shape))
        sizes = [math.prod(shape) for shape in self.row_shapes]
        self.bounds = list(zip(itertools.accumulate([0, *sizes[:-1]]),
                               itertools.accumulate(sizes), strict=True))
        self.flat = torch.zeros(self.rows, sum(sizes), device=members[0][0].device)

    def stacked(self, flat: Tensor) -> list[Tensor]:
        """Each tensor of every member, as a view of ``flat`` (this stack's flat tensor, a
        moment of it, or it detached): [rows, *row shape]."""
        return [flat[:, a:b].view(self.rows, *shape)
                for (a, b), shape in zip(self.bounds, self.row_shapes, strict=True)]

    def member_views(self, flat: Tensor) -> list[list[Tensor]]:
        """``[k][i]``: member i's k-th tensor as a view of ``flat``, shaped as the member's."""
        out = []
        for view, tensors in zip(self.stacked(flat), self.members, strict=True):
            rows = view.view(self.count, self.rows_per_member, *view.shape[1:])
            per_member = []
            for member_rows, tensor in zip(rows.unbind(0), tensors, strict=True):
                v = member_rows if self.rows_per_member > 1 else member_rows[0]
                v = v.T if self.transposed and tensor.dim() == 2 else v.view(tensor.shape)
                per_member.append(v)
            out.append(per_member)
        return out

    def layers(self, flat: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(weight [rows, in, out], bias [rows, 1, out]) per layer of a network whose
        parameters alternate weight and bias, as views of ``flat``. Made anew for each use,
        so that each autograd graph has views of its own."""
        views = self.stacked(flat)
        return [(weight, bias if bias.dim() == 3 else bias[:, None])
                for weight, bias in zip(views[::2], views[1::2], strict=True)]


def mlp(layers: list[tuple[Tensor, Tensor]], x: Tensor,
        activation: Callable[[Tensor], Tensor] = F.relu_) -> Tensor:
    """A stacked multilayer perceptron: [rows, batch, in] -> [rows, batch, out]. The default
    ReLU works in place on each layer's fresh output, as `tom.sac.mlp`'s."""
    for k, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias, x, weight)
        if k < len(layers) - 1:
            x = activation(x)
    return x


def actor_sample(layers: list[tuple[Tensor, Tensor]], obs: Tensor, noise: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """`SAC.sample` of every member ([P, batch, obs_dim]) with the given standard normal
    noise: the tanh-squashed action and its log-density."""
    pre_tanh, mean, log_std = _pre_tanh(layers, obs, noise)
    return pre_tanh.tanh(), tanh_normal_log_prob(pre_tanh, mean, log_std)


def actor_action(layers: list[tuple[Tensor, Tensor]], obs: Tensor, noise: Tensor) -> Tensor:
    """`actor_sample`'s action alone, the same bits (`SAC.sample_action` of every member)."""
    return _pre_tanh(layers, obs, noise)[0].tanh()


def _pre_tanh(layers: list[tuple[Tensor, Tensor]], obs: Tensor, noise: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
    mean, log_std = mlp(layers, obs).chunk(2, dim=-1)
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    return mean + log_std.exp() * noise, mean, log_std


class Copies:
    """Stack views and the member tensors they hold: `load` copies members into the stack,
    `store` the stack back into members. Either for all members or for some: the others'
    rows are then neither read nor written back (in a population on a GPU, such a member
    may be writing its tensors on its own stream meanwhile), and hold whatever the stacked
    work leaves there until the next `load` of them."""

    def __init__(self) -> None:
        # (member, stack view, member tensor) triples, by direction
        self._both: list[tuple[int, Tensor, Tensor]] = []
        self._load_only: list[tuple[int, Tensor, Tensor]] = []
        self._store_only: list[tuple[int, Tensor, Tensor]] = []

    def add(self, views: list[list[Tensor]], members: list[list[Tensor]], load: bool = True,
            store: bool = True) -> None:
        """Pairs ``views[k][i]``, ``members[k][i]`` (member i's); ``store=False``: a network
        the stacked work only reads; ``load=False``: written back only."""
        pairs = (self._both if load and store else self._load_only if load
                 else self._store_only)
        for vs, ms in zip(views, members, strict=True):
            pairs.extend((i, v, m) for i, (v, m) in enumerate(zip(vs, ms, strict=True)))

    @torch.no_grad()
    def load(self, members: set[int] | None = None) -> None:
        """From every member, or from ``members`` (their indices) only."""
        _copy(self._both + self._load_only, members, into_stack=True)

    @torch.no_grad()
    def store(self, members: set[int] | None = None) -> None:
        """Into every member, or into ``members`` (their indices) only."""
        _copy(self._both + self._store_only, members, into_stack=False)


def _copy(triples: list[tuple[int, Tensor, Tensor]], members: set[int] | None,
          into_stack: bool) -> None:
    """Stack view from member tensor (``into_stack``) or back, for the triples of
    ``members`` (None: all), in one foreach operation."""
    views, tensors = [], []
    for i, view, tensor in triples:
        if members is None or i in members:
            views.append(view)
            tensors.append(tensor)
    if views:
        torch._foreach_copy_(*((views, tensors) if into_stack else (tensors, views)))


class StackedAdam:
    """torch.optim.Adam's algorithm (L2 weight decay added to the gradient, as there) over a
    `FlatStack`, with one step count per member, as each member's optimiser keeps its own;
    its moments and counts are slotted into ``copies`` to and from the members' optimisers'
    state (created where missing, as their first step would create it)."""

    def __init__(self, stack: FlatStack, optimisers: list[torch.optim.Optimizer],
                 copies: Copies, name: str) -> None:
        group = optimisers[0].param_groups[0]
        if group["amsgrad"] or group["maximize"] or group.get("decoupled_weight_decay"):
            raise ValueError(f"StackedAdam implements Adam with L2 weight decay; the {name} "
                             f"optimiser has amsgrad={group['amsgrad']}, maximize="
                             f"{group['maximize']}, decoupled_weight_decay="
                             f"{group.get('decoupled_weight_decay')}")
        self.param, self.rows_per_member = stack.flat, stack.rows_per_member
        self.exp_avg = torch.zeros_like(self.param)
        self.exp_avg_sq = torch.zeros_like(self.param)
        self.step = torch.zeros(stack.count, device=self.param.device)
        self.lr, (self.beta1, self.beta2) = group["lr"], group["betas"]
        self.eps, self.weight_decay = group["eps"], group["weight_decay"]
        states = [[param_state(opt, p) for opt, p in zip(optimisers, tensors, strict=True)]
                  for tensors in stack.members]
        for moment, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
            copies.add(stack.member_views(moment),
                       [[state[key] for state in per_tensor] for per_tensor in states])
        # A member's optimiser counts steps per parameter, all equal: loaded from its first
        # parameter's, stored to each.
        counts = torch.stack([torch.stack([state["step"].to("cpu", torch.float64)
                                           for state in per_member])
                              for per_member in zip(*states, strict=True)])  # [member, tensor]
        uneven = torch.nonzero((counts != counts[:, :1]).any(1)).flatten().tolist()
        if uneven:
            raise ValueError(f"StackedAdam keeps one step count per member, but in the {name} "
                             f"optimiser of member(s) {uneven} the parameters have taken "
                             f"different numbers of steps ({counts[uneven[0]].tolist()})")
        steps = list(self.step.unbind(0))
        copies.add([steps], [[state["step"] for state in states[0]]])
        copies.add([steps] * (len(states) - 1),
                   [[state["step"] for state in per_tensor] for per_tensor in states[1:]],
                   load=False)

    @torch.no_grad()
    def update(self, grad: Tensor) -> None:
        self.step += 1
        step = self.step.repeat_interleave(self.rows_per_member)[:, None]  # [rows, 1]
        if self.weight_decay:
            grad = grad.add(self.param, alpha=self.weight_decay)
        step_size = self.lr / (1 - self.beta1 ** step)
        correction2_sqrt = (1 - self.beta2 ** step).sqrt()
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        denom = (self.exp_avg_sq.sqrt() / correction2_sqrt).add_(self.eps)
        self.param.addcdiv_(self.exp_avg * step_size, denom, value=-1)
