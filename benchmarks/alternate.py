"""Before and after on one machine, alternately: `tom bench` of two versions of the code,
round by round (not a test; prints a table).

A machine's speed drifts (by a quarter within an hour on the 2-core machines of
benchmarks/RESULTS.md), so two versions of the code compare only when measured alternately
on the same machine. This runs ``tom bench`` with the arguments after ``--`` for a base
revision and for the head (the working tree, uncommitted changes included, or a second
revision), ``--rounds`` times: base then head in odd rounds, head then base in even ones, so
that a steady drift favours neither. Each side runs from its own checkout (a temporary
`git worktree` of its revision, first on ``PYTHONPATH``; the working tree as it is). Prints
every measurement with the head's real steps per second over the base's (both without the
seconds of compiling, where both sides' `tom bench` reports them), then the median ratio per
objective and buffer size.

    python benchmarks/alternate.py --base c96ce51 --rounds 2 -- --env hopper \\
        --objective mle tom --buffer-size 20000 --steps 1000 --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from tom.cli import build_parser
from tom.outputs import append_csv

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["objective", "buffer_size"]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def _commit(revision: str) -> str:
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"alternate.py: error: --base/--head {revision!r} is not a commit of "
                         f"{ROOT}") from None


def run_bench(source: Path, bench_args: list[str], csv: Path) -> None:
    """`tom bench` in a fresh interpreter that imports tom from ``source`` (a checkout's src)."""
    path = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "tom.cli", "bench", *bench_args,
                           "--csv", str(csv)], env={**os.environ, "PYTHONPATH": path})
    if done.returncode:
        raise SystemExit(f"alternate.py: `tom bench` from {source} exited with status "
                         f"{done.returncode}")


def speed_column(rows: pd.DataFrame) -> str:
    """The speed to compare: real steps/s without the seconds of compiling where every row
    has them (a run compiles once, and the two sides' code may compile for different
    times), else the plain steps/s (a base from before `tom bench` reported them)."""
    column = "steps_per_s_without_compiling"
    return column if column in rows and rows[column].notna().all() else "steps_per_s"


def summary(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per round and (objective, buffer size): base and head real steps/s (`speed_column`)
    and their ratio; and the ratio's median over the rounds."""
    table = rows.pivot_table(index=["round", *KEYS], columns="side",
                             values=speed_column(rows))
    table = table[["base", "head"]].assign(ratio=lambda t: t["head"] / t["base"])
    return table.reset_index(), table.groupby(KEYS)["ratio"].median().reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to measure against")
    parser.add_argument("--head", help="git revision to measure (default: the working tree, "
                        "uncommitted changes included)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both sides (>= 1)")
    parser.add_argument("--csv", help="also append every measurement to this CSV, with its "
                        "side and round")
    parser.add_argument("bench", nargs=argparse.REMAINDER,
                        help="-- and then the arguments of `tom bench`")
    args = parser.parse_args(argv)
    bench_args = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if args.rounds < 1:
        parser.error(f"--rounds = {args.rounds} is not allowed: it must be >= 1")
    if any(a == "--csv" or a.startswith("--csv=") for a in bench_args):
        parser.error("--csv after -- is not allowed: this script writes the bench's CSVs; "
                     "give --csv before --")
    build_parser().parse_args(["bench", *bench_args])  # exits with tom's message if wrong
    revisions = {"base": _commit(args.base)}
    if args.head is not None:
        revisions["head"] = _commit(args.head)

    with tempfile.TemporaryDirectory(prefix="tom-alternate-") as tmp:
        sources = {"head": ROOT / "src"}
        try:
            for side, commit in revisions.items():
                _git("worktree", "add", "--detach", str(Path(tmp, side)), commit)
                sources[side] = Path(tmp, side, "src")
            frames = []
            for round_ in range(1, args.rounds + 1):
                for side in ("base", "head") if round_ % 2 else ("head", "base"):
                    print(f"round {round_}, {side}:", flush=True)
                    csv = Path(tmp, f"{side}-{round_}.csv")
                    run_bench(sources[side], bench_args, csv)
                    frames.append(pd.read_csv(csv).assign(side=side, round=round_))
        finally:
            for side in revisions:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp, side))],
                               cwd=ROOT, capture_output=True)
    rows = pd.concat(frames, ignore_index=True)
    if args.csv:
        append_csv(Path(args.csv), rows)
    per_round, medians = summary(rows)
    without = speed_column(rows) != "steps_per_s"
    print(f"\nreal steps/s{' without the seconds of compiling' if without else ''}, "
          "head over base:")
    print(per_round.to_string(index=False, float_format="{:.2f}".format))
    print("\nmedian ratio over the rounds:")
    print(medians.to_string(index=False, float_format="{:.3f}".format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
