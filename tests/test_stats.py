"""Aggregate metrics across tasks (Figure 6): exact answers worked out by hand, not the code's
own output."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tom.analysis import stats

# -- final scores and normalisation ---------------------------------------------------------------


def _returns(rows):
    """(env, objective, seed, [returns at 100, 200, ... steps]) -> a returns.csv frame."""
    out = []
    for env, objective, seed, values in rows:
        for i, value in enumerate(values):
            out.append({"env": env, "objective": objective, "seed": seed,
                        "env_steps": 100 * (i + 1), "return_mean": float(value)})
    return pd.DataFrame(out)


def test_final_return_is_the_mean_of_the_last_k_evaluations():
    returns = _returns([("hopper", "tom", 0, [1, 2, 3, 10, 20]), ("hopper", "tom", 1, [4, 8])])
    # Rows shuffled: the last evaluations are the ones with the most steps, not the last rows.
    final = stats.final_returns(returns.sample(frac=1.0, random_state=0), last_k=3)
    final = final.set_index("seed")
    assert final.loc[0, "final_return"] == pytest.approx((3 + 10 + 20) / 3)
    assert final.loc[0, "n_evals"] == 3 and final.loc[0, "env_steps"] == 500
    assert final.loc[1, "final_return"] == pytest.approx(6.0)  # fewer than k: all of them
    assert final.loc[1, "n_evals"] == 2
    with pytest.raises(ValueError, match="last_k"):
        stats.final_returns(returns, last_k=0)


def test_reference_returns_and_normalisation_map_them_to_0_and_1():
    returns = _returns([("hopper", "tom", 0, [-5, 10, 30]), ("hopper", "mle", 0, [0, 5, 6]),
                        ("ant", "tom", 0, [100, 200]), ("ant", "mle", 0, [300, 50])])
    refs = stats.reference_returns(returns, last_k=2)
    # lo: lowest evaluation at any step; hi: best final (mean of the last 2) of any run.
    assert refs.loc["hopper", "lo"] == -5.0 and refs.loc["hopper", "hi"] == 20.0
    assert refs.loc["ant", "lo"] == 50.0 and refs.loc["ant", "hi"] == 175.0
    lo, hi = refs.loc["hopper", "lo"], refs.loc["hopper", "hi"]
    np.testing.assert_allclose(stats.normalise([lo, hi, 7.5], lo, hi), [0.0, 1.0, 0.5])
    assert np.isnan(stats.normalise(3.0, 3.0, 3.0))  # no spread: no scale
    np.testing.assert_allclose(stats.normalise([1.0, 4.0], [0.0, 2.0], [2.0, 6.0]), [0.5, 0.5])


def test_final_scores_matrix_left_out_and_trimmed():
    rows = []
    for env, base in (("hopper", 0.0), ("walker2d", 100.0)):
        for seed in range(3):
            rows.append((env, "tom", seed, [base, base + 10 * (seed + 1)]))
        for seed in range(2 if env == "hopper" else 3):  # mle: 2 runs on hopper, 3 on walker
            rows.append((env, "mle", seed, [base, base + 5 * (seed + 1)]))
    rows.append(("hopper", "tom-kl", 0, [0.0, 7.0]))  # only on hopper
    scores = stats.final_scores(_returns(rows), ["tom", "mle", "tom-kl"], last_k=1,
                                tasks=["hopper", "walker2d"])
    assert scores.tasks == ["hopper", "walker2d"] and scores.methods == ["tom", "mle"]
    # Every task: 0 = its first evaluation (base), 1 = the best final return (base + 30).
    np.testing.assert_allclose(scores.scores["tom"], [[1 / 3, 1 / 3], [2 / 3, 2 / 3], [1, 1]])
    # mle keeps the 2 lowest seeds on walker2d (the common count), in seed order.
    np.testing.assert_allclose(scores.scores["mle"], [[1 / 6, 1 / 6], [1 / 3, 1 / 3]])
    assert scores.partial == {"tom-kl": ["hopper"]}
    assert scores.trimmed == {"mle": {"hopper": 2, "walker2d": 3}}
    notes = " ".join(scores.notes())
    assert "tom-kl ran only on hopper" in notes and "mle: 2 runs per task" in notes


def test_final_scores_leave_out_a_task_without_spread():
    returns = _returns([("hopper", "tom", 0, [5, 5]), ("hopper", "mle", 0, [5, 5]),
                        ("ant", "tom", 0, [0, 4]), ("ant", "mle", 0, [0, 2])])
    scores = stats.final_scores(returns, ["tom", "mle"], last_k=1)
    assert scores.tasks == ["ant"] and scores.flat_tasks == ["hopper"]
    np.testing.assert_allclose(scores.scores["tom"], [[1.0]])
    np.testing.assert_allclose(scores.scores["mle"], [[0.5]])


# -- aggregate metrics --------------------------------------------------------------------------


def test_aggregate_iqm_is_the_trimmed_mean_of_all_runs_and_tasks():
    scores = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 100.0]])
    # 8 values sorted 0..6, 100: drop 2 at each end, mean of 2, 3, 4, 5.
    assert stats.aggregate_iqm(scores) == pytest.approx(3.5)
    assert stats.aggregate_iqm(np.array([[1.0, 9.0, 2.0]])) == pytest.approx(4.0)  # 3: no cut
    batch = np.stack([scores, scores + 1.0])  # [2, runs, tasks]
    np.testing.assert_allclose(stats.aggregate_iqm(batch), [3.5, 4.5])


def test_aggregate_mean_and_optimality_gap():
    scores = np.array([[0.5, 1.5], [0.2, 1.0]])
    assert stats.aggregate_mean(scores) == pytest.approx(0.8)
    # min(score, 1): 0.5, 1, 0.2, 1 -> mean 0.675 -> gap 0.325 (the 1.5 earns nothing more).
    assert stats.optimality_gap(scores) == pytest.approx(0.325)
    assert stats.optimality_gap(scores, gamma=0.5) == pytest.approx(0.5 - 0.425)


def test_probability_of_improvement_extremes():
    x = np.array([[5.0, 50.0], [6.0, 60.0]])
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    assert stats.probability_of_improvement(x, y) == 1.0  # x dominates on every task
    assert stats.probability_of_improvement(y, x) == 0.0
    z = np.array([[0.3, 7.0], [0.1, 9.0], [0.2, 8.0]])
    assert stats.probability_of_improvement(z, z) == 0.5  # the same distribution
    assert stats.probability_of_improvement(np.ones((2, 3)), np.ones((4, 3))) == 0.5  # all ties


def test_probability_of_improvement_is_mann_whitney_u_over_nm():
    x1, y1 = np.array([3.0, 5.0, 7.0]), np.array([4.0, 5.0, 6.0, 1.0])
    # By hand: 3 beats 1; 5 beats 4 and 1 and ties 5; 7 beats all four: 7.5 of 12 pairs.
    u = sps.mannwhitneyu(x1, y1).statistic
    assert u == 7.5
    assert stats.probability_of_improvement(x1[:, None], y1[:, None]) == pytest.approx(0.625)
    # 1 and 2 beat 0; 2.5 beats 0 and ties 2.5: 3.5 of 12 pairs.
    x2, y2 = np.array([1.0, 2.0, 2.5]), np.array([3.0, 2.5, 0.0, 9.0])
    u2 = sps.mannwhitneyu(x2, y2).statistic
    expected = (u / 12 + u2 / 12) / 2  # the mean over the two tasks
    assert expected == pytest.approx((0.625 + 3.5 / 12) / 2)
    assert stats.probability_of_improvement(np.stack([x1, x2], 1), np.stack([y1, y2], 1)) == (
        pytest.approx(expected))


def test_intervals_of_constant_scores_are_degenerate():
    s = {"tom": np.full((5, 3), 0.7), "mle": np.full((4, 3), 0.7)}
    out = stats.aggregate_intervals(s, reps=500).set_index(["method", "metric"])
    for metric, value in (("IQM", 0.7), ("Mean", 0.7), ("Optimality gap", 0.3)):
        row = out.loc[("tom", metric)]
        assert row["value"] == pytest.approx(value)
        assert row["ci_lo"] == pytest.approx(value) and row["ci_hi"] == pytest.approx(value)
    p = stats.improvement_probabilities(s, "tom", reps=500).iloc[0]
    assert p["baseline"] == "mle" and (p["value"], p["ci_lo"], p["ci_hi"]) == (0.5, 0.5, 0.5)


def test_bootstrap_is_stratified_by_task():
    """Runs are resampled within each task: with every run of task 1 at 0 and of task 2 at 1,
    every resample has mean 0.5 (pooling the runs across tasks would not)."""
    s = np.array([[0.0, 1.0]] * 4)
    row = stats.aggregate_intervals({"tom": s}, reps=1000).set_index("metric").loc["Mean"]
    assert (row["value"], row["ci_lo"], row["ci_hi"]) == (0.5, 0.5, 0.5)
    # Against a baseline at 0.5 on both tasks: TOM wins task 2 and loses task 1, always.
    p = stats.improvement_probabilities({"tom": s, "mle": np.full((3, 2), 0.5)}, reps=1000)
    assert tuple(p.iloc[0][["value", "ci_lo", "ci_hi"]]) == (0.5, 0.5, 0.5)


def test_interval_of_two_runs_is_their_range():
    """One task, two runs a < b: the bootstrap mean is a, (a+b)/2 or b with probability 1/4,
    1/2, 1/4, so the 95 % percentile interval is exactly [a, b]."""
    row = (stats.aggregate_intervals({"tom": np.array([[0.2], [0.6]])}, reps=20_000, seed=1)
           .set_index("metric").loc["Mean"])
    assert (row["value"], row["ci_lo"], row["ci_hi"]) == pytest.approx((0.4, 0.2, 0.6))


def test_one_run_has_no_interval_and_bad_shapes_are_refused():
    out = stats.aggregate_intervals({"tom": np.array([[0.4, 0.8]])})
    assert out["value"].tolist() == pytest.approx([0.6, 0.6, 0.4])
    assert out["ci_lo"].isna().all() and out["ci_hi"].isna().all()
    p = stats.improvement_probabilities({"tom": np.array([[0.4, 0.8]]),
                                         "mle": np.array([[0.1, 0.2], [0.3, 0.9]])})
    assert p.iloc[0]["value"] == pytest.approx(0.75) and np.isnan(p.iloc[0]["ci_lo"])
    with pytest.raises(ValueError, match="n_runs, n_tasks"):
        stats.aggregate_intervals({"tom": np.array([0.4, 0.8])})
    assert stats.improvement_probabilities({"mle": np.ones((2, 2))}).empty  # no reference


def test_intervals_are_reproducible_and_contain_the_estimate():
    rng = np.random.default_rng(0)
    s = {"tom": rng.uniform(size=(5, 3))}
    a = stats.aggregate_intervals(s, reps=300, seed=4)
    pd.testing.assert_frame_equal(a, stats.aggregate_intervals(s, reps=300, seed=4))
    assert ((a["ci_lo"] <= a["value"]) & (a["value"] <= a["ci_hi"])).all()


def test_percentile_intervals_of_a_skewed_sample_are_binomial_quantiles():
    """x = (0, 0, 0, 1): a resample's mean is k/4 with k ~ Binomial(4, 1/4), P(k <= 2) = 0.949
    and P(k <= 3) = 0.996, so the 95 % percentile interval is exactly [0, 0.75] (the 'basic'
    interval, 2 x 0.25 minus those, would be [-0.25, 0.5])."""
    assert stats.bootstrap_ci([0.0, 0.0, 0.0, 1.0], n_boot=20_000) == (0.0, 0.75)
    # The same law for P(TOM > baseline) when TOM's runs are all 0.5 and the baseline's are
    # 0, 1, 1, 1: P = the share of baseline runs at 0, resampled with the baseline's runs.
    p = stats.improvement_probabilities(
        {"tom": np.full((3, 1), 0.5), "mle": np.array([[0.0], [1.0], [1.0], [1.0]])},
        reps=20_000).iloc[0]
    assert (p["value"], p["ci_lo"], p["ci_hi"]) == (0.25, 0.0, 0.75)
