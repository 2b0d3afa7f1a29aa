"""benchmarks/alternate.py: two versions of the code benchmarked alternately."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("alternate", ROOT / "benchmarks" / "alternate.py")
alternate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(alternate)

BENCH = ["--", "--env", "inverted_pendulum", "--objective", "mle", "--preset", "smoke",
         "--buffer-size", "200", "--steps", "200", "--threads", "1"]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_summary_is_head_over_base_per_round_and_its_median():
    rows = pd.DataFrame({
        "round": [1, 1, 2, 2, 3, 3], "side": ["base", "head", "head", "base", "base", "head"],
        "objective": "mle", "buffer_size": 200, "steps_per_s": [10.0, 12.0, 9.0, 10.0, 8.0, 4.0]})
    per_round, medians = alternate.summary(rows)
    assert per_round["ratio"].tolist() == [1.2, 0.9, 0.5]
    assert per_round["base"].tolist() == [10.0, 10.0, 8.0]
    assert medians["ratio"].tolist() == [0.9]


def test_summary_leaves_out_the_seconds_of_compiling_where_every_row_has_them():
    rows = pd.DataFrame({
        "round": [1, 1], "side": ["base", "head"], "objective": "tom", "buffer_size": 200,
        "steps_per_s": [10.0, 10.0], "steps_per_s_without_compiling": [10.0, 12.5]})
    per_round, _ = alternate.summary(rows)
    assert per_round["ratio"].tolist() == [1.25]
    rows.loc[0, "steps_per_s_without_compiling"] = float("nan")  # a base without the column
    per_round, _ = alternate.summary(rows)
    assert per_round["ratio"].tolist() == [1.0]


def test_both_sides_run_from_their_own_code_in_alternating_order(tmp_path, capsys):
    try:
        base = _git("rev-parse", "HEAD~1")
    except subprocess.CalledProcessError:
        pytest.skip("needs a commit before HEAD")
    before = _git("worktree", "list")
    csv = tmp_path / "both.csv"
    assert alternate.main(["--base", "HEAD~1", "--rounds", "2", "--csv", str(csv), *BENCH]) == 0
    rows = pd.read_csv(csv)
    assert list(zip(rows["round"], rows["side"], strict=True)) == [
        (1, "base"), (1, "head"), (2, "head"), (2, "base")]
    # The base's rows come from a checkout of HEAD~1 (its commit, clean); the head's from here.
    assert set(rows.loc[rows["side"] == "base", "commit"]) == {base}
    assert set(rows.loc[rows["side"] == "head", "commit"].str[:40]) == {_git("rev-parse", "HEAD")}
    assert "median ratio over the rounds" in capsys.readouterr().out
    assert _git("worktree", "list") == before  # the temporary checkout is gone


@pytest.mark.parametrize("argv, message", [
    (["--base", "HEAD", "--rounds", "0", *BENCH], "--rounds = 0"),
    (["--base", "HEAD", *BENCH, "--csv", "x.csv"], "--csv after --"),
    (["--base", "HEAD", "--", "--threads", "two"], "--threads"),
    (["--base", "no-such-revision", *BENCH], "'no-such-revision' is not a commit"),
])
def test_bad_input_is_refused_before_any_checkout(argv, message, capsys):
    before = _git("worktree", "list")
    with pytest.raises(SystemExit) as exit_:
        alternate.main(argv)
    assert message in f"{exit_.value.code} {capsys.readouterr().err}"
    assert _git("worktree", "list") == before
