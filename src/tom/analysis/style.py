"""One look for every figure: method order, colours and labels, seaborn theme, provenance.

Every notebook draws with these, so a method has the same colour in every figure, and every
PDF names the preset and the git commit it was made from (in its metadata and in a footer).
Colours are the Okabe–Ito palette (readable with the common colour-vision deficiencies).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterable
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from tom.atomic import atomic_write

# Order in legends and tables: the method, the baselines, then the ablation variants.
METHODS = ("tom", "mle", "pmac", "vagram", "tom-nodisc", "tom-kl")
LABELS = {
    "tom": "TOM",
    "mle": "MBPO (MLE)",
    "pmac": "PMAC",
    "vagram": "VaGraM",
    "tom-nodisc": "TOM (binary reward)",
    "tom-kl": "TOM (KL dual)",
}
COLORS = {
    "tom": "#D55E00",  # vermillion
    "mle": "#0072B2",  # blue
    "pmac": "#009E73",  # bluish green
    "vagram": "#CC79A7",  # reddish purple
    "tom-nodisc": "#000000",  # black (orange was too close to TOM's vermillion in Figure 5)
    "tom-kl": "#56B4E9",  # sky blue
}
_OTHER = ("#555555", "#999999", "#E69F00", "#BBBBBB")  # objectives not known here
TASKS = ("inverted_pendulum", "hopper", "walker2d", "halfcheetah", "ant", "humanoid")
TASK_LABELS = {"inverted_pendulum": "InvertedPendulum", "hopper": "Hopper",
               "walker2d": "Walker2d", "halfcheetah": "HalfCheetah", "ant": "Ant",
               "humanoid": "Humanoid"}


def label(method: str) -> str:
    return LABELS.get(method, method)


def color(method: str) -> str:
    if method in COLORS:
        return COLORS[method]
    return _OTHER[sum(map(ord, method)) % len(_OTHER)]


def task_label(env: str) -> str:
    return TASK_LABELS.get(env, env)


def order(methods: Iterable[str]) -> list[str]:
    """Known methods in the fixed order, then any others alphabetically."""
    methods = set(methods)
    return [m for m in METHODS if m in methods] + sorted(methods - set(METHODS))


def task_order(envs: Iterable[str]) -> list[str]:
    envs = set(envs)
    return [e for e in TASKS if e in envs] + sorted(envs - set(TASKS))


def palette(methods: Iterable[str]) -> dict[str, str]:
    return {m: color(m) for m in methods}


def setup() -> None:
    """Seaborn theme, embedded TrueType fonts (editable text in the PDF), no clipping."""
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # font subsetting chatter
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    mpl.rcParams.update({
        "pdf.fonttype": 42, "ps.fonttype": 42, "figure.dpi": 100,
        "savefig.bbox": "tight", "savefig.pad_inches": 0.05,
        "axes.titleweight": "bold", "legend.frameon": False,
    })


def missing_note(expected: Iterable[str], present: Iterable[str]) -> str:
    """'Not in these runs: PMAC, VaGraM.' or '' when nothing expected is missing."""
    missing = [m for m in expected if m not in set(present)]
    return f"Not in these runs: {', '.join(label(m) for m in missing)}." if missing else ""


def plot_curve(ax: plt.Axes, curve, method: str, n_seeds: int, slot: int = 0,
               n_slots: int = 1) -> None:
    """Mean over seeds with its interval (columns env_steps, mean, ci_lo, ci_hi).

    Many evaluation points: a line and a band. Three or fewer (smoke runs): markers with
    error bars, shifted a little per method (``slot`` of ``n_slots``) so none hides another.
    The interval is drawn only with at least two seeds.
    """
    x = curve["env_steps"].to_numpy(dtype=float)
    mean = curve["mean"].to_numpy(dtype=float)
    c = color(method)
    if len(x) > 3:
        ax.plot(x, mean, color=c, lw=1.8, label=label(method))
        if n_seeds > 1:
            ax.fill_between(x, curve["ci_lo"], curve["ci_hi"], color=c, alpha=0.2, lw=0)
        return
    unique = np.unique(x)
    if len(unique) > 1:
        step = float(np.diff(unique).min())
    else:  # one evaluation only: centre it in a window of ±20 %
        step = max(abs(float(unique[0])), 1.0)
        ax.set_xlim(unique[0] - 0.2 * step, unique[0] + 0.2 * step)
    shift = (slot - (n_slots - 1) / 2) * 0.04 * step
    err = None
    if n_seeds > 1:
        err = np.vstack([mean - curve["ci_lo"].to_numpy(float),
                         curve["ci_hi"].to_numpy(float) - mean])
    ax.errorbar(x + shift, mean, yerr=err, color=c, marker="o", ms=4, lw=1.5, capsize=3,
                label=label(method))


def legend_above(fig: plt.Figure, methods: Iterable[str], title: str | None = None) -> None:
    """One legend for the whole figure, above the panels, in the fixed method order."""
    from matplotlib.lines import Line2D

    methods = order(methods)
    if not methods:
        return
    handles = [Line2D([], [], color=color(m), lw=2, label=label(m)) for m in methods]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=min(len(handles), 4), title=title, frameon=False)


def seeds_note(seeds: dict[tuple[str, str], int]) -> str:
    """'3 seeds per task and method', or the counts per task (and method where they differ)."""
    counts = sorted(set(seeds.values()))
    if not counts:
        return ""
    if len(counts) == 1:
        n = counts[0]
        return f"{n} seed{'s' if n != 1 else ''} per task and method"
    parts = []
    for env in task_order({e for e, _ in seeds}):
        per_method = {m: n for (e, m), n in seeds.items() if e == env}
        if len(set(per_method.values())) == 1:
            parts.append(f"{task_label(env)} {next(iter(per_method.values()))}")
        else:
            inner = ", ".join(f"{label(m)} {per_method[m]}" for m in order(per_method))
            parts.append(f"{task_label(env)} ({inner})")
    return "seeds: " + "; ".join(parts)


def footer(fig: plt.Figure, preset: str, commit: str, note: str = "") -> None:
    """Provenance (and an optional note) in small grey text under the axes."""
    text = f"preset: {preset} · commit: {short_commit(commit)}"
    if note:  # wrapped to the figure's width (about 19 characters of 7 pt text per inch)
        width = max(40, int(fig.get_figwidth() * 19))
        lines = [textwrap.fill(line, width) for line in note.split("\n")]
        text = "\n".join([*lines, text])
    fig.text(0.995, -0.005, text, ha="right", va="top", fontsize=7, color="0.35",
             linespacing=1.4)


def short_commit(commit: str) -> str:
    """'02a2e06fd6…-dirty' -> '02a2e06fd6-dirty' (10 hex digits are unique in practice)."""
    base, dirty, _ = str(commit).partition("-dirty")
    return (base[:10] if len(base) == 40 else base) + ("-dirty" if dirty else "")


def save(fig: plt.Figure, path: str | Path, *, title: str, preset: str, commit: str) -> Path:
    """Vector PDF with provenance in its metadata; no creation date, so reruns are identical."""
    path = Path(path)
    metadata = {
        "Title": title, "Subject": f"tom pipeline, preset {preset}, commit {commit}",
        "Keywords": f"preset={preset} commit={commit}", "Creator": "tom pipeline (notebooks/)",
        "CreationDate": None,
    }
    atomic_write(path, lambda fh: fig.savefig(fh, format="pdf", metadata=metadata), binary=True)
    return path


def finish(fig: plt.Figure, path: str | Path, *, title: str, preset: str, commit: str,
           notes: list[str], expected: Iterable[str], present: Iterable[str]) -> str:
    """The end of every method-comparison figure: name the expected methods that have no
    runs, lay out, put the legend above, the notes and provenance below, save the PDF.
    Returns the notes as printed text for the notebook's output."""
    present = list(present)
    notes = [*notes, missing_note(expected, present)]
    text = "\n".join(n for n in notes if n)
    fig.tight_layout()
    legend_above(fig, present)
    footer(fig, preset, commit, note=text)
    save(fig, path, title=title, preset=preset, commit=commit)
    return text
