"""Bias of TOM's dual weights from sampling a' ~ π(s') inside f* (not a test; prints a table).

Training estimates V(s') by the mean of Q(s', a'_i) over k = ``tom.next_action_samples``
draws, so the noise sits inside the convex conjugate and biases the dual's minimiser. This
solves the expected k-sample χ² dual exactly on small random MDPs (`tom.tabular.solve_dual`
with ``next_action_samples=k``: all multisets of draws enumerated, no Monte Carlo) and prints,
against the exact ratio d^π_T/d^R:
  - the max and mean relative error of the expected weights E[f*'(e) | s, a];
  - their normalised effective sample size (E_R w)²/E_R[w²] under d^R (the (Σw)²/(n Σw²) of
    n draws from R, in expectation), beside the exact ratio's.
``k = exact`` is the exact-expectation dual. Deterministic T isolates the action noise; with
stochastic T the sampled s' inside f* leaves a bias that no k removes.

    python benchmarks/next_action_samples.py [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np

from tom.tabular import occupancy, random_mdp, random_simplex, solve_dual

KS = (1, 2, 4, 8, 16)


def ess(w: np.ndarray, d_replay: np.ndarray) -> float:
    """Normalised ESS (E_R w)² / E_R[w²] of weights w under d^R, in (0, 1]."""
    return float((d_replay * w).sum() ** 2 / (d_replay * w**2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="random MDPs per dynamics kind")
    args = parser.parse_args()
    S, A = 6, 3
    print(f"chi2 dual, S={S}, A={A}, gamma=0.9, pi ~ Dir(3), d^R ~ Dir(3), rho ~ N(0,1)")
    print(f"{'T':>13} {'seed':>4} {'k':>5} {'max rel':>8} {'mean rel':>8} {'ESS w':>6} "
          f"{'ESS exact':>9}")
    for deterministic in (True, False):
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            mdp = random_mdp(rng, S, A, gamma=0.9, deterministic=deterministic)
            pi = random_simplex(rng, (S, A), concentration=3.0)
            d_replay = random_simplex(rng, (S * A,), concentration=3.0).reshape(S, A)
            rho = rng.normal(size=(S, A))
            exact = occupancy(mdp.T, pi, mdp.mu0, mdp.gamma) / d_replay
            for k in (*KS, None):
                w = solve_dual(mdp, pi, d_replay, rho, "chi2", next_action_samples=k)
                rel = np.abs(w - exact) / exact
                kind = "deterministic" if deterministic else "stochastic"
                print(f"{kind:>13} {seed:>4} {k or 'exact':>5} {rel.max():8.3f} "
                      f"{rel.mean():8.3f} {ess(w, d_replay):6.3f} {ess(exact, d_replay):9.3f}")


if __name__ == "__main__":
    main()
