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
# # Figure 5: ablations of TOM
#
# Claim 4 of the paper (ALGORITHM.md §8): the discriminator reward beats the binary reward.
# Left: TOM against `tom-nodisc` (dual reward ρ = 1 on the recent window, 0 elsewhere,
# instead of the discriminator's log-odds). Right: TOM against `tom-kl` (KL instead of χ² as
# the dual's f-divergence). Evaluation return, mean over seeds and 95 % bootstrap CI, on the
# tasks where the ablations ran. Input: `results/summary/returns.csv` only.

# %% tags=["parameters"]
summary_dir = "results/summary"
fig_path = "figures/fig5.pdf"
preset = "unknown"
commit = "unknown"

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import EngFormatter

from tom.analysis import stats, style

style.setup()
COMPARISONS = [("tom-nodisc", "discriminator vs binary reward"),
               ("tom-kl", "χ² vs KL dual")]
METHODS = ["tom"] + [variant for variant, _ in COMPARISONS]

returns = pd.read_csv(Path(summary_dir) / "returns.csv")
data = returns[returns["objective"].isin(METHODS)]
# The ablation tasks: those with at least one ablation variant.
envs = style.task_order(data.loc[data["objective"] != "tom", "env"].unique())
data = data[data["env"].isin(envs)]
present = style.order(data["objective"].unique())
seeds = data.groupby(["env", "objective"])["seed"].nunique()
curves = stats.summarise(data, ["env", "objective", "env_steps"], "return_mean")
final = curves.loc[curves.groupby(["env", "objective"])["env_steps"].idxmax()]
final[["env", "objective", "env_steps", "n", "mean", "ci_lo", "ci_hi"]].round(1)

# %%
nrows = max(len(envs), 1)
fig, axes = plt.subplots(nrows, len(COMPARISONS), figsize=(7.4, 2.7 * nrows), squeeze=False)
for j, (variant, title) in enumerate(COMPARISONS):
    axes[0, j].set_title(title)
    for i, env in enumerate(envs):
        ax = axes[i, j]
        for slot, method in enumerate(("tom", variant)):
            c = curves[(curves["env"] == env) & (curves["objective"] == method)]
            if c.empty:
                ax.text(0.5, 0.04 if method == "tom" else 0.12,
                        f"no runs of {style.label(method)}", transform=ax.transAxes,
                        ha="center", fontsize=8, color=style.color(method))
                continue
            style.plot_curve(ax, c, method, int(seeds.get((env, method), 0)), slot=slot,
                             n_slots=2)
        ax.set_ylabel(f"{style.task_label(env)}\nevaluation return" if j == 0 else "")
        ax.set_xlabel("real environment steps" if i == nrows - 1 else "")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
if not envs:
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].text(0.5, 0.5, "no ablation runs (tom-nodisc, tom-kl)", ha="center",
                    va="center", transform=axes[0, 0].transAxes)

notes = [f"Mean over seeds ({style.seeds_note(seeds.to_dict())}); band or bars: 95 % bootstrap CI."]
print(style.finish(fig, fig_path, title="Figure 5: ablations of TOM",
                   preset=preset, commit=commit, notes=notes, expected=METHODS,
                   present=present))
