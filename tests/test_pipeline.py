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
import tempfile
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
FIGURES = [f"figures/fig{i}.pdf" for i in range(1, 7)]
TABLES = [f"paper/tables/{t}.tex" for t in ("returns", "hyperparameters", "compute",
                                            "provenance", "reliable")]
NOTEBOOKS = [f"fig{i}" for i in range(1, 7)] + ["tables"]  # executed: results/notebooks/
HAS_TEX = bool(shutil.which("latexmk") or shutil.which("tectonic"))
# Set by `make test` (and so .ci/run) after installing TeX: a missing engine fails the paper
# test instead of skipping it, so CI cannot silently lose the PDF.
REQUIRE_TEX = os.environ.get("TOM_REQUIRE_TEX", "") not in ("", "0")


def snakemake(cwd: Path, *args: str, timeout: float = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run snakemake (targets first: --configfile and --config take every word after them),
    with no SLURM in reach (`no_slurm_path`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env["PATH"] = no_slurm_path(env.get("PATH", ""))
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def no_slurm_path(path: str) -> str:
    """``path`` with a directory in front whose ``scontrol`` fails at once. When Snakemake
    starts, the SLURM executor plugin (2.8.0) runs ``scontrol show config``; where SLURM is
    installed but its controller is down (this machine between runs of tests/slurm), that
    call waits 9 s for the controller before it fails, in every snakemake process. These
    tests run the workflow locally: a failing ``scontrol`` is what the plugin sees on a
    machine without SLURM, and it goes on as it would there."""
    shim = Path(tempfile.gettempdir()) / "tom-tests-no-slurm"
    scontrol = shim / "scontrol"
    if not scontrol.exists():
        shim.mkdir(exist_ok=True)
        scontrol.write_text("#!/bin/sh\necho 'no SLURM in the local pipeline tests' >&2\n"
                            "exit 1\n")
        scontrol.chmod(0o755)
    return f"{shim}{os.pathsep}{path}"


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


def test_training_logs_show_readable_progress_lines(smoke):
    work, _, _ = smoke
    logs = sorted((work / "logs" / "train").rglob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text()
        assert "\r" not in text, f"{log}: carriage returns"
        assert re.search(r"\d+/\d+ real steps \(\d+ %\), [\d.]+ steps/s, return -?\d", text), log


def test_html_report_has_every_figure_and_table(smoke):
    work, _, _ = smoke
    done = snakemake(work, "--report", "results/report.html", "--configfile",
                     "config/smoke.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    html = (work / "results" / "report.html").read_text(errors="replace")
    for name in FIGURES + TABLES:
        assert Path(name).name in html, name
    assert "smoke" in html


def test_workflow_lint_is_clean(smoke):
    work, _, _ = smoke
    done = snakemake(work, "--lint", "--configfile", "config/smoke.yaml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Congratulations" in done.stdout + done.stderr


@pytest.mark.parametrize("setting,key", [
    ("colour=blue", "colour"),                 # an unknown key
    ("threads=two", "threads"),                # a wrong type
    ("envs=[]", "envs"),                       # an empty list
    ("seeds=[0,-1]", "seeds"),                 # a negative seed
    ("preset=huge", "preset"),                 # an unknown preset
    ("progress=maybe", "progress"),            # not a boolean
])
def test_schema_rejects_bad_config_naming_the_key(smoke, setting, key):
    work, _, _ = smoke
    done = snakemake(work, "all", "-n", "--configfile", "config/smoke.yaml", "--config", setting)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Error validating config file" in output, output[-2000:]
    assert f"'{key}'" in output, output[-2000:]
    assert "Job stats" not in output  # nothing was scheduled


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
    expected = {"figure": 1, "all": 1, **({"paper": 1} if HAS_TEX else {})}
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


def test_seeds_per_job_groups_seeds_into_one_process_per_job(smoke):
    """`seeds_per_job=2` with the paper's seeds 0-4: per (task, objective), one job for seeds
    0 1, one for 2 3 and one for 4, each a `tom train --seeds` writing every seed's files."""
    work, _, _ = smoke
    done = snakemake(work, "all", "-n", "-p", "--configfile", "config/paper.yaml",
                     "--config", "seeds_per_job=2")
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    pairs = {(e, o) for e, o, _ in planned_runs(work / "config" / "paper.yaml")}
    counts = job_counts(output)
    assert "train" not in counts
    assert {k: v for k, v in counts.items() if k.startswith("train")} == {
        "train_seeds_0_1": len(pairs), "train_seeds_2_3": len(pairs), "train_seeds_4": len(pairs)}
    commands = re.findall(r"exec tom train --env ([\w-]+) --objective ([\w-]+) --seeds ([\d ]+?) "
                          r"--preset paper .*--out '(results/runs/[\w-]+/[\w-]+/\{seed\})'",
                          output)
    assert len(commands) == 3 * len(pairs)
    assert {(e, o) for e, o, _, _ in commands} == pairs
    assert {seeds for _, _, seeds, _ in commands} == {"0 1", "2 3", "4"}
    done = snakemake(work, "all", "-n", "--configfile", "config/paper.yaml",
                     "--config", "seeds_per_job=0")
    assert done.returncode != 0 and "seeds_per_job" in done.stdout + done.stderr


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


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout


def squash(text: str) -> str:
    """Text without whitespace: line breaks and word spacing differ between a figure's own PDF
    and the paper that embeds it."""
    return re.sub(r"\s+", "", text)


TEX_WORD = re.compile(r"[A-Za-z]{4,}")


def tex_words(source: str) -> set[str]:
    """The words a LaTeX source prints: comments, commands, labels, environment names and
    column specifications left out."""
    source = re.sub(r"(?<!\\)%.*", "", source)
    source = re.sub(r"\\(label|ref|begin|end|cmidrule|newcommand|input|includegraphics)\*?"
                    r"(\[[^]]*\])?\{[^}]*\}(\{[^}]*\})?", " ", source)
    return set(TEX_WORD.findall(re.sub(r"\\[A-Za-z]+", " ", source)))


def own_items(items: dict[str, set[str]], name: str, exclude: set[str] = frozenset()) -> set[str]:
    """What `name` has that no other entry of `items` has (and is not in `exclude`)."""
    others = set().union(*(v for k, v in items.items() if k != name))
    return items[name] - others - exclude


def test_paper_pdf_has_every_section_figure_and_table(smoke):
    r"""paper/main.pdf of the smoke pipeline: at least one page per \section, every figure the
    workflow made (figures/fig*.pdf: the text of each, found in the paper's text) and every
    table (paper/tables/*.tex: its words), and no unresolved reference."""
    if not HAS_TEX:
        message = ("neither latexmk nor tectonic is on PATH, so the pipeline builds no "
                   "paper/main.pdf (install TeX: bash scripts/install-tex.sh, or "
                   "conda install -c conda-forge tectonic)")
        if REQUIRE_TEX:
            pytest.fail(f"TOM_REQUIRE_TEX=1 (make test) but {message}; where TeX cannot be "
                        "installed, `make test REQUIRE_TEX=` skips this test")
        pytest.skip(message)
    missing_tools = [t for t in ("pdftotext", "pdfinfo") if not shutil.which(t)]
    if missing_tools:
        message = (f"{', '.join(missing_tools)} not on PATH (poppler-utils; "
                   "bash scripts/install-tex.sh installs it)")
        if REQUIRE_TEX:
            pytest.fail(f"TOM_REQUIRE_TEX=1 but {message}")
        pytest.skip(message)
    work, _, _ = smoke
    pdf = work / "paper" / "main.pdf"
    assert pdf.read_bytes().startswith(b"%PDF"), pdf
    source = (work / "paper" / "main.tex").read_text()
    sections = re.findall(r"^[^%\n]*\\section\*?\{", source, flags=re.M)
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True,
                          check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, flags=re.M).group(1))
    assert sections and pages >= len(sections), (pages, len(sections))

    text = pdf_text(pdf)
    flat = squash(text)
    assert "??" not in text, "an unresolved reference (??) in paper/main.pdf"

    # Figures: the lines of text (titles, axis labels, legends, footers) that a figure has and
    # no other figure (nor the LaTeX sources) has; each must be in the paper's text.
    figures = sorted((work / "figures").glob("fig*.pdf"))
    assert {f"figures/{f.name}" for f in figures} >= set(FIGURES), figures
    lines = {f.name: {squash(line) for line in pdf_text(f).splitlines()
                      if len(squash(line)) >= 8 and re.search("[A-Za-z]{3}", line)}
             for f in figures}
    latex = squash(source + "".join(t.read_text()
                                    for t in (work / "paper" / "tables").glob("*.tex")))
    for figure in figures:
        # Its own lines; a figure with none (all its text also in other figures): all of them.
        own = ({line for line in own_items(lines, figure.name) if line not in latex}
               or {line for line in lines[figure.name] if line not in latex})
        assert own, f"{figure.name} has no text to look for in the paper"
        missing = sorted(line for line in own if line not in flat)
        assert not missing, f"{figure.name} is not in paper/main.pdf: {missing[:5]}"

    # Tables: the words of each generated table that neither main.tex nor another table has
    # (all its words if none), and the values of the macros it defines (provenance.tex).
    tables = sorted((work / "paper" / "tables").glob("*.tex"))
    assert {f"paper/tables/{t.name}" for t in tables} >= set(TABLES), tables
    words = {t.name: tex_words(t.read_text()) for t in tables}
    pdf_words = set(TEX_WORD.findall(text))
    for table in tables:
        own = own_items(words, table.name, exclude=tex_words(source)) or words[table.name]
        values = [squash(re.sub(r"\\[A-Za-z]+|[{}]", "", v)) for v in
                  re.findall(r"\\newcommand\{\\\w+\}\{(.*)\}\s*$", table.read_text(),
                             flags=re.M)]
        assert own or values, f"{table.name} has no text to look for in the paper"
        missing = sorted(own - pdf_words) + [v for v in values if v not in flat]
        assert not missing, f"{table.name} is not in paper/main.pdf: {missing[:10]}"


def make(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["make", f"PYTHON={sys.executable}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def in_order(output: str, *fragments: str) -> None:
    """Each fragment is on a line of `output`, each on a later line than the one before."""
    lines, at = output.splitlines(), 0
    for fragment in fragments:
        found = [i for i, line in enumerate(lines) if fragment in line and i >= at]
        assert found, f"{fragment!r} not after line {at} of:\n{output}"
        at = found[0] + 1


INSTALL_COMMANDS = ('-m pip install --quiet "torch==2.13.0"',
                    '-m pip install --quiet -e ".[dev,pipeline]"',
                    "bash scripts/install-tex.sh")


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_make_reproduce_and_test_from_a_clean_copy(tmp_path, copy_repo):
    """The README's two commands, as a dry run (`make -n`) in a fresh copy of the repository:
    `make reproduce` installs (the CPU torch before the package) and runs `snakemake all` at
    the default (quick) preset; `make test` installs, then runs ruff, pytest with
    TOM_REQUIRE_TEX=1 and the real-SLURM test; INSTALL= skips the install. `.ci/run` calls
    `make test`. `make install-tex` runs for real: with TeX installed it does nothing."""
    work = copy_repo(tmp_path / "clone")
    python = sys.executable

    done = make(work, "-n", "reproduce")
    assert done.returncode == 0, done.stderr
    in_order(done.stdout, *INSTALL_COMMANDS, f"{python} -m snakemake all --cores all")
    assert "--configfile" not in done.stdout  # the default preset: config/quick.yaml

    done = make(work, "-n", "test")
    assert done.returncode == 0, done.stderr
    in_order(done.stdout, *INSTALL_COMMANDS,
             f"{python} -m ruff check src tests benchmarks notebooks",
             f"TOM_REQUIRE_TEX=1 {python} -m pytest -q",
             "bash tests/slurm/cluster.sh",
             f"TOM_SLURM_TEST=1 {python} -m pytest -q tests/slurm",
             "SLURM test NOT run")

    done = make(work, "-n", "test", "INSTALL=")
    assert done.returncode == 0, done.stderr
    assert "pip install" not in done.stdout and "-m pytest -q" in done.stdout

    done = make(work, "-n", "smoke", "INSTALL=")
    assert done.returncode == 0, done.stderr
    assert f"{python} -m snakemake all --cores all --configfile config/smoke.yaml" in done.stdout

    done = make(work)  # the default goal: help
    assert done.returncode == 0 and "make reproduce" in done.stdout and "make test" in done.stdout

    ci = [line.strip() for line in (work / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert any(re.match(r"make( \S+=\S+)* test\b", line) for line in ci), ci

    if HAS_TEX and shutil.which("pdftotext"):
        start = time.perf_counter()
        done = make(work, "install-tex")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "installing" not in done.stdout, done.stdout  # nothing to do
        assert time.perf_counter() - start < 30


def test_install_tex_without_a_package_manager_says_how_and_succeeds(tmp_path):
    """On a machine without apt-get (a laptop, macOS, a cluster's login node) the TeX step of
    `make install` prints how to install TeX and exits 0: the install does not fail."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "tr", "sort", "id", "grep"):
        found = shutil.which(tool)
        if not found:
            pytest.skip(f"{tool} is not installed")
        (bin_dir / tool).symlink_to(found)
    done = subprocess.run([shutil.which("bash"), str(REPO / "scripts" / "install-tex.sh")],
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tectonic" in done.stdout and "no apt-get" in done.stdout, done.stdout
