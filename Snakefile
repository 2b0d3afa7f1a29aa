# The TOM paper pipeline: runs -> tidy summaries -> notebooks -> figures, tables, paper.
#
#   snakemake all --cores 2                                   # quick preset (default)
#   snakemake all --cores 2 --configfile config/smoke.yaml    # tests: every rule, tiny
#   snakemake all --profile workflow/profiles/slurm --configfile config/paper.yaml
#   snakemake figures/fig3.pdf --cores 2                      # one figure and what it needs
#
# Targets go before --configfile / --config: those options take every word after them.
# Presets live in config/*.yaml; `--config key=value` overrides any key. The stages are in
# workflow/rules/ (train, analysis, figures, paper); the logic lives in the `tom` package and
# the notebooks, not here.

import json
import re
import shutil
import subprocess
import sys

from snakemake.exceptions import WorkflowError


configfile: "config/quick.yaml"


CONFIG_KEYS = {"preset", "envs", "objectives", "seeds", "ablation_objectives", "ablation_envs",
               "budgets", "overrides", "device", "threads", "progress", "resources"}


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


LIST_KEYS = ("envs", "objectives", "seeds", "ablation_objectives", "budgets", "overrides")
INT_KEYS = ("seeds", "budgets")


def normalise_config(cfg):
    """`--config seeds=[0,1]` arrives as ['0', '1'] and `seeds=3` as 3: make lists of ints."""
    for key in LIST_KEYS:
        value = cfg.get(key)
        cfg[key] = [] if value is None else list(value) if isinstance(value, list) else [value]
    for key in INT_KEYS:
        try:
            cfg[key] = [int(v) for v in cfg[key]]
        except ValueError:
            raise WorkflowError(f"config '{key}' = {cfg[key]}: integers only") from None
    if cfg.get("ablation_envs") is not None and not isinstance(cfg["ablation_envs"], list):
        cfg["ablation_envs"] = [cfg["ablation_envs"]]
    cfg["threads"] = int(cfg["threads"])


def check_config(cfg, registry):
    """Stop before scheduling anything if the preset asks for what does not exist."""
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise WorkflowError(f"unknown config key(s) {', '.join(unknown)}; allowed: "
                            f"{', '.join(sorted(CONFIG_KEYS))}")
    normalise_config(cfg)
    for key, kind, where in (("envs", "envs", "src/tom/envs.py"),
                             ("objectives", "objectives", "src/tom/objectives/__init__.py"),
                             ("ablation_objectives", "objectives",
                              "src/tom/objectives/__init__.py")):
        known = registry[kind]
        missing = [x for x in cfg[key] if x not in known]
        if missing:
            raise WorkflowError(
                f"config '{key}' lists {', '.join(missing)}, which the installed tom package "
                f"does not register (registered: {', '.join(known)}). Remove it from the "
                f"config, or register it in {where} first.")
    if cfg["preset"] not in registry["presets"]:
        raise WorkflowError(f"config 'preset' = {cfg['preset']!r}: choose one of "
                            f"{', '.join(registry['presets'])}")
    extra = [e for e in (cfg["ablation_envs"] or []) if e not in cfg["envs"]]
    if extra:
        raise WorkflowError(f"config 'ablation_envs' lists {', '.join(extra)}, "
                            f"which is not in 'envs'")
    if not cfg["envs"] or not cfg["objectives"] or not cfg["seeds"]:
        raise WorkflowError("config 'envs', 'objectives' and 'seeds' must not be empty")
    if not all(s >= 0 for s in cfg["seeds"]):
        raise WorkflowError(f"config 'seeds' = {cfg['seeds']}: non-negative integers only")
    if not all(b > 0 for b in cfg["budgets"]):
        raise WorkflowError(f"config 'budgets' = {cfg['budgets']}: positive step counts only")


REGISTRY = tom_registry()
check_config(config, REGISTRY)


def planned_runs():
    """Every (env, objective, seed) the preset trains; ablations only on `ablation_envs`."""
    ablation_envs = config["ablation_envs"] or config["envs"]
    return [(env, obj, seed) for env in config["envs"] for obj in config["objectives"]
            for seed in config["seeds"]
            if obj not in config["ablation_objectives"] or env in ablation_envs]


RUNS = planned_runs()
RUN_DIR = "results/runs/{env}/{objective}/{seed}"
RUN_FILES = ("metrics.csv", "weights.csv", "config.json", "policy.pt")
SUMMARY_DIR = "results/summary"
SUMMARY = {name: f"{SUMMARY_DIR}/{name}.csv"
           for name in ("returns", "model_error", "weights", "compute", "configs")}
SUMMARY["provenance"] = f"{SUMMARY_DIR}/provenance.json"
FIGURES = [f"figures/fig{i}.pdf" for i in range(1, 6)]
TABLES = [f"paper/tables/{name}.tex"
          for name in ("returns", "hyperparameters", "compute", "provenance")]
TEX_ENGINE = shutil.which("latexmk") or shutil.which("tectonic")
NO_TEX = ("paper/main.pdf is not built: neither latexmk nor tectonic is on PATH. Install one "
          "(e.g. `conda install -c conda-forge tectonic`) and run the same command again; the "
          "figures (figures/) and tables (paper/tables/) are complete without it.")


wildcard_constraints:
    env="|".join(map(re.escape, REGISTRY["envs"])),
    objective="|".join(map(re.escape, REGISTRY["objectives"])),
    seed=r"\d+",


include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"


# Cheap rules run on the submitting machine, never as cluster jobs.
localrules: all, runs, summary, figures, tables, aggregate, paper, tables_notebook,
    fig1_derivation, fig2_weights, fig3_returns, fig4_model_error, fig5_ablations


rule all:
    input:
        FIGURES,
        TABLES,
        ["paper/main.pdf"] if TEX_ENGINE else [],


rule runs:
    input:
        [f"{RUN_DIR.format(env=e, objective=o, seed=s)}/config.json" for e, o, s in RUNS],


rule summary:
    input:
        list(SUMMARY.values()),


rule figures:
    input:
        FIGURES,


rule tables:
    input:
        TABLES,


onsuccess:
    if not TEX_ENGINE:
        print(f"note: {NO_TEX}", file=sys.stderr)
