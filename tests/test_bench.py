"""`tom bench`: the end-to-end throughput measurement times whole epochs of the real loop."""

import os
import sys
import time

import pandas as pd
import pytest
import torch

from tom.bench import GpuBusy, format_row, measure_throughput
from tom.cli import main
from tom.mbpo import PHASES


def test_bench_times_whole_epochs_of_every_phase():
    row = measure_throughput("hopper", "tom", buffer_size=400, steps=150, preset="smoke",
                             overrides=["schedule.epochs=2"])
    assert row["steps"] == 200  # 150 rounded up to one 200-step epoch
    phases = [row[f"time_{p}"] for p in PHASES]
    assert all(t > 0 for t in phases), dict(zip(PHASES, phases, strict=True))
    assert sum(phases) <= row["wall_s"] * 1.01
    assert row["steps_per_s"] == pytest.approx(200 / row["wall_s"])


def test_bench_counts_the_timed_model_fits_steps(monkeypatch):
    """``model_fit_steps``: the minibatch steps of the fits in the timed epochs (not the first
    fit from scratch), so the model phase can be compared per step."""
    from tom.dynamics import DynamicsModel

    steps, fit = [], DynamicsModel.fit

    def spy(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        steps.append(result.steps)
        return result

    monkeypatch.setattr(DynamicsModel, "fit", spy)
    row = measure_throughput("inverted_pendulum", "mle", buffer_size=200, steps=200,
                             preset="smoke")
    assert len(steps) > 2 and row["model_fit_steps"] == sum(steps[1:]) > 0
    assert f"{sum(steps[1:])} model-fit steps" in format_row(row)


def test_bench_cli_appends_csv_rows(tmp_path, capsys):
    csv = tmp_path / "bench.csv"
    argv = ["bench", "--env", "inverted_pendulum", "--objective", "mle", "--preset", "smoke",
            "--buffer-size", "200", "--steps", "200", "--threads", "1", "--csv", str(csv)]
    assert main(argv) == 0 and main(argv) == 0
    rows = pd.read_csv(csv)
    assert len(rows) == 2 and {"steps_per_s", "time_sac", "commit"} <= set(rows.columns)
    assert "real steps/s" in capsys.readouterr().out


def test_bench_csv_rows_land_under_their_own_columns_in_an_older_file(tmp_path):
    """A CSV from an older version lacks this version's columns: the new row's values stay
    under their own headers (a plain append would shift them under others)."""
    csv = tmp_path / "bench.csv"
    pd.DataFrame([{"env": "hopper", "steps_per_s": 9.5, "commit": "old"}]).to_csv(csv,
                                                                                 index=False)
    argv = ["bench", "--env", "inverted_pendulum", "--objective", "mle", "--preset", "smoke",
            "--buffer-size", "200", "--steps", "200", "--threads", "1", "--csv", str(csv)]
    assert main(argv) == 0
    rows = pd.read_csv(csv)
    assert list(rows["env"]) == ["hopper", "inverted_pendulum"]
    assert rows["steps_per_s"].iloc[0] == 9.5 and rows["steps_per_s"].iloc[1] > 0
    assert pd.isna(rows["compile_s"].iloc[0]) and rows["compile_s"].iloc[1] == 0


def test_bench_reports_the_speed_without_the_seconds_of_compiling():
    """Compiled, the critic's loss compiles at the timed epoch's first SAC update: the row
    gives those seconds and the speed without them (a run compiles once); eager, none."""
    torch._dynamo.reset()
    kw = dict(buffer_size=200, steps=200, preset="smoke")
    eager = measure_throughput("inverted_pendulum", "mle", **kw)
    assert eager["compile_s"] == 0
    assert eager["steps_per_s_without_compiling"] == eager["steps_per_s"]
    fast = measure_throughput("inverted_pendulum", "mle", overrides=["compile=true"], **kw)
    assert 0 < fast["compile_s"] < fast["wall_s"]
    assert fast["steps_per_s_without_compiling"] == pytest.approx(
        fast["steps"] / (fast["wall_s"] - fast["compile_s"]))
    assert f"without its {fast['compile_s']:.1f} s of compiling" in format_row(fast)


def test_bench_rejects_a_buffer_that_is_not_whole_epochs():
    with pytest.raises(ValueError, match="multiple of the epoch length"):
        measure_throughput("hopper", "mle", buffer_size=250, steps=200, preset="smoke")


def test_bench_of_runs_in_turns_reports_per_run_throughput():
    """Two runs in turns: each run's steps over the common wall time; the phase seconds are
    the runs' mean, so twice them fits in the wall time."""
    row = measure_throughput("inverted_pendulum", "mle", buffer_size=200, steps=200,
                             preset="smoke", population=2)
    assert row["population"] == 2 and row["steps"] == 200
    assert row["steps_per_s"] == pytest.approx(200 / row["wall_s"])
    phases = [row[f"time_{p}"] for p in PHASES]
    assert all(t > 0 for t in phases) and 2 * sum(phases) <= row["wall_s"] * 1.01
    with pytest.raises(ValueError, match="--seeds = 0 is not allowed: it must be >= 1"):
        measure_throughput("hopper", "mle", buffer_size=200, preset="smoke", population=0)


def test_bench_profile_lists_the_timed_steps_functions(capsys):
    argv = ["bench", "--env", "inverted_pendulum", "--objective", "mle", "--preset", "smoke",
            "--buffer-size", "200", "--steps", "200", "--threads", "1", "--profile", "5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "real steps/s" in out and "Ordered by: internal time" in out
    assert "List reduced from" in out and "to 5 due to restriction" in out
    assert main([*argv[:-1], "0"]) == 2
    assert "--profile = 0 is not allowed" in capsys.readouterr().err


def test_gpu_busy_is_the_mean_of_nvidia_smi_samples(tmp_path, monkeypatch):
    """A stand-in `nvidia-smi` on PATH prints three samples; off a GPU nothing is sampled."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '40\\n70\\n100\\n'\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    busy = GpuBusy(torch.device("cuda", 0))
    time.sleep(0.5)
    assert busy.stop() == pytest.approx(70.0)
    assert GpuBusy(torch.device("cpu")).stop() is None
    row = measure_throughput("inverted_pendulum", "mle", buffer_size=200, steps=200,
                             preset="smoke")
    assert row["gpu_busy_percent"] is None  # a CPU run, even with nvidia-smi on PATH


def test_steps_per_turn_holds_for_the_measurement_only(monkeypatch):
    from tom import turns
    from tom.config import ConfigError
    from tom.population import Population

    seen, run = [], Population.run
    monkeypatch.setattr(Population, "run",
                        lambda self: seen.append(turns.STEPS_PER_TURN) or run(self))
    row = measure_throughput("inverted_pendulum", "mle", buffer_size=200, steps=200,
                             preset="smoke", population=2, steps_per_turn=0)
    assert seen == [sys.maxsize] and row["steps_per_turn"] == 0  # 0: one turn per whole loop
    assert turns.STEPS_PER_TURN == 10
    with pytest.raises(ConfigError, match="--steps-per-turn = -1 is not allowed"):
        measure_throughput("inverted_pendulum", "mle", steps_per_turn=-1)


def test_bench_of_stacked_sac_updates_runs_them_stacked(monkeypatch):
    """``stack_seeds=true``: also one run goes through the stack (a population of one), so that
    its throughput can be compared with the plain updates'."""
    from tom.stacked_sac import StackedSAC

    members, original = [], StackedSAC.update_block
    monkeypatch.setattr(StackedSAC, "update_block",
                        lambda self, b, n: members.append(len(b)) or original(self, b, n))
    row = measure_throughput("inverted_pendulum", "mle", buffer_size=200, steps=200,
                             preset="smoke", overrides=["stack_seeds=true"])
    assert row["stack_seeds"] is True and row["population"] == 1
    assert members and set(members) == {1}
    assert ("actions, SAC updates, discriminator, dual and model-fit steps stacked"
            in format_row(row))
