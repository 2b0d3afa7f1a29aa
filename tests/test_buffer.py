"""Replay buffer: wrap-around, recent window, ages, D_0, weighted sampling frequencies."""

import math

import pytest
import torch

from tom.buffer import ReplayBuffer, Transition, WeightedIndices, weighted_indices


def _fill(buf: ReplayBuffer, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        buf.add(torch.full((2,), float(i)), torch.full((1,), -float(i)), float(i),
                torch.full((2,), i + 0.5), float(i % 2), policy_updates=10 * i)


def test_insert_and_read_back_in_order():
    buf = ReplayBuffer(10, 2, 1)
    _fill(buf, 4)
    data = buf.all()
    assert len(buf) == 4
    torch.testing.assert_close(data.reward, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(data.act[:, 0], torch.tensor([0.0, -1.0, -2.0, -3.0]))
    torch.testing.assert_close(data.done, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(buf.ages(), torch.tensor([3, 2, 1, 0]))


def test_wrap_around_keeps_newest_and_ages():
    buf = ReplayBuffer(5, 2, 1)
    _fill(buf, 13)  # 0..12 inserted, 8..12 kept
    assert len(buf) == 5 and buf.inserted == 13
    data, ages = buf.all(), buf.ages()
    assert sorted(data.reward.tolist()) == [8.0, 9.0, 10.0, 11.0, 12.0]
    # Age is 12 - value for every stored transition, wherever its slot is.
    torch.testing.assert_close(ages, (12 - data.reward).long())
    torch.testing.assert_close(buf.collected_at_update(), (10 * data.reward).long())
    recent = buf.recent(3)
    assert recent.reward.tolist() == [10.0, 11.0, 12.0]  # oldest first, across the seam
    mask = buf.recent_mask(3)
    assert sorted(data.reward[mask].tolist()) == [10.0, 11.0, 12.0]
    assert buf.recent(50).reward.tolist() == [8.0, 9.0, 10.0, 11.0, 12.0]


def test_rows_added_one_by_one_are_stored_as_one_batch_of_them():
    """`add`, row by row across the ring's seam, stores what `add_batch` of those rows does,
    bit for bit (float64 inputs rounded to float32 alike), with the same stamps, policy
    update counts and insertion count."""
    g = torch.Generator().manual_seed(0)
    n = 11
    rows = Transition(torch.randn(n, 3, generator=g, dtype=torch.float64),
                      torch.randn(n, 2, generator=g, dtype=torch.float64),
                      torch.randn(n, generator=g, dtype=torch.float64),
                      torch.randn(n, 3, generator=g, dtype=torch.float64),
                      (torch.rand(n, generator=g) < 0.5).double())
    one_by_one, batched = ReplayBuffer(4, 3, 2), ReplayBuffer(4, 3, 2)
    for i in range(n):
        one_by_one.add(rows.obs[i].numpy(), rows.act[i], rows.reward[i].item(),
                       rows.next_obs[i], rows.done[i].item(), policy_updates=7)
    batched.add_batch(rows, policy_updates=7)
    for got, want in zip(one_by_one.all(), batched.all(), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert one_by_one.inserted == batched.inserted == n
    assert torch.equal(one_by_one.ages(), batched.ages())
    assert torch.equal(one_by_one.collected_at_update(), batched.collected_at_update())


def test_add_batch_larger_than_capacity_keeps_the_newest():
    buf = ReplayBuffer(4, 1, 1)
    n = 10
    batch = Transition(torch.arange(n).float()[:, None], torch.zeros(n, 1),
                       torch.arange(n).float(), torch.zeros(n, 1), torch.zeros(n))
    buf.add_batch(batch)
    assert buf.inserted == 10
    assert sorted(buf.all().reward.tolist()) == [6.0, 7.0, 8.0, 9.0]
    assert buf.recent(2).reward.tolist() == [8.0, 9.0]


def test_initial_states_ring():
    buf = ReplayBuffer(10, 2, 1, initial_capacity=3)
    with pytest.raises(RuntimeError, match="no initial states"):
        buf.require_initial_states()
    assert len(buf.initial_states()) == 0
    for i in range(5):
        buf.add_initial_state(torch.full((2,), float(i)))
    assert sorted(buf.initial_states()[:, 0].tolist()) == [2.0, 3.0, 4.0]
    assert torch.equal(buf.require_initial_states(), buf.initial_states())


def test_empty_buffer_and_bad_weights_raise():
    buf = ReplayBuffer(4, 1, 1)
    with pytest.raises(RuntimeError, match="empty"):
        buf.sample(3)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_indices(torch.tensor([1.0, -1.0]), 3)
    with pytest.raises(ValueError, match="not all zero"):
        weighted_indices(torch.zeros(3), 3)


def test_weighted_sampling_frequencies_match_weights():
    """Pearson chi-square goodness of fit with a fixed seed; critical values at p = 0.001."""
    torch.manual_seed(0)
    buf = ReplayBuffer(8, 2, 1)
    _fill(buf, 8)
    weights = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 9.0])
    draws = 200_000
    batch = buf.sample_weighted(draws, weights)
    counts = torch.bincount(batch.reward.long(), minlength=8).double()
    assert counts[0] == 0  # zero weight: never drawn
    expected = draws * weights.double() / weights.sum()
    chi2 = (((counts - expected) ** 2)[1:] / expected[1:]).sum().item()
    assert chi2 < 22.46, chi2  # chi2.ppf(0.999, df=6): 7 nonzero bins − 1
    # And uniform sampling is uniform.
    counts = torch.bincount(buf.sample(draws).reward.long(), minlength=8).double()
    chi2 = ((counts - draws / 8) ** 2 / (draws / 8)).sum().item()
    assert chi2 < 24.32 and math.isfinite(chi2)  # chi2.ppf(0.999, df=7)


def test_weighted_draws_at_the_ends_of_the_range_skip_zero_weight_rows(monkeypatch):
    """A uniform draw of 0 or one that rounds up to the total lands on the first or last row of
    positive weight, not on the zero-weight rows around them; many draws from one prepared set
    of weights follow them like one-off draws."""
    weights = torch.tensor([0.0, 0.0, 2.0, 0.0, 5.0, 1.0, 0.0, 0.0])
    sampler = WeightedIndices(weights)
    for u, row in ((0.0, 2), (1.0, 5)):
        monkeypatch.setattr(torch, "rand", lambda n, u=u, **kw: torch.full((n,), u, **kw))
        assert sampler.draw(3).tolist() == [row] * 3
    monkeypatch.undo()
    torch.manual_seed(1)
    counts = torch.bincount(torch.cat([sampler.draw(1_000) for _ in range(80)]), minlength=8)
    expected = 80_000 * weights.double() / weights.sum()
    support = weights > 0
    assert (counts[~support] == 0).all()
    chi2 = ((counts.double() - expected)[support] ** 2 / expected[support]).sum().item()
    assert chi2 < 13.82, chi2  # chi2.ppf(0.999, df=2)


def test_minibatches_drawn_at_once_are_whole_independent_uniform_rows():
    """`sample_minibatches(count, batch)`: [count, batch, ...] fields whose rows are stored
    transitions (all fields of one row agree), uniform over the buffer, and drawn afresh for
    every minibatch (not one draw repeated)."""
    torch.manual_seed(0)
    buf = ReplayBuffer(8, 2, 1)
    _fill(buf, 8)
    batches = buf.sample_minibatches(5_000, 40)
    assert batches.obs.shape == (5_000, 40, 2) and batches.act.shape == (5_000, 40, 1)
    assert batches.reward.shape == batches.done.shape == (5_000, 40)
    i = batches.reward
    assert torch.equal(batches.obs, i[..., None].expand(-1, -1, 2))
    assert torch.equal(batches.act[..., 0], -i) and torch.equal(batches.next_obs[..., 0], i + 0.5)
    assert torch.equal(batches.done, i.remainder(2))
    counts = torch.bincount(i.long().flatten(), minlength=8).double()
    expected = i.numel() / 8
    assert ((counts - expected) ** 2 / expected).sum().item() < 24.32  # chi2.ppf(0.999, 7)
    same = (i[1:] == i[:-1]).all(1).float().mean().item()
    assert same < 0.01  # identical consecutive minibatches: (1/8)^40 by chance


def test_sample_weighted_rejects_misaligned_weights():
    buf = ReplayBuffer(8, 2, 1)
    _fill(buf, 5)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        buf.sample_weighted(3, torch.ones(8))
