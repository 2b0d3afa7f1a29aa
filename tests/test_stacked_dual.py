"""Stacked dual training (`tom.stacked_dual`) against each member's own
`TOMObjective._train_dual_alone`, from the same state and the same random state: the dual Q, its
Adam moments and step counts, and the last loss must agree to rounding, member by member."""

from __future__ import annotations

import copy

import pytest
import torch

from tom.buffer import ReplayBuffer
from tom.config import resolve
from tom.objectives.tom import TOMObjective, draw_dual_work
from tom.sac import SAC
from tom.stacked_dual import StackedDual

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
        objective._train_dual(buf, agent, rho)
    return objective, agent, buf, rho


def flat_state(objective: TOMObjective) -> dict[str, torch.Tensor]:
    state = objective.state_dict()
    out = {f"q.{k}": v for k, v in state["q"].items()}
    for i, s in state["q_opt"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items()})
    return out


@pytest.mark.parametrize("overrides", [{}, {"tom.next_action_samples": 3,
                                            "tom.divergence": "kl"}])
def test_stacked_dual_training_is_each_members_own(overrides, monkeypatch):
    """12 steps, their inputs stacked 5 at a time (3 slices, the last short)."""
    monkeypatch.setattr(StackedDual, "STEPS_PER_STACK", 5)
    members = [member(seed, **overrides) for seed in (0, 1, 2)]
    stacked = copy.deepcopy(members)
    losses = []
    for seed, (objective, agent, buf, rho) in zip((0, 1, 2), members, strict=True):
        torch.manual_seed(10 + seed)
        losses.append(objective._train_dual(buf, agent, rho)["dual_loss"])
    work = []
    for seed, (objective, agent, buf, rho) in zip((0, 1, 2), stacked, strict=True):
        torch.manual_seed(10 + seed)
        work.append(draw_dual_work(buf, rho, objective.tom, ACT_DIM))
        after_draw = torch.get_rng_state()
        torch.manual_seed(10 + seed)
        objective_copy = copy.deepcopy(objective)
        objective_copy._train_dual(buf, agent, rho)
        assert torch.equal(torch.get_rng_state(), after_draw)  # the same draws
    got = StackedDual([m[0] for m in stacked], [m[1] for m in stacked]).train(work)
    torch.testing.assert_close(got, torch.tensor(losses), **TOL)
    for (own, *_), (mine, *_) in zip(members, stacked, strict=True):
        expected, actual = flat_state(own), flat_state(mine)
        assert actual.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], **TOL, msg=key)


def test_stacked_dual_refuses_members_of_other_settings():
    a, b = member(0), member(1, **{"tom.dual_lr": 1e-3})
    with pytest.raises(ValueError, match="one TOM config"):
        StackedDual([a[0], b[0]], [a[1], b[1]])
