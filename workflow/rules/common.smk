# Helper functions and constants of the workflow (no rules here). The config's shape is
# checked by workflow/schemas/config.schema.yaml; only what the schema cannot know, which
# tasks and objectives the installed `tom` package registers, is checked here.

import json
import os
import re
import shutil
import subprocess
import sys

from snakemake.exceptions import WorkflowError


def tom_registry():
    """Tasks, objectives and presets registered in the installed `tom` package."""
    code = ("import json; from tom.envs import TASKS; from tom.objectives import OBJECTIVES; "
            "from tom.config import PRESETS; print(json.dumps({'envs': list(TASKS), "
            "'objectives': list(OBJECTIVES), 'presets': list(PRESETS)}))")
    python = shutil.which("python") or sys.executable
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise WorkflowError(f"cannot import the `tom` package with {python} (install it with "
                            f"`pip install -e .`):\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def normalise_command_line_config(cfg):
    """`--config` values arrive as text (`seeds=[0,1]` gives ['0', '1'], `seeds=3` gives 3,
    `ablation_envs=null` gives 'null'): give them the types the schema asks for."""
    for key in ("envs", "objectives", "seeds", "ablation_objectives", "budgets", "overrides"):
        if key in cfg and not isinstance(cfg[key], list):
            cfg[key] = [] if cfg[key] is None else [cfg[key]]
    for key in ("seeds", "budgets"):
        cfg[key] = [_integer(v) for v in cfg.get(key, [])]
    if cfg.get("ablation_envs") in ("null", "None", "~"):
        cfg["ablation_envs"] = None
    elif isinstance(cfg.get("ablation_envs"), str):
        cfg["ablation_envs"] = [cfg["ablation_envs"]]


def _integer(value):
    """'3' -> 3; anything else is left for the schema to reject with its key."""
    return int(value) if isinstance(value, str) and re.fullmatch(r"-?\d+", value) else value


def check_registered(cfg, registry):
    """Stop before scheduling anything if the config names what the package does not have."""
    for key, kind, where in (("envs", "envs", "src/tom/envs.py"),
                             ("objectives", "objectives", "src/tom/objectives/__init__.py"),
                             ("ablation_objectives", "objectives",
                              "src/tom/objectives/__init__.py")):
        missing = [x for x in cfg[key] if x not in registry[kind]]
        if missing:
            raise WorkflowError(
                f"config '{key}' lists {', '.join(missing)}, which the installed tom package "
                f"does not register (registered: {', '.join(registry[kind])}). Remove it from "
                f"the config, or register it in {where} first.")
    extra = [e for e in (cfg["ablation_envs"] or []) if e not in cfg["envs"]]
    if extra:
        raise WorkflowError(f"config 'ablation_envs' lists {', '.join(extra)}, "
                            f"which is not in 'envs'")


def planned_runs():
    """Every (env, objective, seed) the preset trains; ablations only on `ablation_envs`."""
    ablation_envs = config["ablation_envs"] or config["envs"]
    return [(env, obj, seed) for env in config["envs"] for obj in config["objectives"]
            for seed in config["seeds"]
            if obj not in config["ablation_objectives"] or env in ablation_envs]


RUN_DIR = "results/runs/{env}/{objective}/{seed}"
RUN_FILES = ("metrics.csv", "weights.csv", "config.json", "policy.pt")
SUMMARY_DIR = "results/summary"
SUMMARY = {name: f"{SUMMARY_DIR}/{name}.csv"
           for name in ("returns", "model_error", "weights", "compute", "configs")}
SUMMARY["provenance"] = f"{SUMMARY_DIR}/provenance.json"
ANALYSIS_CODE = ["src/tom/analysis/style.py", "src/tom/analysis/stats.py"]

# Figure -> the notebook that draws it, the summary tables it reads and the code beyond
# ANALYSIS_CODE it depends on (an edit reruns the figure). fig1 reads no runs: it is the
# derivation of ALGORITHM.md §3-§4, checked on exact tabular MDPs.
FIGURE_NOTEBOOKS = {
    "fig1": {"notebook": "derivation", "summary": [],
             "code": ["src/tom/tabular.py", "src/tom/objectives/tom.py"]},
    "fig2": {"notebook": "fig2_weights", "summary": ["weights", "model_error"], "code": []},
    "fig3": {"notebook": "fig3_returns", "summary": ["returns"], "code": []},
    "fig4": {"notebook": "fig4_model_error", "summary": ["model_error"], "code": []},
    "fig5": {"notebook": "fig5_ablations", "summary": ["returns"], "code": []},
}
FIGURES = [f"figures/{name}.pdf" for name in FIGURE_NOTEBOOKS] + ["figures/fig6.pdf"]
TABLE_NAMES = ("returns", "hyperparameters", "compute", "provenance")  # tables_notebook's
TABLES = [f"paper/tables/{name}.tex" for name in TABLE_NAMES] + ["paper/tables/reliable.tex"]
TEX_ENGINE = shutil.which("latexmk") or shutil.which("tectonic")
NO_TEX = ("paper/main.pdf is not built: neither latexmk nor tectonic is on PATH. Install one "
          "(`make install` does on Debian; elsewhere e.g. `conda install -c conda-forge "
          "tectonic`) and run the same command again; the figures (figures/) and tables "
          "(paper/tables/) are complete without it.")


def notebook_parameters(**values):
    """`tom notebook --param` arguments: the preset plus ``values``, each as name=YAML."""
    values = {"preset": config["preset"], **values}
    return [f"{name}={json.dumps(value)}" for name, value in sorted(values.items())]


def figure_inputs(wildcards):
    spec = FIGURE_NOTEBOOKS[wildcards.figure]
    return {"notebook": f"notebooks/{spec['notebook']}.py",
            "summary": [SUMMARY[name] for name in spec["summary"]],
            "code": ANALYSIS_CODE + spec["code"]}


def figure_parameters(wildcards, output):
    summary = {"summary_dir": SUMMARY_DIR} if FIGURE_NOTEBOOKS[wildcards.figure]["summary"] else {}
    return notebook_parameters(fig_path=output.fig, **summary)


def train_runtime(wildcards):
    """Minutes: a number, or a task -> minutes map with a `default`. The same on every retry:
    a retried run resumes from its checkpoint, so it needs no more time than was left."""
    runtime = config["resources"]["train"]["runtime"]
    if isinstance(runtime, dict):
        runtime = runtime.get(wildcards.env, runtime["default"])
    return int(runtime)


def train_mem_mb(wildcards, attempt):
    """Grows per retry: a job killed for memory would be killed again with the same limit."""
    return int(config["resources"]["train"]["mem_mb"]) * attempt


def resolved_hyperparameters(wildcards):
    """Digest of the run's resolved config: a change to a preset in tom.config reruns the run."""
    return config_digest(wildcards.env, wildcards.objective, int(wildcards.seed))


def config_digest(env, objective, seed):
    import hashlib

    from tom.config import resolve

    cfg = resolve(env, objective, seed, config["preset"], list(config["overrides"]),
                  config["device"])
    text = json.dumps(cfg.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_groups():
    """`seeds` in groups of `seeds_per_job`, in order: the seeds of one training job."""
    seeds, size = config["seeds"], config["seeds_per_job"]
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def run_outputs(wildcards):
    return [f"{RUN_DIR.format(env=e, objective=o, seed=s)}/{name}"
            for e, o, s in RUNS for name in ("config.json", "metrics.csv", "weights.csv")]
