"""Exact tabular quantities: occupancies by linear solve, the §3 lower bound, the dual's optimum.

These are the ground truth the tests and the derivation notebook compare the library against.
Arrays are NumPy float64: T[s, a, s'], π[s, a], μ0[s], r[s, a].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from tom.objectives.tom import dual_loss, dual_residual, occupancy_weights


@dataclass
class TabularMDP:
    T: np.ndarray  # [S, A, S'] transition probabilities; a row of zeros: (s, a) terminates
    mu0: np.ndarray  # [S] initial-state distribution
    r: np.ndarray  # [S, A] rewards
    gamma: float

    @property
    def n_states(self) -> int:
        return self.T.shape[0]

    @property
    def n_actions(self) -> int:
        return self.T.shape[1]


def random_simplex(rng: np.random.Generator, shape: tuple[int, ...], concentration: float = 1.0
                   ) -> np.ndarray:
    """Dirichlet draws along the last axis (strictly positive, so supports are full)."""
    return rng.dirichlet(np.full(shape[-1], concentration), size=shape[:-1])


def random_mdp(rng: np.random.Generator, n_states: int = 6, n_actions: int = 3,
               gamma: float = 0.9, positive_reward: bool = True,
               terminal_fraction: float = 0.0, deterministic: bool = False) -> TabularMDP:
    """A random MDP with full-support dynamics and (optionally) rewards in (0, 1].

    With ``terminal_fraction > 0`` that fraction of the pairs (s, a) always ends the episode
    (their rows of T are zero), like leaving a MuJoCo task's healthy range: termination is
    a deterministic function of the transition, as in the tasks the library trains on.
    ``deterministic`` sends each (s, a) to one uniformly random next state (the argmax of its
    Dirichlet row, so the other draws are the same), making s' noise-free.
    """
    T = random_simplex(rng, (n_states, n_actions, n_states))
    if deterministic:
        T = np.eye(n_states)[T.argmax(-1)]
    if terminal_fraction > 0:
        T = T * (rng.uniform(size=(n_states, n_actions)) >= terminal_fraction)[:, :, None]
    mu0 = random_simplex(rng, (n_states,))
    r = rng.uniform(0.05, 1.0, (n_states, n_actions)) if positive_reward else \
        rng.normal(size=(n_states, n_actions))
    return TabularMDP(T, mu0, r, gamma)


def occupancy(T: np.ndarray, pi: np.ndarray, mu0: np.ndarray, gamma: float) -> np.ndarray:
    """d^π_T(s,a) = (1−γ) Σ_t γ^t Pr(s_t=s, a_t=a), the unique solution of the flow equations

        d(s',a') = (1−γ) μ0(s') π(a'|s') + γ Σ_{s,a} d(s,a) T(s'|s,a) π(a'|s').

    With termination (substochastic T) the mass Σ d = 1 − E[γ^T] is below one.
    """
    S, A = pi.shape
    P = (T[:, :, :, None] * pi[None, None, :, :]).reshape(S * A, S * A)  # (s,a) -> (s',a')
    p0 = (mu0[:, None] * pi).reshape(S * A)
    d = np.linalg.solve(np.eye(S * A) - gamma * P.T, (1.0 - gamma) * p0)
    return d.reshape(S, A)


def normalised_return(mdp: TabularMDP, pi: np.ndarray, T: np.ndarray | None = None) -> float:
    """J(π, T) = E_{d^π_T}[r] (T defaults to the MDP's own dynamics)."""
    d = occupancy(mdp.T if T is None else T, pi, mdp.mu0, mdp.gamma)
    return float((d * mdp.r).sum())


def transition_occupancy(d: np.ndarray, T: np.ndarray) -> np.ndarray:
    """d(s,a,s') = d(s,a) T(s'|s,a)."""
    return d[:, :, None] * T


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) over all entries (0 log 0 = 0)."""
    mask = p > 0
    return float((p[mask] * (np.log(p[mask]) - np.log(q[mask]))).sum())


def lower_bound(mdp: TabularMDP, pi: np.ndarray, T_model: np.ndarray) -> float:
    """E_{d^π_T̂}[log r] − KL(d^π_T̂(s,a,s') ‖ d^π_T(s,a,s')), which is ≤ log J(π, T) (§3)."""
    d_model = occupancy(T_model, pi, mdp.mu0, mdp.gamma)
    d_real = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma)
    mismatch = kl_divergence(transition_occupancy(d_model, T_model),
                             transition_occupancy(d_real, mdp.T))
    return float((d_model * np.log(mdp.r)).sum()) - mismatch


def action_multisets(n_actions: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every multiset of k draws from n_actions actions, as counts [M, A], and its multinomial
    coefficient k!/Π c_a! [M]: the outcomes of k i.i.d. draws a'_i ~ π up to order, enough for
    the mean of Q(s', a'_i), so expectations over the draws are exact sums over M terms."""
    if k < 1:
        raise ValueError(f"next_action_samples must be >= 1, got {k}")
    counts = np.array([np.bincount(c, minlength=n_actions)
                       for c in itertools.combinations_with_replacement(range(n_actions), k)],
                      dtype=np.float64)
    coef = np.array([math.factorial(k) / math.prod(math.factorial(int(c)) for c in row)
                     for row in counts])
    return counts, coef


def solve_dual(mdp: TabularMDP, pi: np.ndarray, d_replay: np.ndarray, rho: np.ndarray,
               divergence: str = "chi2", max_iter: int = 500,
               next_action_samples: int | None = None) -> np.ndarray:
    """Solve the §4 dual with one-hot features to convergence and return w*(s,a).

    Uses the library's own `dual_residual`, `dual_loss` and `occupancy_weights` (the code
    training uses), with exact expectations over s' and a' in place of samples, and
    L-BFGS in float64 on the table Q(s,a). ``rho`` is any shaping reward [S, A]. Pairs whose
    row of T is zero are terminal: their residual gets done = 1, as in the replay buffer.

    Termination must be deterministic in (s, a). With a per-sample residual the dual
    constrains only the flow into the next state, so a random done flag would let the
    optimum shift weight between an (s, a)'s terminating and continuing samples.

    ``next_action_samples = k`` instead solves what training optimises in expectation: the
    residual of one transition (s, a, s') with V(s') the mean of Q(s', a'_i) over k draws
    a'_i ~ π(s'), f* taken per outcome and averaged exactly over s' ~ T and all multisets of
    the k draws (`action_multisets`). The noise inside f* biases the minimiser, which is what
    this measures; the weights returned are E_{s', a'_1..k}[f*'(e)] per (s, a). With
    stochastic T the sampled s' inside f* biases it too, even as k → ∞ (the ``None``
    path takes E_{s'} inside); with deterministic T only the action draws do.
    """
    S, A = pi.shape
    stay = mdp.T.sum(-1)
    if not np.all(np.isclose(stay, 0.0) | np.isclose(stay, 1.0)):
        raise ValueError("solve_dual needs deterministic termination: each row of T must sum "
                         f"to 0 or 1, got sums in [{stay.min():.3g}, {stay.max():.3g}]")
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    T, pi_t, p_replay = t(mdp.T), t(pi), t(d_replay).reshape(-1)
    done = t(stay < 0.5).reshape(-1)
    p0 = t(mdp.mu0[:, None] * pi).reshape(-1)
    rho_t = t(rho).reshape(-1)
    q = torch.zeros(S * A, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([q], lr=1.0, max_iter=max_iter, tolerance_grad=1e-13,
                            tolerance_change=1e-15, history_size=50,
                            line_search_fn="strong_wolfe")

    if next_action_samples is None:
        p_sample = p_replay

        def residual() -> torch.Tensor:
            v = (pi_t * q.reshape(S, A)).sum(-1)  # V(s') = Σ_a' π(a'|s') Q(s',a')
            # E_{s'~T(·|s,a)} V(s'), exact. A buffer still stores the observation an episode
            # ended in; here it is uniform, and only done = 1 keeps its value out.
            next_v = torch.where(done > 0, v.mean(), (T @ v).reshape(-1))
            return dual_residual(rho_t, q, next_v, done, mdp.gamma)
    else:
        counts, coef = action_multisets(A, next_action_samples)
        # Pr(multiset m | s') = coef_m Π_a π(a|s')^c_ma, then the outcome (s', m) of row (s, a);
        # a terminal row's s' is uniform (only done = 1 keeps its value out, as above).
        p_multi = t(coef[None, :] * np.prod(pi[:, None, :] ** counts[None], axis=-1))  # [S, M]
        T_rows = torch.where(done[:, None] > 0, 1.0 / S, T.reshape(S * A, S))
        outcome_p = (T_rows[:, :, None] * p_multi[None]).reshape(S * A, -1)  # [SA, S·M]
        mean_of = t(counts / next_action_samples)  # [M, A]
        p_sample = p_replay[:, None] * outcome_p

        def residual() -> torch.Tensor:
            next_v = (q.reshape(S, A) @ mean_of.T).reshape(1, -1)  # sampled V(s'), [1, S·M]
            return dual_residual(rho_t[:, None], q[:, None], next_v, done[:, None], mdp.gamma)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = dual_loss(q, residual(), mdp.gamma, divergence, p0=p0, p_replay=p_sample)
        loss.backward()
        return loss

    for _ in range(20):
        opt.step(closure)
    with torch.no_grad():
        if next_action_samples is None:
            return occupancy_weights(residual(), divergence).reshape(S, A).numpy()
        w = (outcome_p * occupancy_weights(residual(), divergence)).sum(-1)  # E_{s',a'}[f*'(e)]
        return w.reshape(S, A).numpy()
