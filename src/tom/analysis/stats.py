"""Statistics over seeds and tasks: bootstrap intervals, the interquartile mean (IQM), and the
aggregate metrics of Agarwal et al. 2021 ("Deep RL at the Edge of the Statistical Precipice").

Per task and method, over seeds (``summarise``, used by the figure notebooks): the mean and the
IQM (the mean of the middle 50 %, robust to one outlying seed) with 95 % percentile-bootstrap
intervals over seeds. With fewer than two observations there is no interval: the bounds are
NaN. These functions drop NaNs first.

Across tasks (Figure 6 and its table): every run is scored by its final return (the mean of
its last ``LAST_K`` evaluations), normalised per task (``reference_returns``, ``normalise``),
and each method's runs x tasks matrix (``final_scores``) is summarised by the IQM, the mean and
the optimality gap over all its runs and tasks (``aggregate_intervals``), and by the
probability that one method's run beats another's on a random task
(``improvement_probabilities``). Their intervals are stratified bootstrap intervals: runs are
resampled with replacement within each task, the tasks kept (rliable's ``StratifiedBootstrap``
and ``get_interval_estimates``, here ``scipy.stats.bootstrap`` with one sample per task and
``paired=False``; rliable itself is not used because its dependency ``arch`` does not import
with pandas 3).

Every interval is ``scipy.stats.bootstrap`` with the percentile method, at 95 %, with a fixed
seed (``rng=np.random.default_rng(seed)``), so reruns give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

N_BOOT = 5000  # resamples per interval over seeds (summarise)
N_REPS = 2000  # resamples per aggregate interval across tasks (Figure 6)
CONFIDENCE = 0.95
LAST_K = 3  # a run's score: the mean of its last LAST_K evaluation returns
GAMMA = 1.0  # optimality-gap threshold, in normalised units (rliable's default)
RUN_IDS = ["env", "objective", "seed"]
METRICS = ("IQM", "Mean", "Optimality gap")


def _clean(x) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[~np.isnan(x)]


def iqm(x, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: sort, drop ⌊n/4⌋ values at each end, average the rest.

    The same convention as ``scipy.stats.trim_mean(x, 0.25)`` (and rliable). NaN for no data.
    """
    x = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        return np.nan
    cut = int(0.25 * n)
    middle = np.take(x, np.arange(cut, n - cut), axis=axis)
    out = middle.mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _bootstrap(samples: Sequence[np.ndarray], statistic: Callable, n_boot: int, seed: int,
               confidence: float = CONFIDENCE):
    """``scipy.stats.bootstrap``, percentile method; several samples are resampled each on its
    own (``paired=False``: a stratified bootstrap when each sample is one stratum)."""
    return sps.bootstrap(tuple(samples), statistic, n_resamples=n_boot, vectorized=True,
                         paired=False, axis=-1, confidence_level=confidence,
                         method="percentile", rng=np.random.default_rng(seed))


def bootstrap_distribution(x, statistic: Callable = _mean, n_boot: int = N_BOOT,
                           seed: int = 0) -> np.ndarray:
    """``n_boot`` values of ``statistic`` on resamples (with replacement) of the data.

    ``statistic(samples, axis=-1)`` must reduce the last axis. One value: every resample is
    that value. No value: NaN.
    """
    x = _clean(x)
    if x.size == 0:
        return np.full(n_boot, np.nan)
    if x.size == 1:
        return np.full(n_boot, float(np.asarray(statistic(x[None, :], axis=-1)).ravel()[0]))
    return np.asarray(_bootstrap([x], statistic, n_boot, seed).bootstrap_distribution,
                      dtype=float)


def bootstrap_ci(x, statistic: Callable = _mean, confidence: float = CONFIDENCE,
                 n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic``; (NaN, NaN) with fewer than 2 values."""
    x = _clean(x)
    if x.size < 2:
        return (np.nan, np.nan)
    ci = _bootstrap([x], statistic, n_boot, seed, confidence).confidence_interval
    return (float(ci.low), float(ci.high))


def mean_ci(x, confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0
            ) -> tuple[float, float, float]:
    """(mean, lower, upper): the mean and its percentile-bootstrap interval."""
    x = _clean(x)
    mean = float(x.mean()) if x.size else np.nan
    return (mean, *bootstrap_ci(x, _mean, confidence, n_boot, seed))


def iqm_ci(x, confidence: float = CONFIDENCE, n_boot: int = N_BOOT, seed: int = 0
           ) -> tuple[float, float, float]:
    """(IQM, lower, upper): the interquartile mean and its percentile-bootstrap interval."""
    x = _clean(x)
    return (iqm(x) if x.size else np.nan, *bootstrap_ci(x, iqm, confidence, n_boot, seed))


def summarise(df: pd.DataFrame, by: list[str], value: str, confidence: float = CONFIDENCE,
              n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """One row per group of ``by``: n, mean, std (ddof 1), mean CI, IQM and IQM CI of ``value``.

    Typical use: ``summarise(returns, ["env", "objective", "env_steps"], "return_mean")``
    gives the curve over seeds of every (task, method).
    """
    rows = []
    for key, group in df.groupby(by, sort=True):
        x = _clean(group[value])
        mean, lo, hi = mean_ci(x, confidence, n_boot, seed)
        q, q_lo, q_hi = iqm_ci(x, confidence, n_boot, seed)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n": int(x.size), "mean": mean,
                     "std": float(x.std(ddof=1)) if x.size > 1 else np.nan,
                     "ci_lo": lo, "ci_hi": hi, "iqm": q, "iqm_lo": q_lo, "iqm_hi": q_hi})
    columns = [*by, "n", "mean", "std", "ci_lo", "ci_hi", "iqm", "iqm_lo", "iqm_hi"]
    return pd.DataFrame(rows, columns=columns)


# -- across tasks: final scores, normalisation ------------------------------------------------


def final_returns(returns: pd.DataFrame, last_k: int = LAST_K) -> pd.DataFrame:
    """One row per run: its final return, the mean ``return_mean`` of its last ``last_k``
    evaluations (all of them if it has fewer).

    Columns: env, objective, seed, final_return, n_evals (how many were averaged), env_steps
    (of the last evaluation).
    """
    if last_k < 1:
        raise ValueError(f"last_k must be at least 1, got {last_k}")
    columns = [*RUN_IDS, "final_return", "n_evals", "env_steps"]
    df = returns.dropna(subset=["return_mean"])
    if df.empty:
        return pd.DataFrame(columns=columns)
    tail = df.sort_values([*RUN_IDS, "env_steps"]).groupby(RUN_IDS, sort=True).tail(last_k)
    out = (tail.groupby(RUN_IDS, sort=True)
           .agg(final_return=("return_mean", "mean"), n_evals=("return_mean", "size"),
                env_steps=("env_steps", "max"))
           .reset_index())
    return out[columns]


def reference_returns(returns: pd.DataFrame, last_k: int = LAST_K) -> pd.DataFrame:
    """Per task, the returns that normalise to 0 and 1 (index env; columns lo, hi).

    lo: the lowest evaluation return of any run of the task (any method, seed and step; the
    summary has no random-policy return, and an early evaluation is the closest to one).
    hi: the highest final return (``final_returns``) of any run of the task. So every final
    return normalises into [0, 1], and 1 is the best run observed.
    """
    df = returns.dropna(subset=["return_mean"])
    lo = df.groupby("env")["return_mean"].min()
    hi = final_returns(df, last_k).groupby("env")["final_return"].max()
    return pd.DataFrame({"lo": lo, "hi": hi}).rename_axis("env").astype(float)


def normalise(values, lo, hi) -> np.ndarray:
    """(values − lo) / (hi − lo), elementwise (broadcast); NaN where hi ≤ lo (no scale)."""
    values, lo, hi = (np.asarray(v, dtype=float) for v in (values, lo, hi))
    scale = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, (values - lo) / np.where(scale > 0, scale, 1.0), np.nan)


@dataclass
class FinalScores:
    """Normalised final scores of the methods that ran on every task of ``tasks``."""

    scores: dict[str, np.ndarray]  # method -> [n_runs, n_tasks], columns in `tasks` order
    tasks: list[str]
    refs: pd.DataFrame  # per task (index env): lo, hi (the returns normalised to 0 and 1)
    final: pd.DataFrame  # every run's final_return and normalised score (all methods)
    flat_tasks: list[str] = field(default_factory=list)  # left out: every return equal
    partial: dict[str, list[str]] = field(default_factory=dict)  # left out: method -> its tasks
    trimmed: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> runs per task

    @property
    def methods(self) -> list[str]:
        return list(self.scores)

    def n_runs(self, method: str) -> int:
        return int(self.scores[method].shape[0])

    def notes(self, label: Callable[[str], str] = str,
              task_label: Callable[[str], str] = str) -> list[str]:
        """What was left out or dropped, and why, in words (names through the two labels)."""
        out = []
        if self.flat_tasks:
            out.append("Left out (every return equal, nothing to normalise by): "
                       + ", ".join(map(task_label, self.flat_tasks)) + ".")
        for method, ran in self.partial.items():
            out.append(f"{label(method)} ran only on {', '.join(map(task_label, ran))}: left "
                       "out of the aggregates (other tasks are not comparable).")
        for method, counts in self.trimmed.items():
            n = self.n_runs(method)
            more = ", ".join(f"{task_label(t)} {c}" for t, c in counts.items() if c > n)
            out.append(f"{label(method)}: {n} run{'s' if n != 1 else ''} per task used (the "
                       f"lowest seeds, the common count across tasks), of {more}.")
        return out


def final_scores(returns: pd.DataFrame, methods: Iterable[str], last_k: int = LAST_K,
                 refs: pd.DataFrame | None = None, tasks: Sequence[str] | None = None
                 ) -> FinalScores:
    """Each method's normalised final scores as a runs x tasks matrix (rliable's layout).

    ``refs`` (index env; columns lo, hi) defaults to ``reference_returns(returns, last_k)``,
    computed from every run in ``returns``. The tasks are ``tasks`` (default: those where any
    of ``methods`` ran, sorted), less those whose returns are all equal (nothing to normalise
    by). A method is kept only if it ran on every one of these tasks (an aggregate over other
    tasks would not be comparable). The aggregates need the same number of runs on every
    task: a method with more runs on some tasks keeps, on each, the runs of its lowest seeds
    up to the smallest count. ``FinalScores.notes`` says what was left out or dropped.
    Methods keep the order of ``methods``; those without runs are absent.
    """
    methods = list(dict.fromkeys(methods))
    refs = reference_returns(returns, last_k) if refs is None else refs
    final = final_returns(returns, last_k)
    env_refs = refs.reindex(final["env"])
    final["score"] = normalise(final["final_return"], env_refs["lo"].to_numpy(),
                               env_refs["hi"].to_numpy())
    mine = final[final["objective"].isin(methods)]
    tasks = list(tasks) if tasks is not None else sorted(mine["env"].unique())
    flat = [t for t in tasks if not mine.loc[mine["env"] == t, "score"].notna().all()]
    tasks = [t for t in tasks if t not in flat]
    out = FinalScores(scores={}, tasks=tasks, refs=refs, final=final, flat_tasks=flat)
    for method in (m for m in methods if m in set(mine["objective"]) and tasks):
        runs = mine[(mine["objective"] == method) & mine["env"].isin(tasks)]
        counts = runs.groupby("env")["seed"].nunique().reindex(tasks, fill_value=0)
        if (counts == 0).any():
            out.partial[method] = [t for t in tasks if counts.get(t, 0) > 0]
            continue
        n = int(counts.min())
        if (counts > n).any():
            out.trimmed[method] = {t: int(c) for t, c in counts.items()}
        columns = [runs[runs["env"] == t].sort_values("seed")["score"].to_numpy()[:n]
                   for t in tasks]
        out.scores[method] = np.stack(columns, axis=1)
    return out


# -- across tasks: aggregate metrics and their stratified-bootstrap intervals -----------------


def _flat_runs_tasks(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    return scores.reshape(*scores.shape[:-2], -1)


def aggregate_iqm(scores) -> np.ndarray | float:
    """IQM of all runs and tasks of ``scores`` [..., n_runs, n_tasks] (rliable's
    ``aggregate_iqm``: ``scipy.stats.trim_mean(·, 0.25)`` over the flattened matrix)."""
    out = sps.trim_mean(_flat_runs_tasks(scores), 0.25, axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def aggregate_mean(scores) -> np.ndarray | float:
    """Mean over tasks of the mean over runs (with equal runs per task: the mean of all)."""
    out = np.mean(_flat_runs_tasks(scores), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def optimality_gap(scores, gamma: float = GAMMA) -> np.ndarray | float:
    """How far the scores fall short of ``gamma``: γ − mean(min(score, γ)) (lower is better;
    scores above γ earn nothing more)."""
    out = gamma - np.mean(np.minimum(_flat_runs_tasks(scores), gamma), axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def probability_of_improvement(x, y) -> np.ndarray | float:
    """P(X > Y): the chance that a run of X beats a run of Y on a task drawn uniformly.

    ``x`` [..., n, n_tasks] and ``y`` [..., m, n_tasks]: per task the Mann–Whitney statistic
    U / (n m) (ties count one half), averaged over tasks (rliable's
    ``probability_of_improvement``).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    diff = x[..., :, None, :] - y[..., None, :, :]  # [..., n, m, n_tasks]
    wins = (diff > 0) + 0.5 * (diff == 0)
    out = wins.mean(axis=(-3, -2)).mean(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def _stratified(scores: np.ndarray) -> list[np.ndarray]:
    """One sample per task (a column of [n_runs, n_tasks]): the bootstrap's strata."""
    return [scores[:, t] for t in range(scores.shape[1])]


def aggregate_intervals(scores: Mapping[str, np.ndarray], reps: int = N_REPS, seed: int = 0,
                        confidence: float = CONFIDENCE, gamma: float = GAMMA) -> pd.DataFrame:
    """IQM, mean and optimality gap of each method's [n_runs, n_tasks] scores, with their
    stratified-bootstrap intervals (runs resampled within each task; NaN bounds with fewer
    than 2 runs).

    Columns: method, metric (one of ``METRICS``), value, ci_lo, ci_hi, n_runs, n_tasks.
    """
    metrics: dict[str, Callable] = {"IQM": aggregate_iqm, "Mean": aggregate_mean,
                                    "Optimality gap": lambda s: optimality_gap(s, gamma)}
    rows = []
    for method, s in scores.items():
        s = np.asarray(s, dtype=float)
        if s.ndim != 2 or s.size == 0:
            raise ValueError(f"{method}: scores must be a non-empty [n_runs, n_tasks] matrix, "
                             f"got shape {s.shape}")
        for name, metric in metrics.items():
            lo = hi = np.nan
            if s.shape[0] >= 2:
                def statistic(*columns, axis=-1, metric=metric):
                    return metric(np.stack(columns, axis=-1))

                ci = _bootstrap(_stratified(s), statistic, reps, seed,
                                confidence).confidence_interval
                lo, hi = float(ci.low), float(ci.high)
            rows.append({"method": method, "metric": name, "value": float(metric(s)),
                         "ci_lo": lo, "ci_hi": hi, "n_runs": s.shape[0],
                         "n_tasks": s.shape[1]})
    return pd.DataFrame(rows, columns=["method", "metric", "value", "ci_lo", "ci_hi",
                                       "n_runs", "n_tasks"])


def improvement_probabilities(scores: Mapping[str, np.ndarray], reference: str = "tom",
                              baselines: Iterable[str] | None = None, reps: int = N_REPS,
                              seed: int = 0, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """P(reference > baseline) for each baseline, with its stratified-bootstrap interval (the
    runs of both methods resampled independently within each task; NaN bounds when either has
    fewer than 2 runs). ``baselines``: every other method of ``scores`` by default.

    Columns: reference, baseline, value, ci_lo, ci_hi, n_reference, n_baseline, n_tasks.
    """
    columns = ["reference", "baseline", "value", "ci_lo", "ci_hi", "n_reference",
               "n_baseline", "n_tasks"]
    if reference not in scores:
        return pd.DataFrame(columns=columns)
    x = np.asarray(scores[reference], dtype=float)
    baselines = [b for b in (baselines if baselines is not None else scores)
                 if b != reference and b in scores]
    rows = []
    for baseline in baselines:
        y = np.asarray(scores[baseline], dtype=float)
        if y.shape[1] != x.shape[1]:
            raise ValueError(f"{reference} and {baseline} have scores on different numbers of "
                             f"tasks ({x.shape[1]} and {y.shape[1]})")
        n_tasks = x.shape[1]
        lo = hi = np.nan
        if x.shape[0] >= 2 and y.shape[0] >= 2:
            def statistic(*columns, axis=-1, n_tasks=n_tasks):
                return probability_of_improvement(np.stack(columns[:n_tasks], axis=-1),
                                                  np.stack(columns[n_tasks:], axis=-1))

            ci = _bootstrap(_stratified(x) + _stratified(y), statistic, reps, seed,
                            confidence).confidence_interval
            lo, hi = float(ci.low), float(ci.high)
        rows.append({"reference": reference, "baseline": baseline,
                     "value": float(probability_of_improvement(x, y)), "ci_lo": lo,
                     "ci_hi": hi, "n_reference": x.shape[0], "n_baseline": y.shape[0],
                     "n_tasks": n_tasks})
    return pd.DataFrame(rows, columns=columns)
