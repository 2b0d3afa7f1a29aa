# One notebook per figure family; each reads only results/summary/ (fig1 reads nothing: it
# is the derivation of ALGORITHM.md §3-§4, checked on exact tabular MDPs).


rule fig1_derivation:
    input:
        notebook="notebooks/derivation.py",
        code=ANALYSIS_CODE + ["src/tom/tabular.py", "src/tom/objectives/tom.py"],
    output:
        fig="figures/fig1.pdf",
        notebook="results/notebooks/derivation.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(fig_path=output.fig),
    log:
        "logs/notebooks/derivation.log",
    shell:
        RUN_NOTEBOOK


rule fig2_weights:
    input:
        notebook="notebooks/fig2_weights.py",
        weights=SUMMARY["weights"],
        model_error=SUMMARY["model_error"],
        code=ANALYSIS_CODE,
    output:
        fig="figures/fig2.pdf",
        notebook="results/notebooks/fig2_weights.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(
            summary_dir=SUMMARY_DIR, fig_path=output.fig),
    log:
        "logs/notebooks/fig2_weights.log",
    shell:
        RUN_NOTEBOOK


rule fig3_returns:
    input:
        notebook="notebooks/fig3_returns.py",
        returns=SUMMARY["returns"],
        code=ANALYSIS_CODE,
    output:
        fig="figures/fig3.pdf",
        notebook="results/notebooks/fig3_returns.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(
            summary_dir=SUMMARY_DIR, fig_path=output.fig),
    log:
        "logs/notebooks/fig3_returns.log",
    shell:
        RUN_NOTEBOOK


rule fig4_model_error:
    input:
        notebook="notebooks/fig4_model_error.py",
        model_error=SUMMARY["model_error"],
        code=ANALYSIS_CODE,
    output:
        fig="figures/fig4.pdf",
        notebook="results/notebooks/fig4_model_error.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(
            summary_dir=SUMMARY_DIR, fig_path=output.fig),
    log:
        "logs/notebooks/fig4_model_error.log",
    shell:
        RUN_NOTEBOOK


rule fig5_ablations:
    input:
        notebook="notebooks/fig5_ablations.py",
        returns=SUMMARY["returns"],
        code=ANALYSIS_CODE,
    output:
        fig="figures/fig5.pdf",
        notebook="results/notebooks/fig5_ablations.ipynb",
    params:
        parameters=lambda wildcards, output: notebook_parameters(
            summary_dir=SUMMARY_DIR, fig_path=output.fig),
    log:
        "logs/notebooks/fig5_ablations.log",
    shell:
        RUN_NOTEBOOK
