# One rule for every figure: FIGURE_NOTEBOOKS (workflow/rules/common.smk) says which notebook
# draws it and which summary tables it reads. `snakemake figures/fig3.pdf` builds one figure
# and only what it needs.


rule figure:
    input:
        unpack(figure_inputs),
    output:
        fig=report("figures/{figure}.pdf", caption="../report/figure.rst", category="Figures",
                   labels={"figure": "{figure}"}),
        notebook="results/notebooks/{figure}.ipynb",
    params:
        parameters=figure_parameters,
    log:
        "logs/notebooks/{figure}.log",
    wildcard_constraints:
        figure="|".join(FIGURE_NOTEBOOKS),
    conda:
        "../envs/tom.yaml"
    shell:
        "tom notebook {input.notebook} {output.notebook} --param {params.parameters:q} "
        "> {log} 2>&1"


# Figure 6 also writes a table (the same statistics in numbers), so it has a rule of its own.
rule fig6_reliable:
    input:
        notebook="notebooks/fig6_reliable.py",
        returns=SUMMARY["returns"],
        code=ANALYSIS_CODE + ["src/tom/analysis/tables.py"],
    output:
        fig=report("figures/fig6.pdf", caption="../report/fig6.rst", category="Figures"),
        table=report("paper/tables/reliable.tex", caption="../report/fig6.rst",
                     category="Tables"),
        notebook="results/notebooks/fig6.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(
            summary_dir=SUMMARY_DIR, fig_path=output.fig, table_path=output.table),
    log:
        "logs/notebooks/fig6.log",
    conda:
        "../envs/tom.yaml"
    shell:
        "tom notebook {input.notebook} {output.notebook} --param {params.parameters:q} "
        "> {log} 2>&1"
