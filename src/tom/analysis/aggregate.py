"""Run directories -> tidy summary tables (``tom aggregate``), the notebooks' only input.

A run directory is complete iff its ``config.json`` exists (``tom train`` writes it last).
Incomplete directories are skipped and listed in ``provenance.json``. Files written to the
output folder, each atomically:

    returns.csv      env, objective, seed, env_steps, return_mean, return_std, episode_length
    model_error.csv  env, objective, seed, env_steps, model_error_recent, model_nll_recent,
                     model_holdout_loss, weight_mean, weight_max, weight_ess (the fit's
                     weights), start_weight_{mean,max,ess} (rollout starts), disc_acc,
                     disc_logit_{recent,old}_{mean,std} (TOM's discriminator)
    weights.csv      env, objective, seed, env_steps, age_bin, age_lo, age_hi, mean_weight,
                     count
    compute.csv      env, objective, seed, preset, device, env_steps_total, wall_time_s,
                     steps_per_s, time_env, time_objective, time_model, time_rollout,
                     time_sac, time_eval
    configs.csv      env, objective, seed, key, value, paper_value, deviates: every resolved
                     hyperparameter against the paper preset for the same task and objective
    provenance.json  preset, git commit(s) of the runs, number of runs, what they cover
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tom.atomic import atomic_write

IDS = ["env", "objective", "seed"]
PHASES = ["time_env", "time_objective", "time_model", "time_rollout", "time_sac", "time_eval"]
COLUMNS: dict[str, list[str]] = {
    "returns": [*IDS, "env_steps", "return_mean", "return_std", "episode_length"],
    "model_error": [*IDS, "env_steps", "model_error_recent", "model_nll_recent",
                    "model_holdout_loss", "weight_mean", "weight_max", "weight_ess",
                    "start_weight_mean", "start_weight_max", "start_weight_ess", "disc_acc",
                    "disc_logit_recent_mean", "disc_logit_recent_std", "disc_logit_old_mean",
                    "disc_logit_old_std"],
    "weights": [*IDS, "env_steps", "age_bin", "age_lo", "age_hi", "mean_weight", "count"],
    "compute": [*IDS, "preset", "device", "env_steps_total", "wall_time_s", "steps_per_s",
                *PHASES],
    "configs": [*IDS, "key", "value", "paper_value", "deviates"],
}
SUMMARY_FILES = (*(f"{name}.csv" for name in COLUMNS), "provenance.json")
# Identity of a run or how it was executed, not a hyperparameter: left out of configs.csv.
_NOT_HYPERPARAMETERS = {"env", "objective", "seed", "device", "compile", "cuda_graph",
                        "cuda_graph_steps", "stack_seeds", "preset"}


@dataclass
class Run:
    path: Path
    meta: dict[str, Any]  # config.json
    metrics: pd.DataFrame
    weights: pd.DataFrame

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    def ids(self) -> dict[str, Any]:
        return {"env": self.config["env"], "objective": self.config["objective"],
                "seed": int(self.config["seed"])}


def find_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) run directories under ``paths``.

    Each path is a run directory itself or a folder searched recursively. A directory with
    run files (metrics, weights, partial metrics) but no ``config.json`` is incomplete.
    """
    complete: set[Path] = set()
    incomplete: set[Path] = set()
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"no such run directory or folder: {root}")
        if (root / "config.json").is_file():
            complete.add(root)
            continue
        complete.update(p.parent for p in root.rglob("config.json"))
        for pattern in ("metrics.partial.csv", "metrics.csv", "weights.csv"):
            incomplete.update(p.parent for p in root.rglob(pattern))
    return sorted(complete), sorted(incomplete - complete)


def read_run(path: Path) -> Run:
    meta = json.loads((path / "config.json").read_text())
    metrics = pd.read_csv(path / "metrics.csv")
    weights_path = path / "weights.csv"
    try:
        weights = pd.read_csv(weights_path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        weights = pd.DataFrame(columns=COLUMNS["weights"][3:])
    return Run(path, meta, metrics, weights)


def _with_ids(run: Run, frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = frame.copy()
    for key, value in run.ids().items():
        out[key] = value
    for col in columns:  # a column an older run did not record is NaN, not an error
        if col not in out:
            out[col] = math.nan
    return out[columns]


def _compute_row(run: Run) -> dict[str, Any]:
    last = run.metrics.iloc[-1] if len(run.metrics) else pd.Series(dtype=float)
    steps = float(last.get("env_steps", math.nan))
    wall = float(run.meta.get("wall_time_s", last.get("wall_time", math.nan)))
    return {**run.ids(), "preset": run.config.get("preset", ""),
            "device": run.config.get("device", ""), "env_steps_total": steps,
            "wall_time_s": wall, "steps_per_s": steps / wall if wall > 0 else math.nan,
            **{p: float(last.get(p, math.nan)) for p in PHASES}}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"lr": 1e-3}}`` -> ``{"model.lr": 1e-3}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def format_value(value: Any) -> str:
    """A hyperparameter as the table shows it (shortest round-trip form for floats)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if abs(value) >= 1 or value == 0 else repr(value)
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _paper_config(env: str, objective: str, cache: dict) -> dict[str, Any] | None:
    """The paper preset's resolved config for this task and objective (None if unknown)."""
    if (env, objective) not in cache:
        from tom.config import ConfigError, resolve

        try:
            cache[env, objective] = flatten(resolve(env, objective, preset="paper").to_dict())
        except (ConfigError, KeyError):
            cache[env, objective] = None
    return cache[env, objective]


def _config_rows(run: Run, cache: dict) -> list[dict[str, Any]]:
    ids = run.ids()
    paper = _paper_config(ids["env"], ids["objective"], cache)
    rows = []
    for key, value in flatten(run.config).items():
        if key in _NOT_HYPERPARAMETERS:
            continue
        known = paper is not None and key in paper
        rows.append({**ids, "key": key, "value": format_value(value),
                     "paper_value": format_value(paper[key]) if known else "",
                     "deviates": (not _same(value, paper[key])) if known else True})
    return rows


def _unique(values: Iterable[Any]) -> list[Any]:
    return sorted({v for v in values if v is not None and v == v})


def summarise_runs(paths: Iterable[str | Path]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Read every complete run under ``paths``: the tidy frames and the provenance record."""
    complete, incomplete = find_runs(paths)
    runs = [read_run(p) for p in complete]
    runs.sort(key=lambda r: (r.ids()["env"], r.ids()["objective"], r.ids()["seed"]))
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = tuple(run.ids().values())
        if key in seen:
            raise ValueError(f"two runs of {key}: {seen[key]} and {run.path}")
        seen[key] = run.path

    def frame(name: str, parts: list[pd.DataFrame]) -> pd.DataFrame:
        parts = [p for p in parts if len(p)]
        if not parts:
            return pd.DataFrame(columns=COLUMNS[name])
        return pd.concat(parts, ignore_index=True)[COLUMNS[name]]

    cache: dict = {}
    frames = {
        name: frame(name, [_with_ids(r, r.metrics, COLUMNS[name]) for r in runs])
        for name in ("returns", "model_error")
    }
    frames["weights"] = frame("weights", [_with_ids(r, r.weights, COLUMNS["weights"])
                                          for r in runs])
    frames["compute"] = pd.DataFrame([_compute_row(r) for r in runs], columns=COLUMNS["compute"])
    frames["configs"] = pd.DataFrame([row for r in runs for row in _config_rows(r, cache)],
                                     columns=COLUMNS["configs"])
    presets = _unique(r.config.get("preset") for r in runs)
    commits = _unique(r.meta.get("git_commit") for r in runs)
    provenance = {
        "preset": presets[0] if len(presets) == 1 else ("mixed" if presets else "none"),
        "presets": presets,
        "commit": commits[0] if len(commits) == 1 else ("mixed" if commits else "unknown"),
        "commits": commits,
        "n_runs": len(runs),
        "envs": _unique(r.ids()["env"] for r in runs),
        "objectives": _unique(r.ids()["objective"] for r in runs),
        "seeds": _unique(r.ids()["seed"] for r in runs),
        "tom_versions": _unique(r.meta.get("versions", {}).get("tom") for r in runs),
        "skipped_incomplete": [str(p) for p in incomplete],
    }
    return frames, provenance


def write_summary(out: str | Path, frames: dict[str, pd.DataFrame], provenance: dict) -> None:
    """Write the summary files; provenance.json last."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        atomic_write(out / f"{name}.csv", lambda fh, df=df: df.to_csv(fh, index=False))
    atomic_write(out / "provenance.json",
                 lambda fh: fh.write(json.dumps(provenance, indent=2) + "\n"))


def aggregate(paths: Iterable[str | Path], out: str | Path) -> dict:
    """Summarise the runs under ``paths`` into ``out``; returns the provenance record."""
    frames, provenance = summarise_runs(paths)
    write_summary(out, frames, provenance)
    return provenance
