# One training job per (env, objective, seed): `tom train` writes the run directory
# (metrics.csv, weights.csv, config.json last, policy.pt) atomically, so a killed job never
# leaves files that look complete; Snakemake runs an incomplete job again. The params include a
# digest of the resolved hyperparameters, so editing a preset reruns exactly the runs it changes.


rule train:
    output:
        **{name.split(".")[0]: f"{RUN_DIR}/{name}" for name in RUN_FILES},
    log:
        "logs/train/{env}/{objective}/{seed}.log",
    # Wall time and memory of each run, to size cluster jobs (`resources: train:`).
    benchmark:
        "results/benchmarks/train/{env}/{objective}/{seed}.tsv"
    params:
        preset=config["preset"],
        device=config["device"],
        out=lambda wildcards: RUN_DIR.format(**wildcards),
        quiet="" if config["progress"] else "--quiet",
        overrides=(["--set"] + list(config["overrides"])) if config["overrides"] else [],
        hyperparameters=resolved_hyperparameters,
    threads: config["threads"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        gpu=config["resources"]["train"]["gpu"],
    # `exec`: tom itself receives SLURM's SIGTERM (pre-emption, time limit), not a wrapping
    # shell that would die at once and end the job step before the checkpoint is written.
    # An existing checkpoint in the run directory (from an interrupted try) is resumed.
    conda:
        "../envs/tom.yaml"
    shell:
        "exec tom train --env {wildcards.env} --objective {wildcards.objective} "
        "--seed {wildcards.seed} --preset {params.preset} --device {params.device} "
        "--threads {threads} --out {params.out} {params.quiet} {params.overrides:q} "
        "> {log} 2>&1"
