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
# # Figure 4: model error on the current policy's transitions
#
# Claim 2 of the paper (ALGORITHM.md §8): TOM's model is more accurate than MLE's on the
# transitions the current policy visits. Before every refit, each run measures the model on
# the recent window D^π (the newest real transitions, which the model has not been fit on
# yet): the mean squared error of the predicted mean state change, in units of the target's
# standard deviation (`model_error_recent`), and the negative log-likelihood
# (`model_nll_recent`). Mean over seeds and 95 % bootstrap CI. Input:
# `results/summary/model_error.csv` only.

# %% tags=["parameters"]
summary_dir = "results/summary"
fig_path = "figures/fig4.pdf"
preset = "unknown"
commit = "unknown"

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import EngFormatter

from tom.analysis import stats, style

style.setup()
METHODS = ["tom", "mle"]
PANELS = [("model_error_recent", "MSE of predicted Δs\n(standardised units)", True),
          ("model_nll_recent", "NLL of (r, Δs)\n(nats, standardised)", False)]

errors = pd.read_csv(Path(summary_dir) / "model_error.csv")
data = errors[errors["objective"].isin(METHODS)]
envs = style.task_order(data["env"].unique())
present = style.order(data["objective"].unique())
seeds = data.groupby(["env", "objective"])["seed"].nunique()
curves = {col: stats.summarise(data.dropna(subset=[col]), ["env", "objective", "env_steps"], col)
          for col, _, _ in PANELS}
curves["model_error_recent"].round(4)

# %% [markdown]
# Mean over training of the recent-window error, TOM relative to MLE per task (below 1: TOM's
# model is more accurate on the current policy's transitions):

# %%
per_run = data.groupby(["env", "objective", "seed"])["model_error_recent"].mean().reset_index()
ratio = per_run.groupby(["env", "objective"])["model_error_recent"].mean().unstack()
if {"tom", "mle"} <= set(ratio.columns):
    ratio["tom / mle"] = ratio["tom"] / ratio["mle"]
ratio.round(3)

# %%
# A log axis for a row whose values span more than a factor of 20 (the same for every task).
log_rows = {}
for col, _, log in PANELS:
    values = curves[col][["ci_lo", "ci_hi", "mean"]].to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    log_rows[col] = bool(log and values.size and values.max() / values.min() > 20)

def clip_to_means(ax, c: pd.DataFrame) -> bool:
    """Keep a linear axis on the mean curves when a CI band runs far off (one seed's spike
    would otherwise flatten every curve); returns whether it clipped."""
    means = c["mean"].to_numpy(dtype=float)
    band = c[["ci_lo", "ci_hi"]].to_numpy(dtype=float)
    means, band = means[np.isfinite(means)], band[np.isfinite(band)]
    if not means.size or not band.size:
        return False
    lo, hi = means.min(), means.max()
    pad = max(hi - lo, 1e-9) * 0.6
    if band.min() >= lo - 2 * pad and band.max() <= hi + 2 * pad:
        return False
    ax.set_ylim(max(lo - pad, band.min()), min(hi + pad, band.max()))
    return True


clipped: list[str] = []
ncols = max(len(envs), 1)
fig, axes = plt.subplots(len(PANELS), ncols, figsize=(max(3.6 * ncols, 5.0), 2.6 * len(PANELS)),
                         squeeze=False)
for j, env in enumerate(envs):
    for i, (col, ylabel, log) in enumerate(PANELS):
        ax = axes[i, j]
        for method in present:
            c = curves[col]
            c = c[(c["env"] == env) & (c["objective"] == method)]
            if c.empty:
                continue
            style.plot_curve(ax, c, method, int(seeds.get((env, method), 0)),
                             slot=present.index(method), n_slots=len(present))
        if log and log_rows[col]:
            ax.set_yscale("log")
        elif clip_to_means(ax, curves[col][curves[col]["env"] == env]):
            clipped.append(f"{style.task_label(env)} {col.split('_')[1].upper()}")
        if i == 0:
            ax.set_title(style.task_label(env))
        ax.set_ylabel(ylabel if j == 0 else "")
        ax.set_xlabel("real environment steps" if i == len(PANELS) - 1 else "")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
if not envs:
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].text(0.5, 0.5, "no runs of TOM or MLE", ha="center", va="center",
                    transform=axes[0, 0].transAxes)

notes = [f"Measured before each refit on the newest real transitions (mean over seeds, "
         f"{style.seeds_note(seeds.to_dict())}; band or bars: 95 % bootstrap CI)."]
if clipped:
    notes.append(f"Axis kept on the means, bands cut off: {', '.join(clipped)}.")
print(style.finish(fig, fig_path, title="Figure 4: model error on the current policy's transitions",
                   preset=preset, commit=commit, notes=notes, expected=METHODS,
                   present=present))
