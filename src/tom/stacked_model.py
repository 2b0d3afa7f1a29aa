"""Epochs of several runs' model fits as one: a population axis for the dynamics models
(`StackedFit`).

A refit trains the dynamics model for up to ``model.max_epochs`` epochs of
``model.steps_per_epoch`` minibatch steps (100 at the paper preset), each a few hundred small
kernels; on an H100 that took a run 1.9 s per 1 000 real steps, the largest of its refit's
parts once the discriminator and the dual were stacked (`tom.stacked_tom`; benchmarks/
RESULTS.md, sixth session). With ``stack_seeds``, the runs of a population (`tom.population`)
take each epoch's steps together: every member's network is one flat tensor with a member
axis (`tom.stacking`; an ensemble's E members are E rows of it), so one batched matmul per
layer evaluates every member's minibatch.

Only the steps are stacked. What lies between epochs stays each run's own, in its own turn:
its holdout loss, its best-holdout snapshot and its early stopping (`DynamicsModel.fit`), so
a run whose fit stops leaves the stack and the others go on. What a member computes: the
same steps as its own epoch, from the same minibatches, drawn ahead by the member from its own
random state as its epoch draws them (`FitEpoch`). Its parameters and Adam state are copied
into the stack before the epoch and back after, so that the member's model is then what its
own epoch would leave, up to rounding: batched matmuls do not always round as single ones do,
and Adam is written out rather than fused (tests/test_stacked_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tom.cuda_graph import GraphedStep
from tom.dynamics import (
    DynamicsModel,
    FitEpoch,
    MixtureDensityModel,
    ProbabilisticEnsemble,
    _gaussian_log_prob,
    _weighted_mean,
    head_rows,
    mixture_log_prob_dims,
    mixture_mean,
    mixture_parts,
    soft_logvar,
)
from tom.stacking import Copies, FlatStack, StackedAdam, mlp


class StackedFit:
    """The fit epochs of P dynamics models (one class, config, size and device), each with
    its Adam optimiser (created by its fit before its first epoch), as one."""

    # The members' minibatches are gathered this many steps at a time: all of an epoch's at
    # once would hold another copy of them (hundreds of MB for ten Humanoid ensembles).
    STEPS_PER_STACK = 10

    def __init__(self, models: list[DynamicsModel], cuda_graph: bool = False) -> None:
        first = models[0]
        if not isinstance(first, MixtureDensityModel | ProbabilisticEnsemble):
            raise ValueError(f"StackedFit stacks MixtureDensityModel and ProbabilisticEnsemble "
                             f"fits, not {type(first).__name__}")
        for model in models:
            if (type(model), model.cfg, model.in_dim, model.out_dim, model.in_mean.device) != (
                    type(first), first.cfg, first.in_dim, first.out_dim, first.in_mean.device):
                raise ValueError("StackedFit needs models of one class, config, size and "
                                 f"device; got a {type(model).__name__} ({model.in_dim} -> "
                                 f"{model.out_dim}, {model.in_mean.device}) and a "
                                 f"{type(first).__name__} ({first.in_dim} -> {first.out_dim}, "
                                 f"{first.in_mean.device})")
            if model._optimizer is None:
                raise ValueError("StackedFit needs each model's optimiser: stack its fit's "
                                 "epochs, which creates it first")
        self.models, self.members = models, len(models)
        self.mdn = isinstance(first, MixtureDensityModel)
        self.rows_per_member = first.num_members
        self.out_dim, self.cfg = first.out_dim, first.cfg
        self._decays = None if self.mdn else first.decays
        self._cuda_graph = cuda_graph
        self._forms: dict[tuple[bool, bool, bool], _Form] = {}

    def train(self, epochs: list[FitEpoch | None]) -> Tensor:
        """Member i's epoch ``epochs[i]``, for every member at once; the members' models and
        optimisers hold the result. A member with None takes no part: its model and
        optimiser are neither read nor written (its rows compute on another member's
        minibatches, and what they hold is loaded afresh when it next takes part).
        Returns each member's summed minibatch losses, [P] (for a member with None, any
        number)."""
        taking_part = {i for i, e in enumerate(epochs) if e is not None}
        given = [e for e in epochs if e is not None]
        shapes = {(tuple(e.idx.shape), e.x.shape[1:], e.y.shape[1:], e.pattern())
                  for e in given}
        if len(epochs) != self.members or len(shapes) != 1:
            raise ValueError(f"StackedFit.train needs one FitEpoch (or None, but not all) of "
                             f"one shape and loss form per member ({self.members}); got "
                             f"{len(epochs)} with {len(given)} FitEpochs of forms "
                             f"{sorted(map(str, shapes))}")
        epochs = [given[0] if e is None else e for e in epochs]
        form = self._form(given[0].pattern())
        steps = len(given[0].idx)
        totals = torch.zeros(self.members, device=form.net.flat.device)
        form.copies.load(taking_part)
        for lo in range(0, steps, self.STEPS_PER_STACK):  # [c, P·M, batch, ·] a slice at a time
            idx = [e.idx[lo:lo + self.STEPS_PER_STACK] for e in epochs]
            gathered = [
                torch.stack([t[i] for t, i in zip(tensors, idx, strict=True)], dim=1)
                .flatten(1, 2)
                for tensors in zip(*((e.x, e.y, e.w, e.dw, e.ndw) for e in epochs), strict=True)
                if tensors[0] is not None]
            for u in range(len(idx[0])):
                totals.add_(form.step(*(t[u] for t in gathered)))
        form.copies.store(taking_part)
        return totals

    def _form(self, pattern: tuple[bool, bool, bool]) -> _Form:
        """The stack for one form of the loss. A mean-only fit of the MDN leaves its learned
        noise without a gradient, and so its Adam state as it was (a fused Adam step skips
        it): that stack leaves it out."""
        form = self._forms.get(pattern)
        if form is None:
            mean_only = pattern[1]
            names = [name for name, _ in self.models[0].named_parameters()
                     if not (self.mdn and mean_only and name == "raw_noise")]
            params = [dict(m.named_parameters()) for m in self.models]
            net = FlatStack([[p[name] for p in params] for name in names],
                            rows_per_member=self.rows_per_member, transposed=self.mdn)
            copies = Copies()
            copies.add(net.member_views(net.flat), net.members)
            adam = StackedAdam(net, [m._optimizer for m in self.models], copies, "model")
            net.flat.requires_grad_(True)
            # The layers' weights and biases, in order: the MDN's Linear layers' (body.k.*,
            # head.*), the ensemble's weights.k and biases.k.
            weights = [n for n in names if n.endswith("weight") or n.startswith("weights.")]
            biases = [n for n in names if n.endswith("bias") or n.startswith("biases.")]
            form = _Form(names, weights, biases, net, copies, adam)
            form.step = GraphedStep(lambda *inputs: self._fit_step(form, pattern, *inputs),
                                    enabled=self._cuda_graph)
            self._forms[pattern] = form
        return form

    def _fit_step(self, form: _Form, pattern: tuple[bool, bool, bool], x: Tensor, y: Tensor,
                  *weights: Tensor) -> Tensor:
        """One minibatch step of every member, `DynamicsModel._objective` and its Adam step:
        [P·M, batch, ·] inputs (member i's rows i·M to i·M + M − 1); each member's loss, [P]."""
        given = iter(weights)
        w, dw, ndw = (next(given) if present else None for present in pattern)
        views = dict(zip(form.names, form.net.stacked(form.net.flat), strict=True))
        weight_views = [views[name] for name in form.weights]
        bias_views = [views[name] for name in form.biases]
        if self.mdn:
            # The body as `mlp` (an nn.Linear bias [P, out] -> [P, 1, out]), its head's
            # product transposed, as `MixtureDensityModel` takes it: [P, units, batch].
            body = [(w, b[:, None]) for w, b in zip(weight_views[:-1], bias_views[:-1],
                                                     strict=True)]
            h = F.silu(mlp(body, x, F.silu))
            out = head_rows(h, weight_views[-1].transpose(1, 2), bias_views[-1])
            # [P, 1] ('shared') or [P, out_dim] ('per-dim'); absent: a mean-only fit's
            raw_noise = views.get("raw_noise")
            noise_var = (0.0 if raw_noise is None  # (the variance is then not used)
                         else F.softplus(raw_noise)[:, :, None, None])
            logits, means, var = mixture_parts(out, noise_var, self.out_dim,
                                               self.cfg.mdn_components)

            def nll_dims() -> Tensor:  # [P, batch, out_dim]
                y_t = y.transpose(1, 2).contiguous()
                return -mixture_log_prob_dims(logits, means, var, y_t).transpose(1, 2)

            def mean() -> Tensor:
                return mixture_mean(logits, means).transpose(1, 2)
        else:
            h = mlp(list(zip(weight_views, bias_views, strict=True)), x, F.silu)
            gaussian_mean, raw = h.chunk(2, -1)
            max_logvar, min_logvar = views["max_logvar"], views["min_logvar"]  # [P·M, 1, out]
            logvar = soft_logvar(raw, max_logvar, min_logvar)

            def nll_dims() -> Tensor:
                return -_gaussian_log_prob(y, gaussian_mean, logvar.exp(), logvar)

            def mean() -> Tensor:
                return gaussian_mean
        # `DynamicsModel._member_loss`'s three forms, for every row at once.
        if ndw is not None:
            member_loss = (ndw * nll_dims()).sum(-1)
        elif dw is None:
            member_loss = nll_dims().sum(-1)
        else:
            member_loss = (dw * (mean() - y) ** 2).sum(-1)
        losses = _weighted_mean(member_loss, w).view(self.members, self.rows_per_member).sum(1)
        if not self.mdn:
            losses = losses + self._ensemble_regulariser(weight_views, max_logvar, min_logvar)
        (grad,) = torch.autograd.grad(losses.sum(), [form.net.flat])
        form.adam.update(grad)
        return losses.detach()

    def _ensemble_regulariser(self, weights: list[Tensor], max_logvar: Tensor,
                              min_logvar: Tensor) -> Tensor:
        """`ProbabilisticEnsemble._regulariser` of every member, [P]."""
        def per_member(t: Tensor) -> Tensor:
            return t.reshape(self.members, -1).sum(1)

        reg = sum(0.5 * d * per_member(w ** 2) for d, w in
                  zip(self._decays, weights, strict=True))
        reg = reg + 0.01 * (per_member(max_logvar) - per_member(min_logvar))
        return 0.5 * self.out_dim * reg


@dataclass
class _Form:
    """The stack of one form of the fit's loss: the members' parameters it trains (by name,
    in its flat tensor's order), their layers, their copies, Adam, and its step (graphed on a
    GPU)."""

    names: list[str]
    weights: list[str]  # the names of the layers' weights, in order
    biases: list[str]  # and of their biases
    net: FlatStack
    copies: Copies
    adam: StackedAdam
    step: GraphedStep | None = None
