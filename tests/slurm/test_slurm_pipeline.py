"""The smoke pipeline through a real SLURM (tests/slurm/cluster.sh), as the README tells a user.

`snakemake all --profile <the SLURM profile, with slurm_account set as the README asks>
--configfile config/smoke.yaml` runs every training run as a SLURM job. While it runs, one
training job is pre-empted (``scancel --signal=TERM``: `tom train` checkpoints and exits 143)
and another is cancelled with a plain ``scancel`` (which the executor plugin's default sacct
status would never see as failed). The workflow must still complete within a bound, the
pre-empted run must have resumed from its checkpoint, and its metrics must equal those of an
uninterrupted run with the same seed.

Runs only where the cluster is up: ``bash tests/slurm/cluster.sh && TOM_SLURM_TEST=1 python
-m pytest tests/slurm`` (as root on Debian; `.ci/run` does this when it can).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("TOM_SLURM_TEST") != "1",
    reason="needs the local SLURM cluster: bash tests/slurm/cluster.sh, then TOM_SLURM_TEST=1")

ACCOUNT = "tom"  # created by tests/slurm/cluster.sh
BOUND_S = 600  # the whole workflow (about 2.5 minutes here), two interrupted jobs and retries
# Longer smoke runs (8 epochs of 200 steps), so a job can be caught between epochs.
OVERRIDES = ["schedule.epochs=8"]
WALL_CLOCK = re.compile(r"^(time_.*|wall_time|sps)$")


def training_processes() -> dict[int, tuple[str, Path]]:
    """Running `tom train` processes started by SLURM: pid -> (job id, run directory)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode() for a in argv if a]
        if "train" not in args or "--out" not in args or not any("tom" in a for a in args[:2]):
            continue
        job = next((e.split(b"=", 1)[1].decode() for e in environ
                    if e.startswith(b"SLURM_JOB_ID=")), None)
        if job is not None:
            found[int(proc.name)] = (job, Path(args[args.index("--out") + 1]))
    return found


def test_smoke_pipeline_survives_preemption_and_cancel_on_slurm(tmp_path, copy_repo):
    work = copy_repo(tmp_path / "repo")
    profile = work / "workflow/profiles/slurm/config.yaml"
    text = profile.read_text()
    assert "# slurm_account: my_account" in text
    profile.write_text(text.replace("# slurm_account: my_account", f"slurm_account: {ACCOUNT}"))
    log = (tmp_path / "snakemake.log").open("w")
    # The profile as a user has it; only the plugin's first status check after a submission
    # comes after 5 s rather than its default 40 (the local cluster answers at once; the
    # smoke runs' jobs take a minute or less, so the default left the workflow idle).
    cmd = [sys.executable, "-m", "snakemake", "all", "--profile", "workflow/profiles/slurm",
           "--slurm-init-seconds-before-status-checks", "5",
           "--configfile", "config/smoke.yaml", "--config", f"overrides={OVERRIDES}"]
    start = time.monotonic()
    workflow = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    preempted = cancelled = None
    try:
        while workflow.poll() is None and (preempted is None or cancelled is None):
            assert time.monotonic() - start < BOUND_S, "no training job to interrupt"
            for job, out in training_processes().values():
                run = (work / out) if not out.is_absolute() else out
                if (preempted is None and (run / "metrics.partial.csv").exists()
                        and not (run / "config.json").exists()):
                    subprocess.run(["scancel", "--signal=TERM", job], check=True)
                    preempted = (job, run)
                elif cancelled is None and preempted is not None and job != preempted[0]:
                    subprocess.run(["scancel", job], check=True)
                    cancelled = (job, run)
            time.sleep(0.1)
        rc = workflow.wait(timeout=max(1.0, BOUND_S - (time.monotonic() - start)))
    finally:
        if workflow.poll() is None:
            workflow.kill()
        log.close()
    output = (tmp_path / "snakemake.log").read_text()
    assert preempted is not None and cancelled is not None, output[-3000:]
    assert rc == 0, output[-5000:]
    assert time.monotonic() - start < BOUND_S

    # Both interrupted jobs were seen as failed and retried, not waited on forever.
    assert re.search(rf"SLURM-job '{preempted[0]}' failed", output), output[-3000:]
    assert re.search(rf"SLURM-job '{cancelled[0]}' failed, SLURM status is: 'CANCELLED'",
                     output), output[-3000:]
    assert "No SLURM account given" not in output

    # The pre-empted run resumed from its checkpoint and equals an uninterrupted run.
    run = preempted[1]
    env, objective, seed = run.parts[-3:]
    train_log = work / "logs/train" / env / objective / f"{seed}.log"
    assert "resuming from" in train_log.read_text()
    assert not (run / "checkpoint.pt").exists()
    reference = tmp_path / "reference"
    subprocess.run(["tom", "train", "--env", env, "--objective", objective, "--seed", seed,
                    "--preset", "smoke", "--threads", "1", "--quiet", "--out", str(reference),
                    "--set", *OVERRIDES], check=True, capture_output=True)
    ours, theirs = pd.read_csv(run / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    keep = [c for c in ours.columns if not WALL_CLOCK.match(c)]
    pd.testing.assert_frame_equal(ours[keep], theirs[keep], check_exact=True)

    # Every figure and table exists; run files follow the umask (readable by colleagues).
    for name in [f"figures/fig{i}.pdf" for i in range(1, 6)] + ["paper/tables/returns.tex"]:
        assert (work / name).stat().st_size > 0, name
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((run / "metrics.csv").stat().st_mode) == 0o666 & ~umask
    # SLURM's own logs are kept for the failed tries (the plugin deletes successful ones).
    assert list((work / ".snakemake/slurm_logs").rglob(f"{preempted[0]}.log"))
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
