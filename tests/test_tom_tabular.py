"""Exactness of TOM's dual (ALGORITHM.md §4) and the lower bound (§3) on random tabular MDPs.

Ground truth comes from linear solves of the Bellman flow equations (tom.tabular.occupancy);
the dual is solved with the same loss and weight functions that training uses.
"""

import numpy as np
import pytest
import torch

from tom.objectives.tom import dual_residual, f_star, f_star_prime, occupancy_weights
from tom.tabular import (
    action_multisets,
    kl_divergence,
    lower_bound,
    normalised_return,
    occupancy,
    random_mdp,
    random_simplex,
    solve_dual,
)


def test_occupancy_matches_monte_carlo_sum():
    """The linear solve equals the truncated series (1−γ) Σ_t γ^t Pr(s_t, a_t)."""
    rng = np.random.default_rng(0)
    mdp = random_mdp(rng, 5, 2, gamma=0.8)
    pi = random_simplex(rng, (5, 2))
    d, p_s, series = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma), mdp.mu0.copy(), np.zeros((5, 2))
    for t in range(400):
        series += (1 - mdp.gamma) * mdp.gamma**t * p_s[:, None] * pi
        p_s = np.einsum("s,sa,sat->t", p_s, pi, mdp.T)
    np.testing.assert_allclose(d, series, atol=1e-12)
    assert d.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("divergence", ["chi2", "kl"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_recovers_exact_occupancy_ratio(divergence, seed):
    """w* = f*'(e_Q*) equals d^π_T / d^R to 1e-4 for an arbitrary shaping reward ρ."""
    rng = np.random.default_rng(seed)
    S, A = 7, 3
    mdp = random_mdp(rng, S, A, gamma=0.9)
    pi = random_simplex(rng, (S, A))
    d_replay = random_simplex(rng, (S * A,)).reshape(S, A)
    rho = rng.normal(size=(S, A))  # arbitrary: the flow constraints pin d down regardless
    exact = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma) / d_replay
    w = solve_dual(mdp, pi, d_replay, rho, divergence)
    rel = np.abs(w - exact) / exact
    assert rel.max() < 1e-4, f"max relative error {rel.max():.2e}"


@pytest.mark.parametrize("divergence", ["chi2", "kl"])
@pytest.mark.parametrize("seed", [0, 1])
def test_dual_recovers_ratio_with_termination(divergence, seed):
    """Episodes that end (done = 1 rows, as in Hopper) keep w* = d^π_T/d^R exact, and the
    replay mean of w is Σ d^π = 1 − E[γ^T] < 1, not 1: on terminating tasks the logged
    weight mean sits below one at the optimum."""
    rng = np.random.default_rng(10 + seed)
    S, A = 6, 2
    mdp = random_mdp(rng, S, A, gamma=0.95, terminal_fraction=0.25)
    pi = random_simplex(rng, (S, A))
    d_replay = random_simplex(rng, (S * A,)).reshape(S, A)
    rho = rng.normal(size=(S, A))
    d_pi = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma)
    w = solve_dual(mdp, pi, d_replay, rho, divergence)
    rel = np.abs(w - d_pi / d_replay) / (d_pi / d_replay)
    assert rel.max() < 1e-4, f"max relative error {rel.max():.2e}"
    assert (d_replay * w).sum() == pytest.approx(d_pi.sum(), rel=1e-6)
    assert d_pi.sum() < 0.9  # termination removes mass: the weight mean is well below one


def _sampled_setup(seed: int, deterministic: bool, one_hot_pi: bool = False,
                   terminal_fraction: float = 0.0):
    """A 6×3 MDP, π, d^R and ρ for the k-sample dual, and the exact ratio d^π_T/d^R."""
    rng = np.random.default_rng(seed)
    S, A = 6, 3
    mdp = random_mdp(rng, S, A, gamma=0.9, deterministic=deterministic,
                     terminal_fraction=terminal_fraction)
    pi = np.eye(A)[rng.integers(A, size=S)] if one_hot_pi else \
        random_simplex(rng, (S, A), concentration=3.0)
    d_replay = random_simplex(rng, (S * A,), concentration=3.0).reshape(S, A)
    rho = rng.normal(size=(S, A))
    return mdp, pi, d_replay, rho, occupancy(mdp.T, pi, mdp.mu0, mdp.gamma) / d_replay


def test_action_multisets_give_exact_sample_mean_moments():
    """The k = 8 multisets of 3 actions (45 of them) weighted by their multinomial
    probabilities give the k-sample mean of Q its exact law: total mass 1, mean E_π Q,
    variance Var_π(Q)/k."""
    rng = np.random.default_rng(0)
    counts, coef = action_multisets(3, 8)
    assert counts.shape == (45, 3) and np.all(counts.sum(-1) == 8)
    p, q = random_simplex(rng, (3,)), rng.normal(size=3)
    prob = coef * np.prod(p ** counts, axis=-1)
    mean = counts @ q / 8
    assert prob.sum() == pytest.approx(1.0)
    assert prob @ mean == pytest.approx(p @ q)
    assert prob @ (mean - p @ q) ** 2 == pytest.approx((p @ (q - p @ q) ** 2) / 8)
    with pytest.raises(ValueError, match="next_action_samples"):
        action_multisets(3, 0)


def test_sampled_next_action_bias_shrinks_with_samples():
    """One sampled a' inside f* biases the weights; eight shrink the bias several-fold.

    Deterministic T, so the action draws are the only noise inside f* and k → ∞ recovers
    d^π_T/d^R. Measured (χ², seed 0): max relative error 1.27 at k = 1 (mean 0.35), 0.285 at
    k = 8 (mean 0.088), a ratio of 0.225, asserted ≤ 1/3 (1.5× margin); the exact path
    stays at 2e-7. Over seeds 0–19 of this setup the k = 8 / k = 1 ratio ranged 0.08–0.43
    (median 0.21): several-fold typically, not for every MDP. With the k-sample path made
    to use the exact V (a mutant), k = 1 gives 2e-7 and the first assert fails.
    """
    mdp, pi, d_replay, rho, exact = _sampled_setup(0, deterministic=True)
    err = {}
    for k in (None, 1, 8):
        w = solve_dual(mdp, pi, d_replay, rho, "chi2", next_action_samples=k)
        err[k] = (np.abs(w - exact) / exact).max()
    assert err[1] > 0.5, f"k=1 max relative error only {err[1]:.2e}"
    assert err[8] <= err[1] / 3, f"k=8 {err[8]:.3f} vs k=1 {err[1]:.3f}"
    assert err[None] < 1e-4, f"exact path max relative error {err[None]:.2e}"


@pytest.mark.parametrize("divergence", ["chi2", "kl"])
def test_sampled_path_matches_exact_path_without_noise(divergence):
    """With a deterministic π and deterministic T (and terminal pairs) the k-sample objective
    is the exact one, so both paths give d^π_T/d^R (the ratio is 0 on actions π never
    takes; π takes a terminal action in three states). Measured gap between the paths:
    1e-16 (χ²), 2e-8 (KL)."""
    mdp, pi, d_replay, rho, exact = _sampled_setup(1, deterministic=True, one_hot_pi=True,
                                                   terminal_fraction=0.25)
    assert (mdp.T.sum(-1) == 0).any()
    w = solve_dual(mdp, pi, d_replay, rho, divergence, next_action_samples=4)
    np.testing.assert_allclose(w, solve_dual(mdp, pi, d_replay, rho, divergence),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, exact, rtol=1e-4, atol=1e-6)


def test_sampled_next_state_biases_weights_without_action_noise():
    """A sampled s' inside f* biases the per-transition dual too: with stochastic T and a
    deterministic π (no action noise at all) the weights miss d^π_T/d^R by far more than the
    exact path's 1e-4 (measured: max absolute error 2.3 on ratios up to 3.4), so no
    number of action samples alone makes training's dual exact on stochastic dynamics."""
    mdp, pi, d_replay, rho, exact = _sampled_setup(1, deterministic=False, one_hot_pi=True,
                                                   terminal_fraction=0.25)
    w = solve_dual(mdp, pi, d_replay, rho, "chi2", next_action_samples=1)
    assert np.abs(w - exact).max() > 0.1
    np.testing.assert_allclose(solve_dual(mdp, pi, d_replay, rho, "chi2"), exact,
                               rtol=1e-4, atol=1e-6)


def test_dual_weights_depend_on_policy():
    """Guard against a trivially 'exact' solver: a different π gives different weights."""
    rng = np.random.default_rng(3)
    mdp = random_mdp(rng, 6, 2)
    d_replay = random_simplex(rng, (12,)).reshape(6, 2)
    rho = np.zeros((6, 2))
    w1 = solve_dual(mdp, random_simplex(rng, (6, 2)), d_replay, rho)
    w2 = solve_dual(mdp, random_simplex(rng, (6, 2)), d_replay, rho)
    assert np.abs(w1 - w2).max() > 1e-2


def test_conjugates_closed_forms():
    y = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    chi = f_star(y, "chi2")
    expected = torch.where(y >= -1, 0.5 * y**2 + y, torch.full_like(y, -0.5))
    torch.testing.assert_close(chi, expected)  # equals the paper's ½y²+y wherever y ≥ −1
    (grad,) = torch.autograd.grad(chi.sum(), y)
    torch.testing.assert_close(grad, f_star_prime(y, "chi2"))
    kl = f_star(y, "kl")
    torch.testing.assert_close(kl, torch.exp(y - 1))
    (grad,) = torch.autograd.grad(kl.sum(), y)
    torch.testing.assert_close(grad, f_star_prime(y, "kl"))
    # Fenchel–Young: f*(y) = sup_x xy − f(x), attained at x = f*'(y); check χ² on a grid.
    x = torch.linspace(0, 5, 50001, dtype=torch.float64)
    f = 0.5 * (x - 1) ** 2
    sup = (x[None, :] * y.detach()[:, None] - f[None, :]).max(dim=1).values
    torch.testing.assert_close(sup, chi.detach(), atol=1e-6, rtol=0)


def test_weights_are_clipped_and_residual_masks_done():
    e = torch.tensor([-2.0, 0.0, 50.0])
    torch.testing.assert_close(occupancy_weights(e, "chi2", w_max=10.0),
                               torch.tensor([0.0, 1.0, 10.0]))
    res = dual_residual(torch.ones(2), torch.zeros(2), torch.full((2,), 5.0),
                        torch.tensor([0.0, 1.0]), 0.5)
    torch.testing.assert_close(res, torch.tensor([3.5, 1.0]))


@pytest.mark.parametrize("seed", range(20))
def test_lower_bound_holds(seed):
    """log J(π,T) ≥ E_{d^π_T̂}[log r] − KL(d^π_T̂(s,a,s') ‖ d^π_T(s,a,s')) for random π, T̂."""
    rng = np.random.default_rng(seed)
    mdp = random_mdp(rng, 6, 3, gamma=float(rng.uniform(0.5, 0.99)))
    pi = random_simplex(rng, (6, 3), concentration=0.5)
    T_model = random_simplex(rng, (6, 3, 6), concentration=0.5)
    assert np.log(normalised_return(mdp, pi)) >= lower_bound(mdp, pi, T_model) - 1e-12


def test_lower_bound_tight_for_true_model_with_constant_reward():
    """With T̂ = T the KL term vanishes; with constant r Jensen is tight, so bound = log J."""
    rng = np.random.default_rng(0)
    mdp = random_mdp(rng, 5, 2)
    mdp.r[:] = 0.3
    pi = random_simplex(rng, (5, 2))
    assert lower_bound(mdp, pi, mdp.T) == pytest.approx(np.log(normalised_return(mdp, pi)))
    assert kl_divergence(mdp.T, mdp.T) == 0.0


def test_solve_dual_rejects_random_termination():
    rng = np.random.default_rng(0)
    mdp = random_mdp(rng, 4, 2)
    mdp.T[0, 0] *= 0.5  # (s0, a0) ends the episode with probability ½
    with pytest.raises(ValueError, match="deterministic termination"):
        solve_dual(mdp, random_simplex(rng, (4, 2)), np.full((4, 2), 1 / 8), np.zeros((4, 2)))
