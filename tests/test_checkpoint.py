"""Checkpoint and resume: a run killed anywhere and resumed equals the uninterrupted run.

Each run is a `tom train` subprocess at the smoke preset (3 epochs, so a kill after the first
leaves a checkpoint to resume from). A small driver patches one function of the package to
kill its own process on the N-th call, N drawn with a fixed seed, so the kill lands inside
the named phase. Equality is exact, except for the wall-clock columns of metrics.csv.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tom.checkpoint import CHECKPOINT, env_state, rng_state, set_env_state, set_rng_state
from tom.envs import TASKS, make_env

ARGS = ["--env", "hopper", "--objective", "tom", "--preset", "smoke", "--seed", "3", "--quiet",
        "--set", "schedule.epochs=3"]

# Kill points: (phase, function to patch, how many calls it gets in the whole run). The smoke
# preset with 3 epochs refits at real steps 200, 300, ..., 600 (5 refits, TOM from the second
# one on), and takes a block of 10 SAC updates every 20 real steps after the first fit
# (`SAC._update` is each update, in a block or alone).
PHASES = {
    "sac update": ("tom.sac:SAC._update", (60, 200)),
    "model refit": ("tom.dynamics:DynamicsModel.fit", (3, 5)),
    "discriminator": ("tom.objectives.tom:train_discriminator", (2, 4)),
    "dual": ("tom.objectives.tom:TOMObjective._train_dual", (2, 4)),
    "between epochs": ("tom.checkpoint:save", (1, 2)),
}

DRIVER = r"""
import importlib, os, signal, sys
target, calls, signame = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module_name, attr = target.split(":")
module = importlib.import_module(module_name)
owner, name = (module, attr) if "." not in attr else (getattr(module, attr.split(".")[0]),
                                                     attr.split(".")[1])
original, count = getattr(owner, name), [0]

def patched(*args, **kwargs):
    count[0] += 1
    if signame == "KILL" and name == "save" and count[0] == calls:
        result = original(*args, **kwargs)  # between epochs: right after the checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    if count[0] == calls:
        os.kill(os.getpid(), getattr(signal, "SIG" + signame.split("+")[0]))
        if signame.endswith("+hang"):  # a phase that outlasts the grace period
            import time
            time.sleep(120)
    return original(*args, **kwargs)

setattr(owner, name, patched if not isinstance(original, staticmethod) else staticmethod(patched))
from tom.cli import main
sys.exit(main(sys.argv[4:]))
"""


def run_tom(out: Path, *extra: str, kill: tuple[str, int, str] | None = None
            ) -> subprocess.CompletedProcess:
    argv = ["train", *ARGS, "--out", str(out), *extra]
    if kill is None:
        cmd = [sys.executable, "-m", "tom.cli", *argv]
    else:
        target, calls, signame = kill
        cmd = [sys.executable, "-c", DRIVER, target, str(calls), signame, *argv]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


WALL_CLOCK = lambda column: column.startswith("time_") or column in ("wall_time", "sps")  # noqa: E731


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    assert list(ma.columns) == list(mb.columns)
    keep = [c for c in ma.columns if not WALL_CLOCK(c)]
    pd.testing.assert_frame_equal(ma[keep], mb[keep], check_exact=True)
    assert (a / "weights.csv").read_bytes() == (b / "weights.csv").read_bytes()
    pa, pb = torch.load(a / "policy.pt"), torch.load(b / "policy.pt")
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = run_tom(out)
    assert done.returncode == 0, done.stderr
    assert not (out / CHECKPOINT).exists(), "a completed run deletes its checkpoint"
    return out


def _kill_points() -> list[tuple[str, int]]:
    rng = random.Random(20261126)  # fixed: the same kill points on every run of the suite
    return [(phase, rng.randint(*calls)) for phase, (_, calls) in PHASES.items()]


@pytest.mark.parametrize("phase,calls", _kill_points())
def test_sigkill_then_resume_equals_uninterrupted(phase, calls, reference, tmp_path):
    target = PHASES[phase][0]
    killed = run_tom(tmp_path, kill=(target, calls, "KILL"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "config.json").exists(), "a killed run must not look complete"
    resumed = run_tom(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference, tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()


@pytest.mark.parametrize("signame,target,calls", [
    ("TERM", "tom.mbpo:Trainer._real_step", 150),  # the random phase (action-space RNG)
    ("TERM", "tom.objectives.tom:TOMObjective._train_dual", 3),  # mid-epoch, inside a refit
    ("INT", "tom.sac:SAC._update", 130),
])
def test_signal_checkpoints_exits_nonzero_and_resumes_exactly(signame, target, calls,
                                                              reference, tmp_path):
    stopped = run_tom(tmp_path, kill=(target, calls, signame))
    signum = getattr(signal, "SIG" + signame)
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert (tmp_path / CHECKPOINT).exists()
    assert "run the same command again to resume" in stopped.stderr
    assert not (tmp_path / "config.json").exists()
    resumed = run_tom(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "real step" in resumed.stdout
    assert_same_run(reference, tmp_path)


def test_a_compiled_run_resumes_exactly(tmp_path):
    """``compile: true`` (on in the paper preset): stopped by a signal inside a SAC block and
    resumed in a new process, which compiles its steps again, the run equals the
    uninterrupted compiled run exactly."""
    compiled = ("--set", "schedule.epochs=3", "compile=true")
    done = run_tom(tmp_path / "uninterrupted", *compiled)
    assert done.returncode == 0, done.stderr
    # The kill counts the calls of `_update_once`, which calls the compiled update: a Python
    # counter patched into `_update` itself would be traced into the compiled graph.
    stopped = run_tom(tmp_path / "resumed", *compiled,
                      kill=("tom.sac:SAC._update_once", 130, "INT"))
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    resumed = run_tom(tmp_path / "resumed", *compiled)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert_same_run(tmp_path / "uninterrupted", tmp_path / "resumed")
    assert '"compile": true' in (tmp_path / "resumed" / "config.json").read_text()


def test_signal_in_a_phase_longer_than_the_grace_exits_in_time(reference, tmp_path):
    """The watchdog: no safe point within --grace seconds, so the process exits anyway; the
    previous epoch's checkpoint stands and the resume still equals the uninterrupted run."""
    start = time.monotonic()
    stopped = run_tom(tmp_path, "--grace", "2",
                      kill=("tom.objectives.tom:TOMObjective._train_dual", 3, "TERM+hang"))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert time.monotonic() - start < 60  # the phase alone would take 120 s
    assert "no safe point within 2 s" in stopped.stderr
    assert (tmp_path / CHECKPOINT).exists()
    resumed = run_tom(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 3 of 3" in resumed.stdout
    assert_same_run(reference, tmp_path)


def test_keep_checkpoint_keeps_it(tmp_path):
    done = run_tom(tmp_path, "--keep-checkpoint", "--set", "schedule.epochs=1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / CHECKPOINT).exists()


# -- refused checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run directory holding the checkpoint of a run stopped by SIGTERM in epoch 2."""
    out = tmp_path_factory.mktemp("interrupted")
    stopped = run_tom(out, kill=("tom.sac:SAC._update", 100, "TERM"))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / CHECKPOINT).write_bytes((src / CHECKPOINT).read_bytes())
    return dst / CHECKPOINT


def test_truncated_checkpoint_is_refused_and_left_in_place(interrupted, tmp_path):
    path = _copy(interrupted, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused = run_tom(tmp_path)
    assert refused.returncode == 2
    assert "unreadable (truncated or corrupted" in refused.stderr
    assert "--restart" in refused.stderr
    assert path.read_bytes() == data[: len(data) // 2], "a bad checkpoint must not be touched"
    assert len(refused.stderr.strip().splitlines()) == 1


def test_checkpoint_of_another_config_is_refused(interrupted, tmp_path):
    _copy(interrupted, tmp_path)
    refused = run_tom(tmp_path, "--set", "schedule.epochs=4")
    assert refused.returncode == 2
    assert "another config (schedule.epochs = 3 there, 4 here)" in refused.stderr


def test_checkpoint_of_another_objective_is_refused(interrupted, tmp_path):
    _copy(interrupted, tmp_path)
    cmd = [sys.executable, "-m", "tom.cli", "train", *ARGS, "--out", str(tmp_path)]
    cmd[cmd.index("tom", cmd.index("--objective"))] = "mle"
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "objective = 'tom' there, 'mle' here" in refused.stderr


def test_restart_deletes_the_checkpoint_and_starts_over(interrupted, tmp_path, reference):
    path = _copy(interrupted, tmp_path)
    path.write_bytes(b"not a checkpoint")
    done = run_tom(tmp_path, "--restart")
    assert done.returncode == 0, done.stderr
    assert f"deleted {path}" in done.stdout
    assert_same_run(reference, tmp_path)


# -- the environment's state ------------------------------------------------------------------


@pytest.mark.parametrize("python_state_as", ["tuples", "lists"])
def test_rng_state_round_trip_restores_every_generator(python_state_as):
    """What a checkpoint keeps of the global generators draws again what it drew; Python's
    state also where a serialiser turned its tuples into lists."""
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    state = rng_state()
    if python_state_as == "lists":
        version, internal, gauss = state["python"]
        state["python"] = [version, list(internal), gauss]
    first = draws()
    set_rng_state(state)
    assert draws() == first


@pytest.mark.parametrize("task", list(TASKS))
def test_env_state_round_trip_continues_the_episode_exactly(task):
    """Restored into a fresh env, the episode goes on as in the original, step for step,
    through the time limit (which needs the episode's step count) and the next reset (its
    RNG). Small actions keep the robots up until the time limit truncates the episode."""
    rng = np.random.default_rng(0)
    original = make_env(task, seed=5, max_episode_steps=30)
    actions = 0.1 * rng.uniform(-1, 1, size=(70, *original.action_space.shape))
    for a in actions[:10]:
        original.step(a)
    saved = env_state(original)
    restored = make_env(task, seed=99, max_episode_steps=30)
    set_env_state(restored, saved)
    ends = 0
    for a in actions[10:]:
        a_out, b_out = original.step(a), restored.step(a)
        assert np.array_equal(a_out[0], b_out[0]) and a_out[1:4] == b_out[1:4]
        if a_out[2] or a_out[3]:
            ends += 1
            assert np.array_equal(original.reset()[0], restored.reset()[0])
    assert ends >= 1
    assert np.array_equal(original.action_space.sample(), restored.action_space.sample())


# -- numerical faults -------------------------------------------------------------------------


def _nan_sac_stats(original):
    """The 130th update's statistics (the last of a block) all nan, as a diverged update's."""
    calls = [0]

    def _update(self, batch):
        stats = original(self, batch)
        calls[0] += 1
        return torch.full_like(stats, float("nan")) if calls[0] == 130 else stats
    return _update


def _nan_fit_weights(original):
    def fit_weights(self):
        w = original(self)
        return None if w is None else torch.full_like(w, float("inf"))
    return fit_weights


def _nan_holdout(original):
    def fit(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if result.n_train > 300:  # the second refit: after the first epoch's checkpoint
            result.holdout_loss = float("nan")
        return result
    return fit


def _nan_prediction(original):
    def step(self, obs, act):
        out = original(self, obs, act)
        return out._replace(next_obs=out.next_obs * float("nan")) if obs.shape[0] < 256 else out
    return step


@pytest.mark.parametrize("phase,owner,name,patch", [
    ("sac", "tom.sac:SAC", "_update", _nan_sac_stats),
    ("objective", "tom.objectives.tom:TOMObjective", "fit_weights", _nan_fit_weights),
    ("model", "tom.dynamics:DynamicsModel", "fit", _nan_holdout),
    ("rollout", "tom.dynamics:DynamicsModel", "step", _nan_prediction),
])
def test_nan_stops_with_status_3_naming_phase_and_step(phase, owner, name, patch, tmp_path,
                                                       monkeypatch, capsys, reference):
    import importlib

    from tom.cli import main

    module, cls = owner.split(":")
    target = getattr(importlib.import_module(module), cls)
    monkeypatch.setattr(target, name, patch(getattr(target, name)))
    status = main(["train", *ARGS, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 3, err
    assert f"in phase '{phase}' at real step " in err
    assert not (tmp_path / "config.json").exists()
    if phase in ("sac", "model"):  # faults after the first epoch: its checkpoint is intact
        assert "the last good checkpoint is kept" in err
        monkeypatch.undo()
        resumed = run_tom(tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert_same_run(reference, tmp_path)


# -- the run directory ------------------------------------------------------------------------


def test_unwritable_out_is_refused_before_training(tmp_path, capsys):
    from tom.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    status = main(["train", *ARGS, "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert status == 2 and "--out" in err and "not a writable directory" in err
    assert len(err.strip().splitlines()) == 1
