"""The Snakemake workflow end to end: the smoke preset builds every figure and table, a second
run schedules nothing, editing one notebook reruns only its rule, editing a preset reruns the
runs it changes, and the paper preset's dry run (also through the SLURM profile) schedules one
training job per (task, objective, seed).

Everything runs in a temporary copy of the repository (tracked and untracked-not-ignored
files), made a git repository of its own so the figures can name a commit.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("snakemake")
pytest.importorskip("papermill")
pytest.importorskip("jupytext")
pytest.importorskip("seaborn")
yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
SMOKE_BUDGET_S = 180
FIGURES = [f"figures/fig{i}.pdf" for i in range(1, 6)]
TABLES = [f"paper/tables/{t}.tex" for t in ("returns", "hyperparameters", "compute",
                                            "provenance")]
NOTEBOOKS = ["derivation", "fig2_weights", "fig3_returns", "fig4_model_error",
             "fig5_ablations", "tables"]
HAS_TEX = bool(shutil.which("latexmk") or shutil.which("tectonic"))


def snakemake(cwd: Path, *args: str, timeout: float = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run snakemake (targets first: --configfile and --config take every word after them)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> number of jobs."""
    counts, inside = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            inside = True
            continue
        if inside:
            m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
            if m and m.group(1) != "total":
                counts[m.group(1)] = int(m.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def planned_runs(config_file: Path) -> set[tuple[str, str, int]]:
    """(env, objective, seed) triples a preset file asks for, read independently of the
    Snakefile: ablation objectives only on ablation_envs (all envs when null)."""
    cfg = yaml.safe_load(config_file.read_text())
    ablation_envs = cfg.get("ablation_envs") or cfg["envs"]
    return {(e, o, s) for e in cfg["envs"] for o in cfg["objectives"] for s in cfg["seeds"]
            if o not in cfg.get("ablation_objectives", []) or e in ablation_envs}


def scheduled_train_runs(output: str) -> list[tuple[str, str, int]]:
    """(env, objective, seed) of every train job printed by a dry run."""
    runs = []
    for block in output.split("rule train:")[1:]:
        m = re.search(r"wildcards: env=([\w-]+), objective=([\w-]+), seed=(\d+)", block)
        assert m, block[:500]
        runs.append((m.group(1), m.group(2), int(m.group(3))))
    return runs


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, copy_repo):
    """A repository copy on which `snakemake all` has run with the smoke preset."""
    work = copy_repo(tmp_path_factory.mktemp("pipeline"))
    start = time.perf_counter()
    done = snakemake(work, "all", "--cores", "2", "--configfile", "config/smoke.yaml")
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return work, elapsed, done.stdout + done.stderr


def test_smoke_builds_every_figure_and_table(smoke):
    work, elapsed, output = smoke
    assert elapsed < SMOKE_BUDGET_S, f"smoke `all` took {elapsed:.0f} s"
    for name in FIGURES:
        data = (work / name).read_bytes()
        assert data.startswith(b"%PDF") and len(data) > 2000, name
        assert b"preset=smoke" in data, f"{name} does not name its preset in its metadata"
    for name in TABLES:
        assert (work / name).stat().st_size > 100, name
    for name in NOTEBOOKS:
        assert (work / "results" / "notebooks" / f"{name}.ipynb").is_file(), name
    for name in ("returns", "model_error", "weights", "compute", "configs"):
        assert (work / "results" / "summary" / f"{name}.csv").stat().st_size > 0
    provenance = (work / "paper" / "tables" / "provenance.tex").read_text()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert r"\newcommand{\TomPreset}{smoke}" in provenance
    assert commit[:10] in provenance  # the figures and tables name the pipeline's commit
    if HAS_TEX:
        assert (work / "paper" / "main.pdf").read_bytes().startswith(b"%PDF")
    else:
        assert "neither latexmk nor tectonic" in output


def test_second_run_schedules_nothing(smoke):
    work, _, _ = smoke
    done = snakemake(work, "all", "-n", "--cores", "2", "--configfile", "config/smoke.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr, done.stdout[-3000:]


def test_editing_one_notebook_reruns_only_its_rule(smoke):
    """An edit (Snakemake compares checksums, so a bare `touch` is not an edit)."""
    work, _, _ = smoke
    notebook = work / "notebooks" / "fig3_returns.py"
    text, before = notebook.read_text(), notebook.stat()
    notebook.write_text(text + "# an edit\n")
    try:
        done = snakemake(work, "all", "-n", "--cores", "2", "--configfile", "config/smoke.yaml")
    finally:
        notebook.write_text(text)
        os.utime(notebook, (before.st_atime, before.st_mtime))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {"fig3_returns": 1, "all": 1, **({"paper": 1} if HAS_TEX else {})}
    assert job_counts(done.stdout + done.stderr) == expected


def test_fewer_seeds_reaggregates_without_training(smoke):
    """`--config seeds=[0]` needs no new run; the summary is rebuilt from the declared runs."""
    work, _, _ = smoke
    done = snakemake(work, "all", "-n", "--cores", "2", "--configfile", "config/smoke.yaml",
                     "--config", "seeds=[0]")
    assert done.returncode == 0, done.stderr[-3000:]
    counts = job_counts(done.stdout + done.stderr)
    assert "train" not in counts and counts.get("aggregate") == 1


def test_unregistered_objective_fails_with_a_clear_message(smoke):
    work, _, _ = smoke
    done = snakemake(work, "all", "-n", "--configfile", "config/smoke.yaml",
                     "--config", "objectives=[mle,nonexistent]")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "nonexistent" in output and "does not register" in output


@pytest.mark.parametrize("profile", [None, "workflow/profiles/slurm"])
def test_paper_dry_run_schedules_one_train_job_per_run(smoke, profile):
    if profile:
        pytest.importorskip("snakemake_executor_plugin_slurm")
    work, _, _ = smoke
    args = ["all", "-n", "--configfile", "config/paper.yaml"]
    if profile:
        args[1:1] = ["--profile", profile]
    done = snakemake(work, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = planned_runs(work / "config" / "paper.yaml")
    output = done.stdout + done.stderr
    scheduled = scheduled_train_runs(output)
    assert len(scheduled) == len(expected) == job_counts(output)["train"]
    assert set(scheduled) == expected


def test_editing_a_preset_reruns_the_runs_it_changes(smoke):
    """The train rule's params carry a digest of the resolved config, so a preset edit in
    tom.config (not a file Snakemake tracks) still reruns every run whose config it changes."""
    work, _, _ = smoke
    config_py = work / "src" / "tom" / "config.py"
    text = config_py.read_text()
    config_py.write_text(text + '\n_PRESET_OVERRIDES["smoke"]["sac.lr"] = 1e-3\n')
    env = {"PYTHONPATH": str(work / "src")}  # the workflow imports this copy's tom
    try:
        done = snakemake(work, "all", "-n", "--cores", "2", "--configfile",
                         "config/smoke.yaml", env=env)
    finally:
        config_py.write_text(text)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert set(scheduled_train_runs(output)) == planned_runs(work / "config" / "smoke.yaml")
    assert "params have changed" in output.lower()
