"""tom.analysis: statistics against closed forms, and `tom aggregate` on hand-made runs."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tom.analysis import stats
from tom.analysis.aggregate import COLUMNS, SUMMARY_FILES, aggregate, format_value
from tom.cli import main
from tom.config import resolve

# -- statistics ---------------------------------------------------------------------------------


def test_iqm_known_values():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3..6
    assert stats.iqm([0, 0, 0, 100]) == pytest.approx(0.0)  # one value cut at each end
    assert stats.iqm([5.0]) == 5.0
    assert stats.iqm([1.0, 3.0, 2.0]) == pytest.approx(2.0)  # n < 4: nothing is cut
    assert np.isnan(stats.iqm([]))


def test_iqm_matches_trimmed_mean():
    """The same convention as scipy.stats.trim_mean(x, 0.25) for every sample size."""
    rng = np.random.default_rng(0)
    for n in range(1, 30):
        x = rng.standard_cauchy(n)
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25), rel=1e-12)


def test_iqm_along_axis():
    x = np.array([[1, 2, 3, 100], [4, 4, 4, 4]], dtype=float)
    np.testing.assert_allclose(stats.iqm(x, axis=-1), [2.5, 4.0])


def test_bootstrap_ci_of_two_values_is_their_range():
    """With x = (a, b) the bootstrap mean is a, (a+b)/2, b w.p. 1/4, 1/2, 1/4, so the 95 %
    percentile interval is exactly [a, b]."""
    lo, hi = stats.bootstrap_ci([3.0, 7.0], n_boot=20_000)
    assert (lo, hi) == (3.0, 7.0)


def test_bootstrap_ci_constant_and_degenerate_cases():
    assert stats.bootstrap_ci([2.5] * 6) == (2.5, 2.5)
    mean, lo, hi = stats.mean_ci([4.0])
    assert mean == 4.0 and np.isnan(lo) and np.isnan(hi)  # one seed: no interval
    mean, lo, hi = stats.mean_ci([np.nan, 1.0, 3.0])  # NaNs are dropped
    assert mean == 2.0 and lo == 1.0 and hi == 3.0
    assert np.isnan(stats.mean_ci([])[0])


def test_bootstrap_spread_matches_closed_form():
    """The bootstrap distribution of the mean has variance σ̂²/n (σ̂ with ddof 0), and its
    95 % interval approaches mean ± 1.96 σ̂/√n for a large normal sample."""
    x = np.random.default_rng(1).normal(10.0, 2.0, size=400)
    dist = stats.bootstrap_distribution(x, n_boot=20_000, seed=3)
    se = x.std(ddof=0) / np.sqrt(x.size)
    assert dist.std() == pytest.approx(se, rel=0.03)
    lo, hi = stats.bootstrap_ci(x, n_boot=20_000)
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.1 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.1 * se)


def test_iqm_ci_contains_iqm_and_is_deterministic():
    x = [1.0, 2.0, 2.5, 3.0, 50.0]
    q, lo, hi = stats.iqm_ci(x, seed=7)
    assert lo <= q <= hi
    assert stats.iqm_ci(x, seed=7) == (q, lo, hi)


def test_summarise_groups():
    df = pd.DataFrame({"env": ["a"] * 4 + ["b"], "objective": "tom", "seed": [0, 1, 2, 3, 0],
                       "r": [1.0, 2.0, 3.0, 4.0, 9.0]})
    out = stats.summarise(df, ["env", "objective"], "r").set_index("env")
    assert out.loc["a", "n"] == 4 and out.loc["a", "mean"] == 2.5
    assert out.loc["a", "std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert out.loc["a", "iqm"] == pytest.approx(2.5)
    assert out.loc["b", "n"] == 1 and np.isnan(out.loc["b", "ci_lo"])


# -- aggregation --------------------------------------------------------------------------------


def _fake_run(path, env, objective, seed, preset="smoke", evals=3, commit="abc123"):
    """A run directory with the four contract files' content (policy.pt is not read)."""
    cfg = resolve(env, objective, seed=seed, preset=preset)
    path.mkdir(parents=True)
    steps = [200 * (i + 1) for i in range(evals)]
    pd.DataFrame({
        "env_steps": steps, "return_mean": [float(seed + i) for i in range(evals)],
        "return_std": 0.5, "episode_length": 10.0, "model_holdout_loss": 1.0,
        "model_error_recent": [np.nan] + [0.5] * (evals - 1), "model_nll_recent": 2.0,
        "weight_mean": 1.0, "weight_max": 2.0, "weight_ess": 0.9, "sps": 100.0,
        **{f"time_{p}": [float(i + 1) for i in range(evals)]
           for p in ("env", "objective", "model", "rollout", "sac", "eval")},
    }).to_csv(path / "metrics.csv", index=False)
    pd.DataFrame({"env_steps": [200, 200], "age_bin": [0, 1], "age_lo": [0, 10],
                  "age_hi": [10, 20], "mean_weight": [1.5, 0.5], "count": [10, 10]}
                 ).to_csv(path / "weights.csv", index=False)
    meta = {"config": cfg.to_dict(), "versions": {"tom": "0.1.0"}, "git_commit": commit,
            "seed": seed, "wall_time_s": 4.0}
    (path / "config.json").write_text(json.dumps(meta))


def test_aggregate_writes_tidy_summaries(tmp_path):
    runs = tmp_path / "runs"
    for objective in ("mle", "tom"):
        for seed in (0, 1):
            _fake_run(runs / "inverted_pendulum" / objective / str(seed), "inverted_pendulum",
                      objective, seed)
    crashed = runs / "inverted_pendulum" / "tom" / "2"
    crashed.mkdir()
    (crashed / "metrics.partial.csv").write_text("env_steps\n200\n")

    assert main(["aggregate", "--runs", str(runs), "--out", str(tmp_path / "summary")]) == 0
    out = tmp_path / "summary"
    assert sorted(p.name for p in out.iterdir()) == sorted(SUMMARY_FILES)
    frames = {name: pd.read_csv(out / f"{name}.csv") for name in COLUMNS}
    for name, columns in COLUMNS.items():
        assert list(frames[name].columns) == columns, name

    returns = frames["returns"]
    assert len(returns) == 4 * 3  # one row per (run, evaluation); the crashed run is skipped
    assert set(returns["seed"]) == {0, 1}
    row = returns[(returns["objective"] == "tom") & (returns["seed"] == 1)]
    assert row["return_mean"].tolist() == [1.0, 2.0, 3.0]
    assert len(frames["weights"]) == 4 * 2
    compute = frames["compute"].set_index(["objective", "seed"])
    assert compute.loc[("mle", 0), "env_steps_total"] == 600
    assert compute.loc[("mle", 0), "steps_per_s"] == pytest.approx(600 / 4.0)
    assert compute.loc[("mle", 0), "time_sac"] == 3.0  # cumulative: the last evaluation
    assert compute.loc[("mle", 0), "preset"] == "smoke"

    configs = frames["configs"]
    epochs = configs[(configs["key"] == "schedule.epochs") & (configs["objective"] == "tom")]
    assert set(epochs["value"].astype(str)) == {"2"}  # smoke
    assert set(epochs["paper_value"].astype(str)) == {"15"}  # paper, inverted_pendulum
    assert epochs["deviates"].all()
    gamma = configs[configs["key"] == "sac.gamma"]
    assert not gamma["deviates"].any()
    assert not configs["key"].isin(["env", "objective", "seed", "device", "preset", "compile",
                                    "cuda_graph", "cuda_graph_steps", "stack_seeds"]).any()

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["preset"] == "smoke" and prov["commit"] == "abc123" and prov["n_runs"] == 4
    assert prov["objectives"] == ["mle", "tom"] and prov["seeds"] == [0, 1]
    assert prov["skipped_incomplete"] == [str(crashed)]


def test_aggregate_explicit_run_dirs_and_duplicates(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_run(a, "inverted_pendulum", "mle", 0, commit="c1")
    _fake_run(b, "inverted_pendulum", "mle", 1, commit="c2")
    prov = aggregate([a, b], tmp_path / "out")
    assert prov["n_runs"] == 2 and prov["commit"] == "mixed" and prov["commits"] == ["c1", "c2"]
    _fake_run(tmp_path / "c", "inverted_pendulum", "mle", 1)
    with pytest.raises(ValueError, match="two runs"):
        aggregate([a, b, tmp_path / "c"], tmp_path / "out")


def test_aggregate_of_nothing_writes_empty_tables(tmp_path):
    (tmp_path / "runs").mkdir()
    prov = aggregate([tmp_path / "runs"], tmp_path / "out")
    assert prov["n_runs"] == 0 and prov["preset"] == "none"
    assert list(pd.read_csv(tmp_path / "out" / "returns.csv").columns) == COLUMNS["returns"]


def test_aggregate_cli_rejects_missing_folder(tmp_path, capsys):
    assert main(["aggregate", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_format_value():
    assert [format_value(v) for v in (None, True, 3e-4, 10.0, 5, "mdn", 0.0)] == [
        "none", "true", "0.0003", "10", "5", "mdn", "0"]


# -- tables -------------------------------------------------------------------------------------


def test_returns_at_budgets_takes_last_evaluation_and_never_extrapolates():
    pytest.importorskip("seaborn")  # tom.analysis.tables draws its labels from the style module
    from tom.analysis.tables import returns_at_budgets, returns_table

    returns = pd.DataFrame({"env": "hopper", "objective": "tom", "seed": 0,
                            "env_steps": [1000, 2000, 3000], "return_mean": [1.0, 2.0, 3.0]})
    at = returns_at_budgets(returns, [1500, 3000, 5000]).set_index("budget")
    assert at.loc[1500, "env_steps"] == 1000 and at.loc[1500, "return_mean"] == 1.0
    assert at.loc[3000, "return_mean"] == 3.0
    assert 5000 not in at.index  # the run stopped before this budget
    latex, summary = returns_table(returns, [1500, 5000], n_boot=100)
    assert r"\begin{tabular}" in latex and "Hopper" in latex and "--" in latex
    assert summary["n"].tolist() == [1]


def _seed_returns(values, env="hopper", objective="tom"):
    """One evaluation at 1000 steps per seed, with the given returns."""
    return pd.DataFrame({"env": env, "objective": objective, "seed": range(len(values)),
                         "env_steps": 1000, "return_mean": [float(v) for v in values]})


def test_returns_table_has_no_iqm_column_below_4_seeds():
    pytest.importorskip("seaborn")
    from tom.analysis.tables import returns_caption, returns_table

    returns = pd.concat([_seed_returns([1, 2, 100]), _seed_returns([3, 4, 5], objective="mle")])
    latex, summary = returns_table(returns, [1000], n_boot=200)
    assert "IQM" not in latex
    assert r"\begin{tabular}{llr}" in latex  # task, method, one column per budget
    assert r"\multicolumn{1}{c}{1k real steps}" in latex
    # mean ± std (ddof 1) of 1, 2, 100: 34.33 ± sqrt(6468.67 / 2) = 56.87; bold: the best mean
    assert r"Hopper & TOM & \textbf{34.3 $\pm$ 56.9} \\" in latex
    caption = returns_caption(summary)
    assert "No interquartile mean (IQM) column: with 3 seeds or fewer" in caption
    assert "equals the mean" in caption


def test_returns_table_has_an_iqm_column_from_4_seeds():
    pytest.importorskip("seaborn")
    from tom.analysis.tables import returns_caption, returns_table

    returns = pd.concat([_seed_returns([1, 2, 3, 100]), _seed_returns([7, 8, 9], objective="mle")])
    latex, summary = returns_table(returns, [1000], n_boot=200)
    assert r"\begin{tabular}{llrr}" in latex and r"IQM [95\,\% CI]" in latex
    rows = {line.split(" & ")[1]: line for line in latex.splitlines() if " & " in line}
    # IQM of 1, 2, 3, 100: drop one at each end, (2 + 3) / 2 = 2.5 (the mean is 26.5).
    assert r"\textbf{26.5 $\pm$ 49.0} & 2.5 [" in rows["TOM"]
    assert rows["MBPO (MLE)"].endswith(r"8.0 $\pm$ 1.0 & 8.0 [7.0, 9.0] \\")  # 3 seeds: = mean
    caption = returns_caption(summary)
    assert "interquartile mean (IQM) with its 95" in caption and "No interquartile" not in caption
    assert "with fewer than 4 seeds the IQM trims nothing" in caption


def test_reliable_table_rows():
    pytest.importorskip("seaborn")
    from tom.analysis.tables import reliable_table

    intervals = pd.DataFrame({
        "method": ["mle"] * 3 + ["tom"] * 3, "metric": list(stats.METRICS) * 2,
        "value": [0.1, 0.2, 0.8, 0.5, 0.6, 0.4], "ci_lo": [0.05, 0.1, 0.7, np.nan, 0.5, 0.3],
        "ci_hi": [0.15, 0.3, 0.9, np.nan, 0.7, 0.5], "n_runs": [3] * 3 + [1] * 3,
        "n_tasks": 2})
    improvements = pd.DataFrame({"reference": ["tom"], "baseline": ["mle"], "value": [0.75],
                                 "ci_lo": [0.5], "ci_hi": [1.0]})
    latex = reliable_table(intervals, improvements)
    lines = latex.splitlines()
    tom = lines.index(next(line for line in lines if line.startswith("TOM &")))
    assert lines[tom] == r"TOM & 1 & 0.50 & 0.60 [0.50, 0.70] & 0.40 [0.30, 0.50] & -- \\"
    assert lines[tom + 1] == (r"MBPO (MLE) & 3 & 0.10 [0.05, 0.15] & 0.20 [0.10, 0.30] & "
                              r"0.80 [0.70, 0.90] & 0.75 [0.50, 1.00] \\")
    assert r"P(TOM $>$ method)" in latex


def test_readme_lists_exactly_the_deviations():
    """README's section and the generated table print the same list (`tom.deviations`)."""
    from pathlib import Path

    from tom.deviations import DEVIATIONS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Deviations from the paper's code\n", 1)[1].split("\n## ", 1)[0]
    items = [" ".join(item.split()) for item in section.split("\n- ")[1:]]
    assert items == list(DEVIATIONS)


def test_deviations_render_as_ascii_latex():
    pytest.importorskip("seaborn")
    from tom.analysis.tables import deviations_list, markdown_to_latex
    from tom.deviations import DEVIATIONS

    assert markdown_to_latex("w ≥ 0 in `model_nll`, 50% χ²") == (
        r"w $\ge$ 0 in \texttt{model\_nll}, 50\% $\chi$\textsuperscript{2}")
    latex = deviations_list(DEVIATIONS)
    assert latex.isascii()  # plain pdflatex builds it
    assert latex.count(r"\item ") == len(DEVIATIONS)
    with pytest.raises(ValueError, match="unbalanced backticks"):
        markdown_to_latex("a `b")


def test_notebook_kernels_talk_over_unix_sockets_not_tcp_ports(tmp_path, monkeypatch):
    """Kernels started at once (the pipeline's notebook rules run in parallel) could pick the
    same free TCP port, and one then died on start and hung its rule: `run_notebook`'s
    kernel uses Unix sockets in its own directory. The notebook checks its own connection."""
    from tom.analysis.notebook import run_notebook

    source = tmp_path / "check.py"
    header = ("# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n"
              "#     language: python\n#     name: python3\n# ---\n\n")
    source.write_text(
        header + "# %% tags=[\"parameters\"]\nanswer = 0\n\n"
        "# %%\nimport json\nfrom ipykernel.connect import get_connection_info\n"
        "info = json.loads(get_connection_info())\n"
        "assert info[\"transport\"] == \"ipc\", info\nassert answer == 42\n")
    monkeypatch.chdir(tmp_path)
    run_notebook(source, tmp_path / "out" / "check.ipynb", {"answer": 42})
    assert (tmp_path / "out" / "check.ipynb").exists()
