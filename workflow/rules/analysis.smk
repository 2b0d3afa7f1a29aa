# Runs -> tidy summary tables (`tom aggregate`), and the notebook runner shared by the figure
# and table rules: the jupytext percent-format .py is converted to .ipynb in a temporary
# folder, executed by papermill with parameters, and the executed notebook kept under
# results/notebooks/. The git commit is read when the notebook runs (not a rule parameter),
# so a commit or an edit elsewhere does not rerun every figure; each figure names it.

ANALYSIS_CODE = ["src/tom/analysis/style.py", "src/tom/analysis/stats.py"]


def notebook_parameters(**values):
    """Papermill parameters as one JSON (= YAML) document, passed with `-y`."""
    return json.dumps({"preset": config["preset"], **values}, sort_keys=True)


RUN_NOTEBOOK = (
    'commit=$(git rev-parse HEAD 2>/dev/null || echo unknown); '
    'if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; '
    'then commit="$commit-dirty"; fi; '
    'tmp=$(mktemp -d); trap \'rm -rf "$tmp"\' EXIT; '
    'jupytext --to ipynb --output "$tmp/notebook.ipynb" {input.notebook} > {log} 2>&1; '
    'papermill "$tmp/notebook.ipynb" {output.notebook} --kernel python3 --cwd . '
    '--no-progress-bar --log-output -y {params.parameters:q} -r commit "$commit" '
    '>> {log} 2>&1'
)


rule aggregate:
    input:
        [f"{RUN_DIR.format(env=e, objective=o, seed=s)}/{name}"
         for e, o, s in RUNS for name in ("config.json", "metrics.csv", "weights.csv")],
    output:
        **SUMMARY,
    params:
        runs=[RUN_DIR.format(env=e, objective=o, seed=s) for e, o, s in RUNS],
        out=SUMMARY_DIR,
    log:
        "logs/aggregate.log",
    shell:
        "tom aggregate --runs {params.runs} --out {params.out} > {log} 2>&1"


rule tables_notebook:
    input:
        notebook="notebooks/tables.py",
        returns=SUMMARY["returns"],
        compute=SUMMARY["compute"],
        configs=SUMMARY["configs"],
        provenance=SUMMARY["provenance"],
        code=ANALYSIS_CODE + ["src/tom/analysis/tables.py"],
    output:
        returns="paper/tables/returns.tex",
        hyperparameters="paper/tables/hyperparameters.tex",
        compute="paper/tables/compute.tex",
        provenance="paper/tables/provenance.tex",
        notebook="results/notebooks/tables.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(
            summary_dir=SUMMARY_DIR, budgets=config["budgets"],
            returns_tex=output.returns, hyperparameters_tex=output.hyperparameters,
            compute_tex=output.compute, provenance_tex=output.provenance),
    log:
        "logs/notebooks/tables.log",
    shell:
        RUN_NOTEBOOK
