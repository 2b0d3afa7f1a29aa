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
# # Figure 3: evaluation return against real environment steps
#
# Claim 3 of the paper (ALGORITHM.md §8): TOM reaches higher return with fewer real steps
# than MBPO (MLE), PMAC and VaGraM. One panel per task; each line is the mean over seeds of
# the deterministic evaluation return, the band its 95 % percentile-bootstrap interval over
# seeds (no band where a method has a single seed). Methods without runs are named under the
# figure. Input: `results/summary/returns.csv` only.

# %% tags=["parameters"]
summary_dir = "results/summary"
fig_path = "figures/fig3.pdf"
preset = "unknown"
commit = "unknown"

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import EngFormatter

from tom.analysis import stats, style

style.setup()
METHODS = ["tom", "mle", "pmac", "vagram"]  # the comparison of Figure 3 (ablations: Figure 5)

returns = pd.read_csv(Path(summary_dir) / "returns.csv")
data = returns[returns["objective"].isin(METHODS)]
curves = stats.summarise(data, ["env", "objective", "env_steps"], "return_mean")
seeds = data.groupby(["env", "objective"])["seed"].nunique()
envs = style.task_order(data["env"].unique())
present = style.order(data["objective"].unique())
print(f"tasks: {envs}; methods: {present}")
seeds.unstack()

# %% [markdown]
# Final evaluation return per task and method (mean and 95 % bootstrap CI over seeds):

# %%
final = curves.loc[curves.groupby(["env", "objective"])["env_steps"].idxmax()]
final[["env", "objective", "env_steps", "n", "mean", "ci_lo", "ci_hi"]].round(1)

# %%
def draw_curves(ax, env: str, methods: list[str]) -> list[str]:
    """Mean line and bootstrap band per method; returns the methods drawn."""
    drawn = []
    for method in methods:
        c = curves[(curves["env"] == env) & (curves["objective"] == method)]
        if c.empty:
            continue
        style.plot_curve(ax, c, method, int(seeds.get((env, method), 0)),
                         slot=methods.index(method), n_slots=len(methods))
        drawn.append(method)
    ax.set_title(style.task_label(env))
    ax.set_xlabel("real environment steps")
    ax.set_ylabel("evaluation return")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    return drawn


ncols = min(max(len(envs), 1), 3)
nrows = max(1, -(-len(envs) // ncols))
fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.6 * ncols, 5.0), 2.9 * nrows),
                         squeeze=False)
single_seed = []
for ax, env in zip(axes.flat, envs, strict=False):
    for method in draw_curves(ax, env, present):
        if seeds.get((env, method), 0) == 1:
            single_seed.append(f"{style.task_label(env)}/{style.label(method)}")
for ax in axes.flat[len(envs):]:
    ax.set_visible(False)
if not envs:
    axes[0, 0].set_visible(True)
    axes[0, 0].text(0.5, 0.5, "no runs of " + ", ".join(map(style.label, METHODS)),
                    ha="center", va="center", transform=axes[0, 0].transAxes)
    axes[0, 0].set_axis_off()

notes = [f"Mean over seeds ({style.seeds_note(seeds.to_dict())}); "
         "band or bars: 95 % bootstrap CI over seeds."]
if single_seed:
    notes.append(f"One seed only (no band): {', '.join(single_seed)}.")
print(style.finish(fig, fig_path, title="Figure 3: evaluation return vs real environment steps",
                   preset=preset, commit=commit, notes=notes, expected=METHODS,
                   present=present))
