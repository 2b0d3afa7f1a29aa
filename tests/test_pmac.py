"""PMAC: decay^k per policy version, normalisation without underflow, wrap-around, end to end."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tom.buffer import ReplayBuffer
from tom.cli import main
from tom.config import resolve
from tom.objectives import RefitContext, make_objective
from tom.objectives.pmac import PMACObjective, pmac_distribution, policy_versions

OBS, ACT = 3, 1


def _objective(decay: float) -> PMACObjective:
    cfg = resolve("inverted_pendulum", "pmac", preset="smoke", overrides={"pmac.decay": decay})
    obj = make_objective(cfg, OBS, ACT)
    assert isinstance(obj, PMACObjective)
    return obj


def _add(buf: ReplayBuffer, n: int, updates: int) -> None:
    for _ in range(n):
        buf.add(torch.randn(OBS), torch.randn(ACT), 0.0, torch.randn(OBS), 0.0,
                policy_updates=updates)


def _refit(obj: PMACObjective, buf: ReplayBuffer, updates: int) -> None:
    agent = SimpleNamespace(num_updates=updates)
    obj.update(RefitContext(buf, agent, env_steps=buf.inserted, learner_steps=buf.inserted))


def test_weight_is_decay_to_the_k_after_k_policy_versions():
    decay, rounds, per_round = 0.8, 6, 3
    obj, buf = _objective(decay), ReplayBuffer(100, OBS, ACT)
    updates = 0
    for _ in range(rounds):
        _add(buf, per_round, updates)  # collected by the policy of this round
        _refit(obj, buf, updates)
        updates += 7  # SAC updates between refits (any positive number: one new version)
    p = obj.distribution().double()
    fresh = p[-1]
    for r in range(rounds):
        k = rounds - 1 - r
        block = p[r * per_round:(r + 1) * per_round]
        assert torch.allclose(block / fresh, torch.full_like(block, decay ** k), rtol=1e-6)
    # The pure function is exact in float64.
    staleness = torch.arange(rounds)
    q = pmac_distribution(staleness, decay)
    assert torch.allclose(q / q[0], decay ** staleness.double(), rtol=1e-12, atol=0)


def test_weights_sum_to_one_and_fit_weights_have_mean_one():
    obj, buf = _objective(0.9), ReplayBuffer(50, OBS, ACT)
    for updates in (0, 40, 90, 130):
        _add(buf, 10, updates)
        _refit(obj, buf, updates)
    assert obj.distribution().double().sum().item() == pytest.approx(1.0, abs=1e-6)
    w = obj.fit_weights()
    assert w.shape == (len(buf),) and w.double().mean().item() == pytest.approx(1.0, rel=1e-6)
    assert obj.start_weights() is w
    assert obj.stats()["pmac_policy_versions"] == 4.0


def test_no_underflow_for_very_stale_data():
    staleness = torch.cat([torch.zeros(5, dtype=torch.long), torch.full((5,), 5000)])
    p = pmac_distribution(staleness, 0.9)  # 0.9^5000 ≈ 1e-229: tiny, not nan or zero-sum
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0)
    assert p[0].item() == pytest.approx(0.2) and 0 < p[-1].item() < 1e-200
    assert torch.equal(pmac_distribution(staleness, 1.0), torch.full((10,), 0.1, dtype=p.dtype))


def test_unchanged_policy_is_no_new_version():
    obj, buf = _objective(0.5), ReplayBuffer(20, OBS, ACT)
    _add(buf, 4, 0)
    _refit(obj, buf, 0)
    _add(buf, 4, 0)
    _refit(obj, buf, 0)  # no SAC update in between: same policy, uniform weights
    assert torch.allclose(obj.fit_weights(), torch.ones(8))
    with pytest.raises(ValueError, match="went back"):
        _refit(obj, buf, -1)


def test_wraparound_keeps_weights_aligned_with_storage():
    decay = 0.5
    obj, buf = _objective(decay), ReplayBuffer(5, OBS, ACT)
    for updates in (0, 10, 20, 30):  # two transitions per policy version
        _add(buf, 2, updates)
        _refit(obj, buf, updates)
    # 8 inserted into 5 slots: slots 0-2 hold #5-#7 (updates 20, 30, 30), slots 3-4 #3-#4.
    assert buf.collected_at_update().tolist() == [20, 30, 30, 10, 20]
    assert buf.ages().tolist() == [2, 1, 0, 4, 3]
    expected = torch.tensor([decay, 1.0, 1.0, decay ** 2, decay], dtype=torch.float64)
    assert torch.allclose(obj.distribution().double(), expected / expected.sum(), rtol=1e-6)
    snaps = torch.tensor([0, 10, 20, 30])
    assert policy_versions(torch.tensor([0, 5, 10, 29, 30, 31]), snaps).tolist() == [
        1, 1, 2, 3, 4, 4]


def test_state_dict_round_trip():
    obj, buf = _objective(0.9), ReplayBuffer(10, OBS, ACT)
    for updates in (0, 5, 9):
        _add(buf, 2, updates)
        _refit(obj, buf, updates)
    again = _objective(0.9)
    again.load_state_dict(obj.state_dict())
    _refit(again, buf, 9)
    assert torch.allclose(again.fit_weights(), obj.fit_weights())


def test_smoke_run(tmp_path):
    argv = ["train", "--env", "inverted_pendulum", "--objective", "pmac", "--preset", "smoke",
            "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["pmac_policy_versions"].iloc[-1] >= 2
    assert metrics["weight_ess"].iloc[-1] < 1.0  # no longer uniform
    weights = pd.read_csv(tmp_path / "weights.csv")
    last = weights[weights["env_steps"] == weights["env_steps"].max()].sort_values("age_bin")
    assert last["mean_weight"].iloc[0] > last["mean_weight"].iloc[-1]  # newest weigh most
