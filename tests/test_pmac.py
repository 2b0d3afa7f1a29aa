"""PMAC: the TOM code's per-block rule against an incremental reference, the per-refit variant,
normalisation without underflow, wrap-around, end to end."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tom.buffer import ReplayBuffer
from tom.cli import main
from tom.config import resolve
from tom.objectives import RefitContext, make_objective
from tom.objectives.pmac import (
    PMACObjective,
    block_distribution,
    pmac_distribution,
    policy_versions,
)

OBS, ACT = 3, 1


def _objective(decay: float, version: str = "refit") -> PMACObjective:
    cfg = resolve("inverted_pendulum", "pmac", preset="smoke",
                  overrides={"pmac.decay": decay, "pmac.version": version})
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


def _distribution(obj: PMACObjective) -> torch.Tensor:
    p = obj.distribution()
    assert p is not None
    return p.double()


class LiveReference:
    """The TOM code's incremental rule, one push at a time, on a plain list of probabilities."""

    def __init__(self, decay: float) -> None:
        self.decay, self.p = decay, []
        self.any_block, self.pending, self.start = False, False, 0  # start: current version

    def block(self) -> None:
        self.any_block = self.pending = True

    def push(self) -> None:
        if self.pending:  # the first transition after a block starts a version
            self.p = [q * self.decay for q in self.p]
            self.start, self.pending = len(self.p), False
        self.p.append(0.0)
        if not self.any_block:  # version 0 only: all share the mass equally
            self.p = [1.0 / len(self.p)] * len(self.p)
        else:
            n = len(self.p) - self.start
            self.p[self.start:] = [(1.0 - self.decay) / n] * n
        total = sum(self.p)
        self.p = [q / total for q in self.p]


@pytest.mark.parametrize("seed,init", [(0, 10), (1, 1), (2, 37)])
def test_block_matches_incremental_reference(seed, init):
    rng, decay = random.Random(seed), 0.9
    obj, buf, ref = _objective(decay, "block"), ReplayBuffer(1000, OBS, ACT), LiveReference(decay)
    updates, checked = 0, 0
    for step in range(300):
        _add(buf, 1, updates)
        ref.push()
        gap_done = step + 1 >= init and rng.random() < 1 / rng.randint(1, 6)
        if gap_done:  # at most one block between two transitions, as in the loop
            updates += 20
            ref.block()
        if step in (0, init - 1, init, 50, 51, 150, 299) or (gap_done and step % 37 == 0):
            _refit(obj, buf, updates)  # also right after a block: no version started yet
            expected = torch.tensor(ref.p, dtype=torch.float64)
            assert torch.allclose(_distribution(obj), expected, rtol=1e-12, atol=0)
            checked += 1
    assert checked >= 7 and obj.stats()["pmac_policy_versions"] > 30


def test_block_weight_is_decay_to_the_k_after_k_blocks():
    decay, blocks, per_version = 0.8, 6, 3
    obj, buf = _objective(decay, "block"), ReplayBuffer(100, OBS, ACT)
    for v in range(blocks + 1):  # version 0 before any block, then one per block
        _add(buf, per_version, 20 * v)
    _refit(obj, buf, 20 * blocks)
    p = _distribution(obj)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    newest = p[-per_version:]
    assert torch.allclose(newest, torch.full_like(newest, (1 - decay) / per_version), rtol=1e-12)
    for v in range(1, blocks + 1):
        k = blocks - v
        rows = p[v * per_version:(v + 1) * per_version]
        assert torch.allclose(rows / newest, torch.full_like(rows, decay ** k), rtol=1e-12)
    first = p[:per_version]  # all older mass: decay^blocks in total
    assert torch.allclose(first.sum(), torch.tensor(decay ** blocks, dtype=p.dtype), rtol=1e-12)
    w = obj.fit_weights()
    assert w.dtype == torch.float32 and w.double().mean().item() == pytest.approx(1.0, rel=1e-6)
    assert obj.stats() == {"pmac_policy_versions": blocks + 1.0,
                           "pmac_max_staleness": float(blocks)}


def test_block_no_underflow_at_paper_scale():
    decay, versions = 0.9, 75_000  # ~300k blocks' worth of versions in a 1M buffer
    collected = torch.cat([torch.zeros(4, dtype=torch.long), 20 * torch.arange(1, versions)])
    p, version = block_distribution(collected, decay)
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert p[-1].item() == pytest.approx(1 - decay, rel=1e-12)
    assert p[-2].item() == pytest.approx(decay * (1 - decay), rel=1e-12)
    assert (p[:4] == 0).all() and version[-1].item() == versions - 1  # d^V: below float64


def _closed_form(collected: list[int], decay: float) -> torch.Tensor:
    """m_v / n_v per row from the description, without tensors or log space."""
    counts = sorted(set(collected))
    newest = len(counts) - 1
    mass = [decay ** newest if c == 0 else (1 - decay) * decay ** (newest - v)
            for v, c in enumerate(counts)]
    p = [mass[counts.index(c)] / collected.count(c) for c in collected]
    return torch.tensor(p, dtype=torch.float64) / sum(p)


def test_block_wraparound_depends_on_versions_not_slots():
    decay = 0.7
    obj, buf = _objective(decay, "block"), ReplayBuffer(9, OBS, ACT)
    sizes = (5, 2, 3, 2)  # versions at update counts 0, 20, 40, 60: 12 rows into 9 slots
    for v, n in enumerate(sizes):
        _add(buf, n, 20 * v)
    _refit(obj, buf, 60)
    collected = buf.collected_at_update().tolist()
    assert collected == [40, 60, 60, 0, 0, 20, 20, 40, 40]  # 3 rows of version 0 evicted
    p = _distribution(obj)
    assert torch.allclose(p, _closed_form(collected, decay), rtol=1e-12, atol=0)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    # The same surviving rows stored without wrap-around get the same weights, oldest first.
    flat, again = ReplayBuffer(9, OBS, ACT), _objective(decay, "block")
    for c in sorted(collected):
        _add(flat, 1, c)
    _refit(again, flat, 60)
    oldest_first = torch.argsort(buf.ages(), descending=True)
    assert torch.allclose(p[oldest_first], _distribution(again), rtol=1e-12, atol=0)
    # Evict version 0 entirely: no row holds "all older mass" any more.
    _add(buf, 3, 80)
    _refit(obj, buf, 80)
    collected = buf.collected_at_update().tolist()
    assert 0 not in collected
    assert torch.allclose(_distribution(obj), _closed_form(collected, decay), rtol=1e-12,
                          atol=0)


@pytest.mark.parametrize("version,expected", [("block", 20.0), ("refit", 3.0)])
def test_versions_advance_with_sac_blocks_not_refits(version, expected):
    decay = 0.9
    obj, buf = _objective(decay, version), ReplayBuffer(100, OBS, ACT)
    _add(buf, 5, 0)
    _refit(obj, buf, 0)
    for block in range(1, 21):  # as in the loop: a block, a refit every tenth, then real steps
        if block % 10 == 0:
            _refit(obj, buf, 20 * block)
        if block < 20:
            _add(buf, 2, 20 * block)
    assert obj.stats()["pmac_policy_versions"] == expected
    p = _distribution(obj)
    if version == "block":  # 19 blocks with data after them: oldest vs newest post-block rows
        assert (p[5] / p[-1]).item() == pytest.approx(decay ** 18, rel=1e-12)
    else:  # two refit rounds: rows within one round weigh the same, the older round decay less
        assert torch.allclose(p[:23], p[0].expand(23)) and torch.allclose(p[23:], p[-1].expand(20))
        assert (p[0] / p[-1]).item() == pytest.approx(decay, rel=1e-6)


def test_block_rejects_decay_one():
    with pytest.raises(ValueError, match="no mass"):
        _objective(1.0, "block")


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
