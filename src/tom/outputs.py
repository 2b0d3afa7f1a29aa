"""A run directory's files (DESIGN.md contract), written atomically.

    metrics.csv   one row per evaluation        weights.csv  weight by age bin, per refit
    config.json   resolved config, versions,    policy.pt    final policy network
                  git commit, seed, wall time

While training, progress goes to ``metrics.partial.csv``; the contract files appear only when
the run has finished, so a crashed run never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tom.atomic import atomic_write
from tom.config import RunConfig
from tom.mbpo import TrainResult

RUN_FILES = ("metrics.csv", "weights.csv", "config.json", "policy.pt")
PARTIAL_METRICS = "metrics.partial.csv"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write(path, lambda fh: pd.DataFrame(rows).to_csv(fh, index=False))


def append_csv(path: Path, rows: pd.DataFrame) -> None:
    """Add ``rows`` to the CSV at ``path`` (created if missing), its columns matched by name:
    rows of an older version that lack a column get it empty, and no value lands under another
    column's header, as it would with a plain append."""
    path = Path(path)
    if path.exists():
        rows = pd.concat([pd.read_csv(path), rows], ignore_index=True)
    atomic_write(path, lambda fh: rows.to_csv(fh, index=False))


def git_commit(where: Path | None = None) -> str:
    """Commit of the checkout that holds ``where`` (default: this package), with '-dirty' if
    tracked files changed; 'unknown' outside git."""
    cwd = Path(where) if where is not None else Path(__file__).parent
    cwd = cwd if cwd.is_dir() else cwd.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd,
                             capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import gymnasium
    import mujoco
    import numpy

    import tom

    return {"tom": tom.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__,
            "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__}


def write_run(out: Path, cfg: RunConfig, result: TrainResult, wall_time: float) -> None:
    """Write the four contract files; config.json last, so its presence marks completion."""
    write_csv(out / "metrics.csv", result.metrics)
    write_csv(out / "weights.csv", result.weights)
    actor = result.agent.actor.state_dict()
    atomic_write(out / "policy.pt", lambda fh: torch.save(actor, fh), binary=True)
    meta = {"config": cfg.to_dict(), "versions": versions(), "git_commit": git_commit(),
            "seed": cfg.seed, "wall_time_s": wall_time, "platform": platform.platform()}
    atomic_write(out / "config.json", lambda fh: json.dump(meta, fh, indent=2))
    (out / PARTIAL_METRICS).unlink(missing_ok=True)
