"""TOM's training path (sampled dual, MLP Q, Adam) against exact occupancy ratios.

With deterministic dynamics and a deterministic policy, every sampled residual equals its
expectation, so the minimiser of the training loss over the buffer is the exact dual optimum:
the reweighted buffer w·d^R must equal the policy's occupancy d^π_T(s,a) whatever the shaping
reward. (The binary reward differs between recent and older copies of the same transition,
so only the mean weight over a pair's copies is pinned down; that is what is compared.)
"""

import numpy as np
import pytest
import torch

from tom.buffer import ReplayBuffer
from tom.config import resolve
from tom.objectives import RefitContext, make_objective
from tom.tabular import occupancy

S, A = 5, 2


class TabularPolicy:
    """Deterministic policy on one-hot states, actions one-hot: stands in for the SAC agent."""

    def __init__(self, choice: np.ndarray) -> None:
        self.choice = torch.as_tensor(choice)

    def sample(self, obs: torch.Tensor):
        a = torch.nn.functional.one_hot(self.choice[obs.argmax(-1)], A).float()
        return a, torch.zeros(len(obs))


def _chain_mdp():
    rng = np.random.default_rng(0)
    nxt = rng.integers(0, S, size=(S, A))  # deterministic T(s'|s,a)
    T = np.zeros((S, A, S))
    T[np.arange(S)[:, None], np.arange(A)[None, :], nxt] = 1.0
    mu0 = np.full(S, 1.0 / S)
    choice = rng.integers(0, A, size=S)
    pi = np.eye(A)[choice]
    return nxt, T, mu0, choice, pi


@pytest.mark.parametrize("objective", ["tom-nodisc", "tom"])
def test_training_path_recovers_occupancy_ratio(objective):
    torch.manual_seed(0)
    nxt, T, mu0, choice, pi = _chain_mdp()
    gamma = 0.8
    cfg = resolve("inverted_pendulum", objective, preset="smoke", overrides=[
        f"sac.gamma={gamma}", "tom.recent_window=20", "tom.dual_steps=2000",
        "tom.dual_lr=3e-3", "tom.dual_weight_decay=0", "tom.dual_hidden=64",
        "tom.dual_batch=2048", "tom.disc_passes=5", "tom.w_max=100"])
    # Replay distribution d^R: every (s, a) pair, some more often than others.
    counts = np.random.default_rng(1).integers(2, 6, size=(S, A))
    buf = ReplayBuffer(int(counts.sum()), S, A)
    eye_s, eye_a = torch.eye(S), torch.eye(A)
    for s in range(S):
        for a in range(A):
            for _ in range(counts[s, a]):
                buf.add(eye_s[s], eye_a[a], 1.0, eye_s[nxt[s, a]], 0.0)
    for s in range(S):
        buf.add_initial_state(eye_s[s])  # D_0 uniform, as mu0
    obj = make_objective(cfg, S, A)
    obj.update(RefitContext(buf, TabularPolicy(choice), env_steps=len(buf), learner_steps=10**6))
    w = obj.fit_weights()
    d_pi = occupancy(T, pi, mu0, gamma)
    d_replay = counts / counts.sum()
    data = buf.all()
    pair = (data.obs.argmax(-1) * A + data.act.argmax(-1)).long()
    mean_w = torch.zeros(S * A).index_add_(0, pair, w) / torch.as_tensor(counts.reshape(-1))
    exact = torch.as_tensor((d_pi / d_replay).reshape(-1), dtype=torch.float32)
    # Off-policy actions have zero occupancy; on-policy ones the exact ratio (about 0.7 to 2.6).
    # The tolerance is Adam's final-iterate noise (about 8 %); uniform weights miss by >= 1.
    assert torch.allclose(mean_w, exact, rtol=0.1, atol=0.02), torch.stack([mean_w, exact], 1)
    # The weights reweight the buffer into the policy's occupancy: E_R[w] = 1.
    assert w.mean().item() == pytest.approx(1.0, abs=0.05)
    # w_max = 100 does not bind here: rollout starts and fit use the same weights.
    assert torch.equal(obj.start_weights(), w)


def test_tom_fits_like_mle_until_recent_window_is_learner_data():
    cfg = resolve("inverted_pendulum", "tom", preset="smoke")
    obj = make_objective(cfg, S, A)
    buf = ReplayBuffer(10, S, A)
    obj.update(RefitContext(buf, None, env_steps=500, learner_steps=cfg.tom.recent_window - 1))
    assert obj.fit_weights() is None and obj.start_weights() is None
