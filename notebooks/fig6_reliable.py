# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 6: aggregate performance across tasks, with stratified-bootstrap intervals
#
# Claim 3 of the paper (ALGORITHM.md §8) across all tasks at once, reported as Agarwal et al.
# 2021 ("Deep RL at the Edge of the Statistical Precipice") recommend for few seeds:
#
# - **Score of a run**: the mean of its last `last_k` evaluation returns, normalised per task
#   (min–max): 0 is the lowest evaluation return of any run on that task (any method, seed and
#   step: the summary has no random-policy return, and an early evaluation is the nearest to
#   one), 1 the highest final score of any run on it.
# - **(a)** per method, over all its runs and tasks: the interquartile mean (IQM, the mean of
#   the middle 50 % of runs), the mean, and the optimality gap (how far the scores fall short of
#   1; lower is better).
# - **(b)** the probability of improvement P(TOM > X): the chance that a TOM run beats a run of
#   method X on a task drawn at random (per task the Mann–Whitney U / (n m), averaged).
#
# Every interval is a 95 % stratified percentile bootstrap: the runs are resampled with
# replacement within each task (`scipy.stats.bootstrap`, `n_reps` resamples, fixed seed). A
# method enters only if it ran on every task (the ablation variants usually did not; Figure 5
# compares them). Also writes the table `table_path`. Input: `results/summary/returns.csv`.

# %% tags=["parameters"]
summary_dir = "results/summary"
fig_path = "figures/fig6.pdf"
table_path = "paper/tables/reliable.tex"
preset = "unknown"
commit = "unknown"
n_reps = 2000  # bootstrap resamples per interval
last_k = 3  # a run's score: the mean of its last last_k evaluation returns
reference = "tom"  # P(reference > method) in panel (b)

# %%
from pathlib import Path

import matplotlib.patheffects as pe
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tom.analysis import stats, style, tables
from tom.atomic import atomic_write

style.setup()
METHODS = list(style.METHODS)  # the paper's methods; those that ran on every task enter

returns = pd.read_csv(Path(summary_dir) / "returns.csv")
data = returns[returns["objective"].isin(METHODS)]
scores = stats.final_scores(data, style.order(data["objective"].unique()), last_k=last_k,
                            tasks=style.task_order(data["env"].unique()))
methods = scores.methods
baselines = [m for m in methods if m != reference]
n_runs = {m: scores.n_runs(m) for m in methods}
notes_left_out = scores.notes(style.label, style.task_label)
print(f"tasks: {scores.tasks}; runs per task: {n_runs}")
print("\n".join(notes_left_out))
scores.refs.loc[scores.tasks].round(2)

# %% [markdown]
# Final score of every run (raw and normalised):

# %%
scores.final.round(3)

# %% [markdown]
# IQM, mean and optimality gap of the normalised scores per method, and P(TOM > method), each
# with its 95 % stratified-bootstrap interval:

# %%
intervals = stats.aggregate_intervals(scores.scores, reps=n_reps)
improvements = stats.improvement_probabilities(scores.scores, reference, baselines,
                                               reps=n_reps)
display_cols = ["value", "ci_lo", "ci_hi"]
intervals.pivot(index="method", columns="metric", values=display_cols).round(3)

# %%
improvements.round(3)

# %%
def interval_rows(ax, rows: pd.DataFrame, names: list[str], colors: list[str]) -> None:
    """rliable's interval-estimate style: a horizontal bar over the 95 % CI and a black tick
    at the point estimate (white-edged, so it shows on dark bars), one row per name (top to
    bottom); a dot where there is no CI."""
    for y, (name, c) in enumerate(zip(names, colors, strict=True)):
        r = rows.loc[name]
        if np.isfinite(r["ci_lo"]) and np.isfinite(r["ci_hi"]):
            ax.barh(y, r["ci_hi"] - r["ci_lo"], left=r["ci_lo"], height=0.6, color=c,
                    alpha=0.75, lw=0)
            ax.vlines(r["value"], y - 0.3, y + 0.3, color="k", lw=1.5,
                      path_effects=[pe.withStroke(linewidth=3.5, foreground="white")])
        else:
            ax.plot(r["value"], y, "o", color=c, ms=6, mec="k", mew=0.8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_yticks(range(len(names)))
    ax.grid(axis="y", visible=False)


METRIC_AXES = {"IQM": "(a) IQM", "Mean": "(a) Mean", "Optimality gap": "(a) Optimality gap"}
XLABELS = {"IQM": "normalised score\n(higher is better)",
           "Mean": "normalised score\n(higher is better)",
           "Optimality gap": "normalised score below 1\n(lower is better)"}
n_a, n_b = max(len(methods), 1), max(len(baselines) if reference in methods else 1, 1)
why_empty = ("no runs" if data.empty else "no task left to aggregate" if not scores.tasks
             else "no method ran on every task")
fig = plt.figure(figsize=(7.4, 2.4 + 0.3 * (n_a + n_b)))
grid = fig.add_gridspec(2, 3, height_ratios=[0.9 + 0.3 * n_a, 0.7 + 0.3 * n_b])
axes_a = [fig.add_subplot(grid[0, j]) for j in range(3)]
ax_b = fig.add_subplot(grid[1, :])

for j, (metric, title) in enumerate(METRIC_AXES.items()):
    ax = axes_a[j]
    ax.set_title(title)
    ax.set_xlabel(XLABELS[metric])
    if methods:
        rows = intervals[intervals["metric"] == metric].set_index("method")
        interval_rows(ax, rows, methods, [style.color(m) for m in methods])
        ax.set_yticklabels([style.label(m) for m in methods] if j == 0 else [])
        lo = min(0.0, float(np.nanmin(rows[["value", "ci_lo"]].to_numpy())))
        hi = max(1.0, float(np.nanmax(rows[["value", "ci_hi"]].to_numpy())))
        ax.set_xlim(lo - 0.05, hi + 0.05)
    else:
        ax.set_yticks([])
        ax.set_xlim(0, 1)
if not methods:
    axes_a[1].text(0.5, 0.5, why_empty, ha="center", va="center",
                   transform=axes_a[1].transAxes)

ax_b.set_title(f"(b) Probability of improvement of {style.label(reference)}", loc="left")
ax_b.set_xlabel(f"P({style.label(reference)} > method)   (0.5: neither is better)")
ax_b.set_xlim(-0.03, 1.03)  # room for a dot at 0 or 1
ax_b.axvline(0.5, color="0.4", ls="--", lw=1)
if len(improvements):
    rows = improvements.set_index("baseline")
    interval_rows(ax_b, rows, baselines, [style.color(m) for m in baselines])
    ax_b.set_yticklabels([style.label(m) for m in baselines])
else:
    ax_b.set_yticks([])
    why = (why_empty if not methods else f"no runs of {style.label(reference)} on every task"
           if reference not in methods else "no other method ran on every task")
    ax_b.text(0.5, 0.5, why, ha="center", va="center", transform=ax_b.transAxes)

# %% [markdown]
# Notes under the figure (and in the table's caption): the normalisation, the runs and tasks,
# and what the data cannot support.

# %%
task_names = ", ".join(map(style.task_label, scores.tasks)) or "none"
counts = sorted(set(n_runs.values()))
if not counts:
    runs_text = "no method with runs on every task"
elif len(counts) == 1:
    runs_text = f"{counts[0]} run{'s' if counts[0] != 1 else ''} per method on each"
else:
    runs_text = ("runs per method on each: "
                 + ", ".join(f"{style.label(m)} {n}" for m, n in n_runs.items()))
n_evals = scores.final.loc[scores.final["objective"].isin(methods), "n_evals"]
fewer = (f" (all {int(n_evals.min())} where a run has fewer)"
         if len(n_evals) and n_evals.min() < last_k else "")
notes = [
    f"Score of a run: the mean of its last {last_k} evaluation returns{fewer}, min-max "
    "normalised per task (0: the lowest evaluation return of any run on the task, at any step; "
    "1: the best final score of any run on it). Bars: 95 % stratified-bootstrap CI (runs "
    f"resampled within each task, {n_reps} resamples); black tick: point estimate; dot: no CI. "
    f"P({style.label(reference)} > method): the chance that a {style.label(reference)} run "
    "beats a run of the method on a task drawn at random.",
    f"{len(scores.tasks)} task{'s' if len(scores.tasks) != 1 else ''} ({task_names}), "
    f"{runs_text}.",
]
if len(scores.tasks) == 1:
    notes.append("One task only: the aggregates are over its runs, not across tasks, and say "
                 "nothing about other tasks.")
few = [style.label(m) for m, n in n_runs.items() if n < 2]
if few:
    notes.append(f"One run per task, so no interval: {', '.join(few)}.")
small = [style.label(m) for m, n in n_runs.items() if 2 <= n < 4]
if small:
    notes.append(f"With fewer than 4 runs per task ({', '.join(small)}), the bootstrap "
                 "resamples so few runs that its intervals are rough and too narrow.")
notes += notes_left_out
# "Not in these runs" names the methods without any run; those left out are explained above.
without_runs = [m for m in METHODS if m not in set(data["objective"])]
print(style.finish(fig, fig_path, title="Figure 6: aggregate performance across tasks",
                   preset=preset, commit=commit, notes=notes,
                   expected=style.order([*methods, *without_runs]), present=methods))

# %% [markdown]
# ## The table

# %%
caption = (
    r"Aggregate performance across tasks (preset \texttt{\TomPreset}), after Agarwal et al. "
    r"(2021): the interquartile mean (IQM), the mean and the optimality gap (the shortfall "
    r"below 1; lower is better) of the normalised final scores of all runs and tasks, and the "
    rf"probability that a run of {tables.latex_escape(style.label(reference))} beats a run of "
    r"the method on a task drawn at random, each with its 95\,\% stratified percentile-bootstrap "
    rf"interval ({n_reps} resamples of the runs within each task). A run's score is the mean "
    rf"of its last {last_k} evaluation returns{fewer}, min--max normalised per task: 0 is the "
    r"lowest "
    r"evaluation return of any run on that task (at any step), 1 the highest final score of "
    rf"any run on it. {len(scores.tasks)} task{'s' if len(scores.tasks) != 1 else ''} "
    rf"({tables.latex_escape(task_names)}); runs per task in the second column.")
extra = [n for n in notes[2:] if n]
if extra:
    caption += " " + " ".join(tables.markdown_to_latex(n) for n in extra)
text = ("% Generated by notebooks/fig6_reliable.py from results/summary/returns.csv.\n"
        + tables.table_float(tables.reliable_table(intervals, improvements, reference), caption,
                             "tab:reliable"))
atomic_write(Path(table_path), lambda fh: fh.write(text))
print(text)
