"""Stacked TOM refit work (`tom.stacked_tom`) against each member's own, from the same state
and the same random state: the dual's training (`TOMObjective._train_dual_alone`) and the
discriminator's (`train_discriminator`); weights, Adam moments and step counts, and the dual's
last loss must agree to rounding, member by member."""

from __future__ import annotations

import copy

import pytest
import torch

from tom.buffer import ReplayBuffer
from tom.config import resolve
from tom.objectives.tom import (
    Discriminator,
    PolicyGaussians,
    TOMObjective,
    draw_disc_work,
    draw_dual_work,
    train_discriminator,
)
from tom.optim import adam
from tom.sac import SAC
from tom.stacked_tom import StackedDiscriminator, StackedDual

OBS_DIM, ACT_DIM, ROWS = 4, 2, 300
TOL = dict(rtol=1e-4, atol=2e-6)


def member(seed: int, **overrides):
    """A TOM objective, its run's policy, a replay buffer and its ρ, all of seed ``seed``;
    the dual already trained once (so that its Adam state exists and members differ)."""
    cfg = resolve("inverted_pendulum", "tom", seed=seed, preset="smoke", overrides=[
        "tom.dual_steps=12", "tom.dual_batch=32", "tom.dual_hidden=16",
        *(f"{k}={v}" for k, v in overrides.items())])
    torch.manual_seed(seed)
    objective = TOMObjective(cfg, OBS_DIM, ACT_DIM)
    agent = SAC(OBS_DIM, ACT_DIM, cfg.sac)
    buf = ReplayBuffer(ROWS, OBS_DIM, ACT_DIM)
    for i in range(ROWS):
        obs = torch.randn(OBS_DIM)
        if i % 50 == 0:
            buf.add_initial_state(obs)
        buf.add(obs, torch.rand(ACT_DIM) * 2 - 1, float(torch.randn(())),
                obs + 0.1 * torch.randn(OBS_DIM), float(i % 97 == 0))
    rho = torch.randn(ROWS)
    if seed % 2:
        objective._train_dual(buf, PolicyGaussians.of(agent, buf), rho)
    return objective, agent, buf, rho


def flat_state(objective: TOMObjective) -> dict[str, torch.Tensor]:
    state = objective.state_dict()
    out = {f"q.{k}": v for k, v in state["q"].items()}
    for i, s in state["q_opt"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items()})
    return out


@pytest.mark.parametrize("overrides", [{}, {"tom.next_action_samples": 3,
                                            "tom.divergence": "kl"}])
def test_stacked_tom_training_is_each_members_own(overrides, monkeypatch):
    """12 steps, their inputs stacked 5 at a time (3 slices, the last short)."""
    monkeypatch.setattr(StackedDual, "STEPS_PER_STACK", 5)
    members = [member(seed, **overrides) for seed in (0, 1, 2)]
    stacked = copy.deepcopy(members)
    losses = []
    for seed, (objective, agent, buf, rho) in zip((0, 1, 2), members, strict=True):
        torch.manual_seed(10 + seed)
        losses.append(objective._train_dual(buf, PolicyGaussians.of(agent, buf), rho)["dual_loss"])
    work = []
    for seed, (objective, agent, buf, rho) in zip((0, 1, 2), stacked, strict=True):
        torch.manual_seed(10 + seed)
        work.append(draw_dual_work(buf, rho, PolicyGaussians.of(agent, buf), objective.tom))
        after_draw = torch.get_rng_state()
        torch.manual_seed(10 + seed)
        objective_copy = copy.deepcopy(objective)
        objective_copy._train_dual(buf, PolicyGaussians.of(agent, buf), rho)
        assert torch.equal(torch.get_rng_state(), after_draw)  # the same draws
    got = StackedDual([m[0] for m in stacked]).train(work)
    torch.testing.assert_close(got, torch.tensor(losses), **TOL)
    for (own, *_), (mine, *_) in zip(members, stacked, strict=True):
        expected, actual = flat_state(own), flat_state(mine)
        assert actual.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], **TOL, msg=key)


def test_stacked_tom_refuses_members_of_other_settings():
    a, b = member(0), member(1, **{"tom.dual_lr": 1e-3})
    with pytest.raises(ValueError, match="one TOM config"):
        StackedDual([a[0], b[0]])


@pytest.mark.parametrize("grad_penalty", [10.0, 0.0])
def test_stacked_discriminators_train_as_each_members_own(grad_penalty, monkeypatch):
    """Three members' fresh discriminators of a refit, trained as one, against each trained
    by `train_discriminator` alone from the same random state: the weights to rounding (the
    optimiser is the refit's own, dropped after). 2 passes over a recent window of 70 rows
    in minibatches of 32: two shapes of step (32 rows and 6)."""
    overrides = {"tom.disc_passes": 2, "tom.disc_batch": 32, "tom.disc_hidden": 16,
                 "tom.grad_penalty": grad_penalty}
    members = [member(seed, **overrides) for seed in (0, 1, 2)]
    own, stacked, works = [], [], []
    for seed, (objective, _, buf, _) in zip((0, 1, 2), members, strict=True):
        recent = buf.recent_mask(70)
        torch.manual_seed(20 + seed)
        own.append(train_discriminator(buf, recent, objective.tom, OBS_DIM, ACT_DIM))
        after = torch.get_rng_state()
        torch.manual_seed(20 + seed)
        disc = Discriminator(OBS_DIM, ACT_DIM, objective.tom.disc_hidden, buf.all())
        opt = adam(disc.parameters(), lr=objective.tom.disc_lr)
        works.append(draw_disc_work(buf, torch.nonzero(recent).squeeze(-1), objective.tom))
        assert torch.equal(torch.get_rng_state(), after)  # the same draws
        stacked.append((disc, opt))
    StackedDiscriminator([d for d, _ in stacked], [o for _, o in stacked],
                         members[0][0].tom).train(works)
    for mine, (disc, _) in zip(own, stacked, strict=True):
        for p, q in zip(mine.parameters(), disc.parameters(), strict=True):
            torch.testing.assert_close(q, p, **TOL)
    assert len(works[0].pos) == 6 and {len(p) for p in works[0].pos} == {32, 6}
