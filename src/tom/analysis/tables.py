"""LaTeX tables from the tidy summaries (used by ``notebooks/tables.py``).

Each function takes summary frames and returns the text of one ``.tex`` file that
``paper/main.tex`` inputs: a complete table (booktabs; the hyperparameters as a longtable)
with its caption, so the report needs no editing when the runs change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from tom.analysis import stats
from tom.analysis.style import label, order, short_commit, task_label, task_order

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
COMPONENTS = {"sac": "SAC", "model": "Dynamics model", "rollout": "Model rollouts",
              "schedule": "Schedule and budget", "tom": "TOM weights", "pmac": "PMAC weights",
              "vagram": "VaGraM loss"}


# The few non-ASCII symbols of our prose, so the report builds with plain pdflatex.
_LATEX_SYMBOLS = {"χ": r"$\chi$", "²": r"\textsuperscript{2}", "½": r"$\tfrac12$", "−": "$-$",
                  "≥": r"$\ge$", "≤": r"$\le$", "×": r"$\times$", "∝": r"$\propto$",
                  "Δ": r"$\Delta$", "ρ": r"$\rho$", "σ": r"$\sigma$", "≈": r"$\approx$",
                  "⌊": r"$\lfloor$", "⌋": r"$\rfloor$"}


def latex_escape(text: object) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def markdown_to_latex(text: str) -> str:
    """One line of our Markdown prose (plain text, `code` spans, a few symbols) as LaTeX."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        raise ValueError(f"unbalanced backticks in {text!r}")
    out = []
    for i, part in enumerate(parts):
        escaped = latex_escape(part)
        if i % 2:
            out.append(r"\texttt{" + escaped + "}")
        else:
            out.append("".join(_LATEX_SYMBOLS.get(ch, ch) for ch in escaped))
    return "".join(out)


def deviations_list(items: Sequence[str]) -> str:
    """The deviations from the paper's code (`tom.deviations`) as a short itemised list."""
    lines = [r"\paragraph{Deviations from the paper's code.}", r"\begin{itemize}"]
    lines += [r"\item " + markdown_to_latex(item) for item in items]
    lines.append(r"\end{itemize}")
    return "\n".join(lines)


def digits_for(x: float) -> int:
    """Decimals by magnitude: 1234 -> 0, 12.3 -> 1, 1.23 -> 2."""
    ax = abs(x) if x is not None and math.isfinite(x) else 0.0
    return 0 if ax >= 100 else 1 if ax >= 10 else 2


def fmt(x: float, digits: int | None = None) -> str:
    """A number for a table: precision by magnitude (or ``digits``), thin-space thousands,
    '--' for NaN. Pass the same ``digits`` to numbers that are read together (mean ± std)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "--"
    if digits is None:
        digits = digits_for(x)
    text = f"{x:,.{digits}f}"
    return text.replace(",", r"\,").replace("-", "$-$")


def fmt_steps(steps: float) -> str:
    """100000 -> '100k', 1500000 -> '1.5M'."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if steps >= size:
            value = steps / size
            return f"{value:.0f}{unit}" if value.is_integer() else f"{value:.1f}{unit}"
    return f"{steps:.0f}"


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- returns at fixed step budgets --------------------------------------------------------------


def returns_at_budgets(returns: pd.DataFrame, budgets: Iterable[int]) -> pd.DataFrame:
    """Per run and budget: the last evaluation at or before the budget.

    A run that stopped before a budget has no value there (it is not extrapolated).
    Columns: env, objective, seed, budget, env_steps, return_mean.
    """
    rows = []
    for (env, obj, seed), run in returns.groupby(["env", "objective", "seed"]):
        run = run.sort_values("env_steps")
        for budget in budgets:
            if run["env_steps"].max() < budget:
                continue
            at = run[run["env_steps"] <= budget]
            if at.empty:
                continue
            last = at.iloc[-1]
            rows.append({"env": env, "objective": obj, "seed": seed, "budget": int(budget),
                         "env_steps": int(last["env_steps"]),
                         "return_mean": float(last["return_mean"])})
    return pd.DataFrame(rows, columns=["env", "objective", "seed", "budget", "env_steps",
                                       "return_mean"])


IQM_MIN_SEEDS = 4  # below, int(0.25 n) = 0 seeds are trimmed at each end: the IQM is the mean


def shows_iqm(summary: pd.DataFrame) -> bool:
    """Whether the returns table has an IQM column: only if some task, method and budget has
    at least ``IQM_MIN_SEEDS`` seeds (with fewer the IQM trims nothing and equals the mean)."""
    return bool((summary["n"] >= IQM_MIN_SEEDS).any())


def returns_table(returns: pd.DataFrame, budgets: Sequence[int], n_boot: int = stats.N_BOOT
                  ) -> tuple[str, pd.DataFrame]:
    """Mean ± std, and IQM [95 % CI] where it differs from the mean (``shows_iqm``), of the
    return per task, method and budget (LaTeX, data). Caption: ``returns_caption``."""
    at = returns_at_budgets(returns, budgets)
    summary = stats.summarise(at, ["env", "objective", "budget"], "return_mean", n_boot=n_boot)
    show_iqm = shows_iqm(summary)
    per_budget = 2 if show_iqm else 1
    envs = task_order(returns["env"].unique())
    cols = "ll" + "r" * per_budget * len(budgets)
    head1 = " & ".join([r"\multicolumn{" + str(per_budget) + "}{c}{" + fmt_steps(b)
                        + " real steps}" for b in budgets])
    rules = "".join(rf"\cmidrule(lr){{{3 + per_budget * i}-{2 + per_budget * (i + 1)}}}"
                    for i in range(len(budgets)))
    head2 = " & ".join([r"mean $\pm$ std" + (r" & IQM [95\,\% CI]" if show_iqm else "")]
                       * len(budgets))
    lines = [r"\begin{tabular}{" + cols + "}", r"\toprule",
             rf" & & {head1} \\", rules, rf"Task & Method & {head2} \\", r"\midrule"]
    for k, env in enumerate(envs):
        methods = order(returns.loc[returns["env"] == env, "objective"].unique())
        # One precision per task, from its largest mean, so a column reads evenly.
        d = digits_for(summary.loc[summary["env"] == env, "mean"].abs().max())
        best: dict[int, set[str]] = {}  # highest mean per budget (ties: all, or none if all tie)
        for b in budgets:
            s = summary[(summary["env"] == env) & (summary["budget"] == b)]
            if len(s) > 1 and s["mean"].notna().any():
                top = set(s.loc[np.isclose(s["mean"], s["mean"].max()), "objective"])
                best[b] = top if len(top) < len(s) else set()
        for i, method in enumerate(methods):
            cells = [latex_escape(task_label(env)) if i == 0 else "", latex_escape(label(method))]
            for b in budgets:
                s = summary[(summary["env"] == env) & (summary["objective"] == method)
                            & (summary["budget"] == b)]
                if s.empty:
                    cells += ["--"] * per_budget
                    continue
                r = s.iloc[0]
                mean = fmt(r["mean"], d) + (rf" $\pm$ {fmt(r['std'], d)}" if r["n"] > 1 else "")
                if method in best.get(b, ()):
                    mean = r"\textbf{" + mean + "}"
                cells.append(mean)
                if show_iqm:
                    cells.append(fmt(r["iqm"], d)
                                 + (f" [{fmt(r['iqm_lo'], d)}, {fmt(r['iqm_hi'], d)}]"
                                    if r["n"] > 1 else ""))
            lines.append(" & ".join(cells) + r" \\")
        if k < len(envs) - 1:
            lines.append(r"\midrule")
    if not envs:
        lines.append(r"\multicolumn{" + str(len(cols)) + r"}{c}{no runs} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines), summary


def returns_caption(summary: pd.DataFrame, unreached: Sequence[int] = ()) -> str:
    """The caption of ``returns_table``: what the columns are, and why the IQM is missing when
    it is; ``unreached``: budgets beyond every run."""
    text = (r"Evaluation return at fixed real-step budgets (preset \texttt{\TomPreset}): mean "
            r"$\pm$ standard deviation over seeds")
    if shows_iqm(summary):
        text += (r", and the interquartile mean (IQM) with its 95\,\% percentile-bootstrap "
                 r"interval over seeds")
        if (summary["n"] < IQM_MIN_SEEDS).any():
            text += (rf" (with fewer than {IQM_MIN_SEEDS} seeds the IQM trims nothing and "
                     r"equals the mean)")
    text += r". Bold: highest mean per task and budget. --: no run of that task reached the budget."
    if not shows_iqm(summary) and len(summary):
        most = int(summary["n"].max())
        text += (rf" No interquartile mean (IQM) column: with {most} seed"
                 f"{'s' if most != 1 else ''} or fewer per task and method it trims "
                 rf"$\lfloor n/4\rfloor = 0$ seeds at each end and equals the mean (it needs "
                 rf"at least {IQM_MIN_SEEDS} seeds).")
    if unreached:
        names = ", ".join(fmt_steps(b) for b in unreached)
        text += (f" The {names} budget{'s are' if len(unreached) > 1 else ' is'} beyond every "
                 "run of this preset.")
    return text


# -- aggregate metrics across tasks (Figure 6) -------------------------------------------------


def _with_ci(value: float, lo: float, hi: float, digits: int = 2) -> str:
    """'0.62 [0.48, 0.73]', or the value alone where there is no interval."""
    text = fmt(value, digits)
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{fmt(lo, digits)}, {fmt(hi, digits)}]"
    return text


def reliable_table(intervals: pd.DataFrame, improvements: pd.DataFrame,
                   reference: str = "tom") -> str:
    """One row per method: runs per task, IQM, mean and optimality gap of the normalised
    scores and P(reference > method), each with its 95 % interval (``stats.aggregate_intervals``
    and ``stats.improvement_probabilities``)."""
    ref = latex_escape(label(reference))
    lines = [r"\begin{tabular}{lrrrrr}", r"\toprule",
             r" & & \multicolumn{3}{c}{normalised score [95\,\% CI]} & \\",
             r"\cmidrule(lr){3-5}",
             r"Method & Runs per task & IQM & Mean & Optimality gap & "
             rf"P({ref} $>$ method) [95\,\% CI] \\", r"\midrule"]
    methods = order(intervals["method"].unique())
    for method in methods:
        m = intervals[intervals["method"] == method].set_index("metric")
        cells = [latex_escape(label(method)), str(int(m["n_runs"].iloc[0]))]
        cells += [_with_ci(m.loc[k, "value"], m.loc[k, "ci_lo"], m.loc[k, "ci_hi"])
                  for k in stats.METRICS]
        p = improvements[improvements["baseline"] == method]
        cells.append(_with_ci(*p[["value", "ci_lo", "ci_hi"]].iloc[0]) if len(p) else "--")
        lines.append(" & ".join(cells) + r" \\")
    if not methods:
        lines.append(r"\multicolumn{6}{c}{no method ran on every task} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


# -- hyperparameters ----------------------------------------------------------------------------


def _describe(pairs: set[tuple[str, str]], everything: set[tuple[str, str]]) -> str:
    """Name a set of (task, objective) pairs as tasks, objectives, or explicit pairs."""
    envs = {e for e, _ in everything}
    objs = {o for _, o in everything}
    by_env = [e for e in task_order(envs)
              if {p for p in everything if p[0] == e} <= pairs]
    if pairs == {p for p in everything if p[0] in by_env}:
        return ", ".join(task_label(e) for e in by_env)
    by_obj = [o for o in order(objs) if {p for p in everything if p[1] == o} <= pairs]
    if pairs == {p for p in everything if p[1] in by_obj}:
        return ", ".join(by_obj)
    return ", ".join(f"{task_label(e)}/{o}" for e, o in sorted(pairs))


def _value_cell(values: dict[tuple[str, str], str]) -> str:
    """'300; Hopper: 125': the most common value, then the exceptions and where they apply."""
    groups: dict[str, set] = {}
    for pair, value in values.items():
        groups.setdefault(value, set()).add(pair)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    everything = set(values)
    text = _display(ranked[0][0])
    for value, pairs in ranked[1:]:
        text += f"; {latex_escape(_describe(pairs, everything))}: {_display(value)}"
    return text


def _display(value: str) -> str:
    if value == "":
        return "--"
    if re.fullmatch(r"-?\d{5,}", value):
        return fmt(float(value), 0)
    return latex_escape(value)


def hyperparameter_table(configs: pd.DataFrame, preset: str) -> tuple[str, pd.DataFrame]:
    """Every resolved hyperparameter of the runs against the paper preset (longtable)."""
    per_pair = (configs.groupby(["env", "objective", "key"], sort=False)
                .agg(value=("value", lambda v: " / ".join(sorted(set(map(str, v))))),
                     paper_value=("paper_value", lambda v: str(v.fillna("").iloc[0])),
                     deviates=("deviates", lambda v: bool(np.any(v.astype(str) == "True"))))
                .reset_index())
    lines = [r"\begin{longtable}{lp{0.3\linewidth}p{0.34\linewidth}}",
             r"\caption{Hyperparameters of these runs (preset \texttt{" + latex_escape(preset)
             + r"}), read from each run's resolved \texttt{config.json}, against the paper "
             r"preset (ALGORITHM.md \S7) for the same task and objective. $\dagger$: differs "
             r"from the paper preset. Where a value depends on the task or objective, the "
             r"most common value is listed first, then the exceptions.}"
             r"\label{tab:hyperparameters}\\",
             r"\toprule", r"Key & Paper preset & These runs \\", r"\midrule", r"\endfirsthead",
             r"\toprule", r"Key & Paper preset & These runs \\", r"\midrule", r"\endhead",
             r"\bottomrule", r"\endlastfoot"]
    rows = []
    keys = list(dict.fromkeys(per_pair["key"]))
    section = None
    for key in keys:
        k = per_pair[per_pair["key"] == key]
        component = key.split(".")[0] if "." in key else ""
        if component != section:
            section = component
            name = COMPONENTS.get(component, component or "Run")
            lines.append(r"\multicolumn{3}{l}{\textit{" + latex_escape(name) + r"}} \\")
        pairs = list(zip(k["env"], k["objective"], strict=True))
        run_cell = _value_cell(dict(zip(pairs, k["value"], strict=True)))
        paper_cell = _value_cell(dict(zip(pairs, k["paper_value"], strict=True)))
        deviates = bool(k["deviates"].any())
        if deviates:
            run_cell = r"\textbf{" + run_cell + r"}\,$\dagger$"
        short = key.split(".", 1)[-1]
        lines.append(rf"\quad\texttt{{{latex_escape(short)}}} & {paper_cell} & {run_cell} \\")
        rows.append({"key": key, "paper": paper_cell, "runs": run_cell, "deviates": deviates})
    if not keys:
        lines.append(r"\multicolumn{3}{c}{no runs} \\")
    lines.append(r"\end{longtable}")
    return "\n".join(lines), pd.DataFrame(rows, columns=["key", "paper", "runs", "deviates"])


# -- compute ------------------------------------------------------------------------------------


def compute_table(compute: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Wall time, real steps per second and where the time goes, per task and method."""
    df = compute.copy()
    for phase in ("objective", "model", "sac"):
        df[f"share_{phase}"] = df[f"time_{phase}"] / df["wall_time_s"]
    agg = (df.groupby(["env", "objective"])
           .agg(n=("seed", "nunique"), device=("device", lambda d: "/".join(sorted(set(d)))),
                steps=("env_steps_total", "max"), wall=("wall_time_s", "mean"),
                wall_std=("wall_time_s", "std"), sps=("steps_per_s", "mean"),
                sps_std=("steps_per_s", "std"), share_objective=("share_objective", "mean"),
                share_model=("share_model", "mean"), share_sac=("share_sac", "mean"))
           .reset_index())
    lines = [r"\begin{tabular}{llrlrrrrrr}", r"\toprule",
             r" & & & & & & & \multicolumn{3}{c}{share of wall time} \\",
             r"\cmidrule(lr){8-10}",
             r"Task & Method & Seeds & Device & Real steps & Wall time & Real steps/s & "
             r"Objective & Model fit & SAC \\", r"\midrule"]
    envs = task_order(agg["env"].unique())
    for k, env in enumerate(envs):
        rows = agg[agg["env"] == env].set_index("objective")
        for i, method in enumerate(order(rows.index)):
            r = rows.loc[method]
            wall = fmt_duration(r["wall"])
            sps = fmt(r["sps"])
            if r["n"] > 1:
                sps += rf" $\pm$ {fmt(r['sps_std'], digits_for(r['sps']))}"
            cells = [latex_escape(task_label(env)) if i == 0 else "",
                     latex_escape(label(method)), str(int(r["n"])), latex_escape(r["device"]),
                     fmt(r["steps"], 0), wall, sps,
                     *(fmt(100 * r[f"share_{p}"], 0) + r"\,\%"
                       for p in ("objective", "model", "sac"))]
            lines.append(" & ".join(cells) + r" \\")
        if k < len(envs) - 1:
            lines.append(r"\midrule")
    if not envs:
        lines.append(r"\multicolumn{10}{c}{no runs} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines), agg


# -- provenance ---------------------------------------------------------------------------------


def provenance_macros(preset: str, commit: str, provenance: dict,
                      expected_methods: Iterable[str] = ()) -> str:
    """\\newcommand macros naming the preset, commits and what the runs cover."""
    present = provenance.get("objectives", [])
    missing = [label(m) for m in expected_methods if m not in present]
    runs_commits = ", ".join(short_commit(c) for c in provenance.get("commits", [])) or "none"
    macros = {
        "TomPreset": preset,
        "TomCommit": short_commit(commit),
        "TomRunsPreset": provenance.get("preset", "none"),
        "TomRunsCommit": runs_commits,
        "TomRuns": str(provenance.get("n_runs", 0)),
        "TomTasks": ", ".join(task_label(e) for e in task_order(provenance.get("envs", [])))
                    or "none",
        "TomMethods": ", ".join(label(m) for m in order(present)) or "none",
        "TomSeeds": ", ".join(map(str, provenance.get("seeds", []))) or "none",
        "TomMissingMethods": ", ".join(missing) or "none",
    }
    lines = ["% Generated by notebooks/tables.py: provenance of the figures and tables."]
    lines += [rf"\newcommand{{\{name}}}{{{latex_escape(value)}}}"
              for name, value in macros.items()]
    return "\n".join(lines) + "\n"


def table_float(body: str, caption: str, label_: str, small: bool = True) -> str:
    """Wrap a tabular in a centred table float with caption, scaled to the text width."""
    return "\n".join([
        r"\begin{table}[htbp]", r"\centering", r"\small" if small else "",
        r"\caption{" + caption + "}", r"\label{" + label_ + "}",
        # Shrink a table wider than the text to fit; never enlarge a narrow one.
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", body, "}",
        r"\end{table}", ""])
