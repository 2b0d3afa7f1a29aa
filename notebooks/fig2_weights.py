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
# # Figure 2: where TOM puts its weight in the replay buffer
#
# Claim 1 of the paper (ALGORITHM.md §8): TOM's weights concentrate on recent,
# policy-relevant transitions. At every model refit each run records the mean fit weight,
# relative to the buffer's mean weight, in equal-width bins of transition age (0 = newest);
# uniform weighting (MBPO's MLE) is 1 in every bin, PMAC decays geometrically with the number
# of policy updates since a transition was collected.
#
# Left: the profile over the buffer in the second half of training (refits averaged per seed,
# then mean and 95 % bootstrap CI over seeds). Middle: the relative weight of the newest bin
# over training. Right: how concentrated the weights are, as the normalised effective sample
# size (Σw)²/(n Σw²) (1: uniform) of the model fit's weights (solid; TOM's are clipped at
# `tom.w_max`) and of the rollout start weights (dashed, where they differ: TOM's unclipped).
# Input: `results/summary/weights.csv` and `model_error.csv`.

# %% tags=["parameters"]
summary_dir = "results/summary"
fig_path = "figures/fig2.pdf"
preset = "unknown"
commit = "unknown"

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import EngFormatter, PercentFormatter

from tom.analysis import stats, style

style.setup()
METHODS = ["tom", "pmac", "mle"]  # TOM, PMAC and uniform weighting

weights = pd.read_csv(Path(summary_dir) / "weights.csv")
model_error = pd.read_csv(Path(summary_dir) / "model_error.csv")
data = weights[weights["objective"].isin(METHODS)].copy()
# Position of each bin's centre as a fraction of the buffer at that refit (0 = newest).
size = data.groupby(["env", "objective", "seed", "env_steps"])["age_hi"].transform("max")
data["age_frac"] = (data["age_lo"] + data["age_hi"]) / 2 / size
envs = style.task_order(data["env"].unique())
present = style.order(data["objective"].unique())
n_bins = int(data["age_bin"].max()) + 1 if len(data) else 0
seeds = data.groupby(["env", "objective"])["seed"].nunique()
print(f"tasks: {envs}; methods: {present}; {n_bins} age bins")

# %%
# Second half of training: refits at or after the midpoint of each task's refit steps.
midpoint = data.groupby("env")["env_steps"].transform(lambda s: (s.min() + s.max()) / 2)
late = data[data["env_steps"] >= midpoint]
per_seed = late.groupby(["env", "objective", "seed", "age_bin"], as_index=False).agg(
    mean_weight=("mean_weight", "mean"), age_frac=("age_frac", "mean"))
profile = stats.summarise(per_seed, ["env", "objective", "age_bin"], "mean_weight")
profile = profile.merge(per_seed.groupby(["env", "objective", "age_bin"], as_index=False)
                        ["age_frac"].mean(), on=["env", "objective", "age_bin"])
newest = stats.summarise(data[data["age_bin"] == 0], ["env", "objective", "env_steps"],
                         "mean_weight")
concentration = model_error[model_error["objective"].isin(METHODS)]
ess = {col: stats.summarise(concentration.dropna(subset=[col]), ["env", "objective", "env_steps"],
                            col) for col in ("weight_ess", "start_weight_ess")}
profile.round(3)

# %%
fig, axes = plt.subplots(max(len(envs), 1), 3, figsize=(12, 2.8 * max(len(envs), 1)),
                         squeeze=False)
newest_share = f"{100 / max(n_bins, 1):.0f} %"
axes[0, 0].set_title("weight by transition age, 2nd half of training")
axes[0, 1].set_title(f"weight on the newest {newest_share} of the buffer")
axes[0, 2].set_title("effective sample size of the weights")
for row, env in zip(axes, envs, strict=False):
    ax_p, ax_t, ax_e = row
    for method in present:
        p = profile[(profile["env"] == env) & (profile["objective"] == method)]
        t = newest[(newest["env"] == env) & (newest["objective"] == method)]
        if p.empty:
            continue
        c = style.color(method)
        ax_p.plot(p["age_frac"], p["mean"], color=c, marker="o", ms=3, lw=1.8)
        n = int(seeds.get((env, method), 0))
        if n > 1:
            ax_p.fill_between(p["age_frac"], p["ci_lo"], p["ci_hi"], color=c, alpha=0.2, lw=0)
        style.plot_curve(ax_t, t, method, n, slot=present.index(method), n_slots=len(present))
        fit_ess = ess["weight_ess"]
        fit_ess = fit_ess[(fit_ess["env"] == env) & (fit_ess["objective"] == method)]
        start_ess = ess["start_weight_ess"]
        start_ess = start_ess[(start_ess["env"] == env) & (start_ess["objective"] == method)]
        if not fit_ess.empty:
            style.plot_curve(ax_e, fit_ess, method, n, slot=present.index(method),
                             n_slots=len(present))
        differs = fit_ess[["env_steps", "mean"]].merge(start_ess[["env_steps", "mean"]],
                                                      on="env_steps")
        if not start_ess.empty and (differs["mean_x"] - differs["mean_y"]).abs().max() > 1e-6:
            ax_e.plot(start_ess["env_steps"], start_ess["mean"], color=c, lw=1.4, ls="--",
                      marker="o" if len(start_ess) <= 3 else None, ms=3)
    for ax in row:
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
        ax.set_ylabel("mean weight / buffer mean")
    ax_e.set_ylabel("normalised ESS")
    ax_e.set_ylim(0, 1.05)
    ax_e.set_xlabel("real environment steps")
    ax_e.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax_p.set_ylabel(f"{style.task_label(env)}\nmean weight / buffer mean")
    ax_p.set_xlabel("transition age (share of the buffer, 0 = newest)")
    ax_p.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax_t.set_xlabel("real environment steps")
    ax_t.xaxis.set_major_formatter(EngFormatter(sep=""))
if not envs:
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].text(0.5, 0.5, "no runs of " + ", ".join(map(style.label, METHODS)),
                    ha="center", va="center", transform=axes[0, 0].transAxes)

notes = [f"Mean over seeds ({style.seeds_note(seeds.to_dict())}); band: 95 % bootstrap CI "
         "over seeds (band or bars). Dotted: uniform weighting (1). Right, dashed: rollout "
         "start weights where they differ from the fit's (TOM: unclipped)."]
print(style.finish(fig, fig_path, title="Figure 2: mean model-fit weight by transition age",
                   preset=preset, commit=commit, notes=notes, expected=METHODS,
                   present=present))
