"""Preallocated tensor replay buffer: O(1) insert, uniform and weighted sampling, ages, D_0.

The buffer knows nothing about the algorithm. It stores transitions in a ring of tensors on
one device, remembers when each was inserted (so objectives can ask for ages and the recent
window), and keeps the initial states of real episodes (D_0) in a ring of its own.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Transition(NamedTuple):
    """A batch of transitions. ``done`` is 1.0 where the episode terminated (not truncated)."""

    obs: Tensor  # [B, obs_dim]
    act: Tensor  # [B, act_dim]
    reward: Tensor  # [B]
    next_obs: Tensor  # [B, obs_dim]
    done: Tensor  # [B], float 0/1

    @property
    def size(self) -> int:
        """Number of transitions (``len()`` stays the tuple's length, 5, as NamedTuple needs)."""
        return self.obs.shape[0]

    def index(self, idx: Tensor | slice) -> Transition:
        return Transition(*(t[idx] for t in self))

    def to(self, device: torch.device | str) -> Transition:
        return Transition(*(t.to(device) for t in self))

    @staticmethod
    def cat(parts: list[Transition]) -> Transition:
        return Transition(*(torch.cat(ts) for ts in zip(*parts, strict=True)))


class WeightedIndices:
    """Row indices drawn with replacement, with probability proportional to fixed
    ``weights``, for many draws from one set of weights (a model fit's minibatches).

    The cumulative weights are summed once, in float64, and a draw is one binary search per
    index, O(num · log n): `torch.multinomial` sums all n weights again at every call, so a
    model-fit step's draw grew with the buffer (256 rows on 2 CPU threads: 40 µs from 18 000
    rows and 105 µs from 90 000; prepared, 21 and 28 µs). Uses the global torch RNG.
    ``check=False`` skips the check of the values (a host read on a GPU), for callers that
    checked them already.
    """

    def __init__(self, weights: Tensor, check: bool = True) -> None:
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError("weights must be a non-empty 1-d tensor, "
                             f"got shape {tuple(weights.shape)}")
        if check:
            total = weights.sum()
            if not torch.isfinite(total) or total <= 0 or (weights < 0).any():
                raise ValueError("weights must be finite, non-negative and not all zero")
        self.weights = weights
        self._cumulative = weights.double().cumsum(0)
        # The last row of positive weight: a draw rounding up to the total stops there, not
        # on zero-weight rows after it (on the device: no host read).
        self._last = len(weights) - 1 - (weights.flip(0) > 0).int().argmax()

    def draw(self, num: int) -> Tensor:
        """``num`` indices [num]."""
        u = torch.rand(num, dtype=torch.float64, device=self.weights.device)
        # The first row whose cumulative weight exceeds u·total: row i with probability w_i / Σ w.
        idx = torch.searchsorted(self._cumulative, u * self._cumulative[-1], right=True)
        return torch.minimum(idx, self._last)


def weighted_indices(weights: Tensor, num: int, check: bool = True) -> Tensor:
    """Draw ``num`` indices with replacement, with probability proportional to ``weights``.

    Shared by every weighted draw (buffer sampling, model-fit resampling, rollout starts), so
    all of them agree on what "proportional to w" means (`WeightedIndices`). Uses the global
    torch RNG. ``check=False`` skips the check of the values (a host read on a GPU), for
    callers that checked them once for many draws.
    """
    return WeightedIndices(weights, check).draw(num)


class ReplayBuffer:
    """Ring buffer of transitions on ``device``; the newest ``capacity`` are kept."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int,
                 device: torch.device | str = "cpu", initial_capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.device = capacity, torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        self._obs = torch.zeros(capacity, obs_dim, **f32)
        self._act = torch.zeros(capacity, act_dim, **f32)
        self._reward = torch.zeros(capacity, **f32)
        self._next_obs = torch.zeros(capacity, obs_dim, **f32)
        self._done = torch.zeros(capacity, **f32)
        # Insertion counter of each slot: age = inserted - stamp - 1 (0 for the newest).
        self._stamp = torch.zeros(capacity, dtype=torch.long, device=self.device)
        # Policy-update count when each transition was collected (PMAC-style recency).
        self._updates = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self._init = torch.zeros(initial_capacity, obs_dim, **f32)
        self.inserted = 0  # total transitions ever added
        self.initial_inserted = 0

    def __len__(self) -> int:
        return min(self.inserted, self.capacity)

    # -- writing ---------------------------------------------------------------------------

    def add(self, obs: Tensor, act: Tensor, reward: Tensor | float, next_obs: Tensor,
            done: Tensor | float, policy_updates: int = 0) -> None:
        """Insert one transition (a single row); overwrites the oldest when full.

        What `add_batch` stores for that row, written in place at a slot computed on the host:
        a run adds a row every real step, and on a GPU this is 3 copies and 4 fills, none of
        which waits for the GPU where the tensors are already there (the batch path took 12
        kernels and 3 waiting copies from the host: index tensors, conversions)."""
        slot = self.inserted % self.capacity
        for store, value in ((self._obs, obs), (self._act, act), (self._next_obs, next_obs)):
            store[slot].copy_(torch.as_tensor(value).reshape(-1))
        self._reward[slot].fill_(float(reward))  # a fill takes the number, not a host tensor
        self._done[slot].fill_(float(done))
        self._stamp[slot].fill_(self.inserted)
        self._updates[slot].fill_(policy_updates)
        self.inserted += 1

    def add_batch(self, batch: Transition, policy_updates: int = 0) -> None:
        """Insert a batch in order (the last row becomes the newest)."""
        n = batch.size
        if n > self.capacity:  # only the newest `capacity` rows would survive
            batch = batch.index(slice(n - self.capacity, n))
            self.inserted += n - self.capacity
            n = self.capacity
        slots = (self.inserted + torch.arange(n, device=self.device)) % self.capacity
        for store, values in zip(self._stores(), batch, strict=True):
            store[slots] = values.to(self.device, torch.float32)
        self._stamp[slots] = self.inserted + torch.arange(n, device=self.device)
        self._updates[slots] = policy_updates
        self.inserted += n

    def add_initial_state(self, obs: Tensor) -> None:
        """Record the first observation of a real episode (a sample of D_0)."""
        slot = self.initial_inserted % self._init.shape[0]
        self._init[slot] = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self.initial_inserted += 1

    def _stores(self) -> tuple[Tensor, ...]:
        return self._obs, self._act, self._reward, self._next_obs, self._done

    # -- reading ---------------------------------------------------------------------------

    def get(self, idx: Tensor) -> Transition:
        """Transitions at storage slots ``idx`` (slots in [0, len))."""
        return Transition(*(store[idx] for store in self._stores()))

    def all(self) -> Transition:
        """Every stored transition, in storage order (aligned with `ages` and weights)."""
        n = len(self)
        return Transition(*(store[:n] for store in self._stores()))

    def sample(self, batch_size: int) -> Transition:
        """Uniform minibatch with replacement."""
        self._require_data()
        return self.get(torch.randint(len(self), (batch_size,), device=self.device))

    def sample_minibatches(self, count: int, batch_size: int) -> Transition:
        """``count`` uniform minibatches with replacement, drawn at once: fields
        [count, batch_size, ...] (one index draw and one gather instead of ``count``)."""
        self._require_data()
        return self.get(torch.randint(len(self), (count, batch_size), device=self.device))

    def sample_weighted(self, batch_size: int, weights: Tensor) -> Transition:
        """Minibatch drawn with probability proportional to ``weights`` (aligned with `all`)."""
        self._require_data()
        if weights.shape != (len(self),):
            raise ValueError(f"weights must have shape ({len(self)},), got {tuple(weights.shape)}")
        return self.get(weighted_indices(weights.to(self.device), batch_size))

    def ages(self) -> Tensor:
        """Insertions since each stored transition (0 = newest), aligned with `all`."""
        return self.inserted - 1 - self._stamp[: len(self)]

    def collected_at_update(self) -> Tensor:
        """Policy-update count when each stored transition was collected, aligned with `all`."""
        return self._updates[: len(self)]

    def recent_mask(self, n: int) -> Tensor:
        """Boolean mask (aligned with `all`) of the ``n`` newest transitions."""
        return self.ages() < n

    def recent(self, n: int) -> Transition:
        """The ``n`` newest transitions (fewer if the buffer holds fewer), oldest first."""
        n = min(n, len(self))
        slots = (self.inserted - n + torch.arange(n, device=self.device)) % self.capacity
        return self.get(slots)

    def initial_states(self) -> Tensor:
        """All recorded initial observations of real episodes (D_0)."""
        return self._init[: min(self.initial_inserted, self._init.shape[0])]

    def require_initial_states(self) -> Tensor:
        """`initial_states`, or a clear error before any compute where none are recorded yet
        (TOM's dual draws s0 from them)."""
        states = self.initial_states()
        if len(states) == 0:
            raise RuntimeError("no initial states recorded yet (call add_initial_state)")
        return states

    def _require_data(self) -> None:
        if len(self) == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor | int]:
        """The stored rows only (a buffer early in a run is mostly empty), plus the counters.

        Copies, not views: torch.save writes a view's whole storage, the empty rows too."""
        n, m = len(self), min(self.initial_inserted, self._init.shape[0])
        rows = {"obs": self._obs, "act": self._act, "reward": self._reward,
                "next_obs": self._next_obs, "done": self._done, "stamp": self._stamp,
                "updates": self._updates}
        return {**{name: store[:n].clone() for name, store in rows.items()},
                "init": self._init[:m].clone(), "inserted": self.inserted,
                "initial_inserted": self.initial_inserted}

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        """Restore a `state_dict` into a buffer of the same capacity and dimensions."""
        n = state["obs"].shape[0]
        if n > self.capacity or state["obs"].shape[1:] != self._obs.shape[1:]:
            raise ValueError(f"buffer state of shape {tuple(state['obs'].shape)} does not fit "
                             f"a buffer of shape {tuple(self._obs.shape)}")
        for name in ("obs", "act", "reward", "next_obs", "done", "stamp", "updates"):
            getattr(self, f"_{name}")[:n] = state[name]
        self._init[: state["init"].shape[0]] = state["init"]
        self.inserted = int(state["inserted"])
        self.initial_inserted = int(state["initial_inserted"])
