"""Stacked fit epochs (`tom.stacked_model`) against each member's own, from the same state and
the same random state: a member's epoch inside `DynamicsModel.fit`, for both models and every
form of the fit's loss; parameters, Adam moments and step counts, and the epoch's summed
loss must agree to rounding, member by member."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from test_dynamics import linear_data, new_model

from tom import turns
from tom.checkpoint import rng_state, set_rng_state
from tom.dynamics import DynamicsModel, FitEpoch
from tom.optim import adam
from tom.stacked_model import StackedFit

TOL = dict(rtol=1e-4, atol=2e-6)
ROWS = 400


@dataclass
class _Epochs:
    """`tom.turns.Turns` that runs each fit epoch alone, as outside a population, and keeps
    for each: the model (with its optimiser) before it, what `epoch_drawn` drew, the model
    after it and the epoch's summed loss; and checks that the drawing draws what the epoch
    itself draws."""

    kept: list[tuple[DynamicsModel, FitEpoch, DynamicsModel, torch.Tensor]] = field(
        default_factory=list)
    passes: bool = False  # no other runs: loops run at once, as alone

    def pass_turn(self) -> None:
        pass

    def together(self, kind, alone, part):
        assert kind == "fit"
        state = rng_state()
        model, epoch = part()
        drawn = _torch_rng()
        set_rng_state(state)
        before = copy.deepcopy(model)
        total = alone().clone()
        assert all(map(torch.equal, _torch_rng(), drawn))
        self.kept.append((before, epoch, copy.deepcopy(model), total))
        return total


def _torch_rng() -> list[torch.Tensor]:
    state = rng_state()
    return [state["torch"], *state.get("cuda", [])]


def fit_epochs(model: DynamicsModel, data, **fit_args) -> list:
    recorder = _Epochs()
    turns.register(recorder)
    try:
        model.fit(data, **fit_args)
    finally:
        turns.register(None)
    return recorder.kept


def flat_state(model: DynamicsModel) -> dict[str, torch.Tensor]:
    out = {f"p.{k}": v for k, v in model.named_parameters()}
    for i, s in model._optimizer.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items()})
    return out


def fit_args(form: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(100 + seed)
    if form in ("resample", "loss"):
        return {"weights": torch.rand(ROWS, generator=g) + 0.1}
    if form == "mean-only":
        return {"dim_weights": torch.rand(ROWS, 1 + 3, generator=g)}
    if form == "nll-weighted":
        return {"nll_dim_weights": torch.randn(ROWS, 1 + 3, generator=g)}
    return {}


CASES = [("mdn", "per-dim", form) for form in
         ("uniform", "resample", "loss", "mean-only", "nll-weighted")]
CASES += [("mdn", "shared", "uniform"), ("ensemble", "per-dim", "uniform"),
          ("ensemble", "per-dim", "loss"), ("ensemble", "per-dim", "mean-only"),
          ("ensemble", "per-dim", "nll-weighted")]


@pytest.mark.parametrize(("kind", "noise", "form"), CASES)
def test_stacked_fit_epochs_are_each_members_own(kind, noise, form, monkeypatch):
    """Three members' first two epochs of a fit: the first fit of seed 0 and 2 (Adam with no
    state yet), the second fit of seed 1; minibatches gathered 3 steps at a time (the last
    slice short)."""
    monkeypatch.setattr(StackedFit, "STEPS_PER_STACK", 3)
    weighting = "loss" if form == "loss" else "resample"
    kept = []
    for seed in (0, 1, 2):
        model = new_model(kind, seed, max_epochs=2, steps_per_epoch=7, batch_size=32,
                          mdn_noise=noise, weighting=weighting)
        data = linear_data(ROWS, seed)
        if seed == 1:
            model.fit(data, **fit_args(form, seed + 10))
        torch.manual_seed(20 + seed)
        kept.append(fit_epochs(model, data, **fit_args(form, seed)))
    assert all(len(epochs) == 2 for epochs in kept)
    for epoch in (0, 1):
        befores = [epochs[epoch][0] for epochs in kept]
        totals = StackedFit(befores).train([epochs[epoch][1] for epochs in kept])
        assert totals.shape == (3,)
        for i, epochs in enumerate(kept):
            _, _, after, total = epochs[epoch]
            torch.testing.assert_close(totals[i], total, **TOL)
            got, want = flat_state(befores[i]), flat_state(after)
            assert got.keys() == want.keys()
            for key in want:
                torch.testing.assert_close(got[key], want[key], **TOL, msg=key)
    # The members differ (they are not one member three times).
    assert not torch.allclose(kept[0][0][3], kept[1][0][3])


def test_stacked_fit_refuses_what_it_cannot_stack():
    mdn, other = new_model("mdn", 0), new_model("mdn", 1, hidden_size=16)
    with pytest.raises(ValueError, match="needs each model's optimiser"):
        StackedFit([mdn])
    for model in (mdn, other):
        model._optimizer = adam(model.parameters(), lr=model.cfg.lr)
    with pytest.raises(ValueError, match="models of one class, config, size and device"):
        StackedFit([mdn, other])
    stack = StackedFit([mdn])
    idx = torch.zeros(2, 1, 4, dtype=torch.long)
    epoch = FitEpoch(idx, torch.zeros(5, 5), torch.zeros(5, 4), None, None, None)
    with pytest.raises(ValueError, match=r"one FitEpoch \(or None, but not all\) of one "):
        stack.train([epoch, epoch])
    with pytest.raises(ValueError, match=r"one FitEpoch \(or None, but not all\) of one "):
        stack.train([None])


def test_members_without_an_epoch_are_left_as_they_are():
    """A stack of three where the middle member takes no part (its fit stopped sooner): the
    others' epochs are their own, and its model and Adam state are untouched."""
    kept = []
    for seed in (0, 1, 2):
        model = new_model("ensemble", seed, max_epochs=1, steps_per_epoch=5, batch_size=32)
        model.fit(linear_data(ROWS, seed))  # (Adam's state exists, as it does in a refit)
        torch.manual_seed(20 + seed)
        kept.append(fit_epochs(model, linear_data(ROWS, seed))[0])
    befores = [before for before, *_ in kept]
    untouched = {k: v.clone() for k, v in flat_state(befores[1]).items()}
    totals = StackedFit(befores).train([kept[0][1], None, kept[2][1]])
    for i in (0, 2):
        torch.testing.assert_close(totals[i], kept[i][3], **TOL)
        want = flat_state(kept[i][2])
        for key, value in flat_state(befores[i]).items():
            torch.testing.assert_close(value, want[key], **TOL, msg=key)
    for key, value in flat_state(befores[1]).items():
        assert torch.equal(value, untouched[key]), key


def test_a_model_whose_parameters_took_different_adam_steps_is_refused():
    """After a mean-only fit the MDN's learned noise has taken no Adam step (it has no
    gradient there) while the rest has: one step count per member cannot stand for that."""
    model = new_model("mdn", 0, max_epochs=1, steps_per_epoch=3, batch_size=32)
    data = linear_data(ROWS, 0)
    model.fit(data, dim_weights=torch.ones(ROWS, 4))
    StackedFit([model])._form((False, True, False))  # mean-only: the noise is left out
    with pytest.raises(ValueError, match=r"model optimiser of member\(s\) \[0\] the "
                                         r"parameters have taken different numbers of steps"):
        StackedFit([model])._form((False, False, False))
