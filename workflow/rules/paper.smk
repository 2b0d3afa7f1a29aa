# paper/main.pdf: the reproduction report, built with latexmk (pdflatex) or tectonic when one
# is on PATH. Without one, `all` skips it and says so; asking for it explicitly fails with the
# same message. Auxiliary files go to build/paper/.


rule paper:
    input:
        tex="paper/main.tex",
        figures=FIGURES,
        tables=TABLES,
    output:
        pdf="paper/main.pdf",
    log:
        "logs/paper.log",
    params:
        no_tex=NO_TEX,
    conda:
        "../envs/tex.yaml"
    shell:
        """
        mkdir -p build/paper
        if command -v latexmk > /dev/null; then
            (cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error \
                -outdir=../build/paper main.tex) > {log} 2>&1
        elif command -v tectonic > /dev/null; then
            (cd paper && tectonic --outdir ../build/paper main.tex) > {log} 2>&1
        else
            echo {params.no_tex:q} | tee {log} >&2
            exit 1
        fi
        cp build/paper/main.pdf {output.pdf}.tmp && mv {output.pdf}.tmp {output.pdf}
        """
