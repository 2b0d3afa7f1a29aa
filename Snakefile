# The TOM paper pipeline: runs -> tidy summaries -> notebooks -> figures, tables, paper.
#
#   snakemake all --cores 2                                   # quick preset (default)
#   snakemake all --cores 2 --configfile config/smoke.yaml    # tests: every rule, tiny
#   snakemake all --profile workflow/profiles/slurm --configfile config/paper.yaml
#   snakemake figures/fig3.pdf --cores 2                      # one figure and what it needs
#   snakemake --report results/report.html                    # HTML report of a finished run
#
# Targets go before --configfile / --config: those options take every word after them.
# Presets live in config/*.yaml (checked against workflow/schemas/config.schema.yaml);
# `--config key=value` overrides any key. The stages are in workflow/rules/ (common: helper
# functions; train, analysis, figures, paper: the rules); the logic lives in the `tom`
# package and the notebooks, not here.

from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/quick.yaml"


include: "workflow/rules/common.smk"


normalise_command_line_config(config)
validate(config, "workflow/schemas/config.schema.yaml")
REGISTRY = tom_registry()
check_registered(config, REGISTRY)
RUNS = planned_runs()


wildcard_constraints:
    env="|".join(map(re.escape, REGISTRY["envs"])),
    objective="|".join(map(re.escape, REGISTRY["objectives"])),
    seed=r"\d+",


report: "workflow/report/workflow.rst"


include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"


# Cheap rules run on the submitting machine, never as cluster jobs.
localrules: all, runs, summary, figures, tables, aggregate, paper, tables_notebook, figure,
    fig6_reliable


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
