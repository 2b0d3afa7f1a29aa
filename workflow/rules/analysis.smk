# Runs -> tidy summary tables (`tom aggregate`), and the tables notebook. Notebooks run
# through `tom notebook` (jupytext source, papermill execution, the commit of this checkout
# as a parameter); the executed notebooks are kept under results/notebooks/.


rule aggregate:
    input:
        run_outputs,
    output:
        **{name: report(path, category="Summary tables") if name == "provenance" else path
           for name, path in SUMMARY.items()},
    params:
        runs=[RUN_DIR.format(env=e, objective=o, seed=s) for e, o, s in RUNS],
        out=lambda wildcards, output: os.path.dirname(output.returns),
    log:
        "logs/aggregate.log",
    conda:
        "../envs/tom.yaml"
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
        **{name: report(f"paper/tables/{name}.tex", caption="../report/table.rst",
                        category="Tables", labels={"table": name})
           for name in TABLE_NAMES},
        notebook="results/notebooks/tables.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(
            summary_dir=os.path.dirname(SUMMARY["returns"]), budgets=config["budgets"],
            **{f"{name}_tex": output[name] for name in TABLE_NAMES}),
    log:
        "logs/notebooks/tables.log",
    conda:
        "../envs/tom.yaml"
    shell:
        "tom notebook {input.notebook} {output.notebook} --param {params.parameters:q} "
        "> {log} 2>&1"
