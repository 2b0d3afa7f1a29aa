# One training job per (env, objective, seed): `tom train` writes the run directory
# (metrics.csv, weights.csv, config.json last, policy.pt) atomically, so a killed job never
# leaves files that look complete; Snakemake runs an incomplete job again. The params include a
# digest of the resolved hyperparameters, so editing a preset reruns exactly the runs it changes.
#
# With `seeds_per_job` > 1 (config), one job trains a group of seeds in one process, in turns
# (`tom train --seeds`, tom.population): each seed still writes its own run directory, the
# same files its own job would write. Rules `train_seeds_<seeds>`, one per group.


if config["seeds_per_job"] == 1:

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

else:
    for seeds in seed_groups():
        tag = "_".join(map(str, seeds))

        rule:
            name:
                f"train_seeds_{tag}"
            output:
                [f"results/runs/{{env}}/{{objective}}/{seed}/{name}" for seed in seeds
                 for name in RUN_FILES],
            log:
                f"logs/train/{{env}}/{{objective}}/seeds_{tag}.log",
            benchmark:
                f"results/benchmarks/train/{{env}}/{{objective}}/seeds_{tag}.tsv"
            params:
                seeds=" ".join(map(str, seeds)),
                preset=config["preset"],
                device=config["device"],
                out=lambda wildcards: RUN_DIR.format(env=wildcards.env,
                                                     objective=wildcards.objective,
                                                     seed="{seed}"),
                quiet="" if config["progress"] else "--quiet",
                overrides=(["--set"] + list(config["overrides"])) if config["overrides"] else [],
                hyperparameters=lambda wildcards, seeds=seeds: [
                    config_digest(wildcards.env, wildcards.objective, seed) for seed in seeds],
            threads: config["threads"]
            resources:
                mem_mb=lambda wildcards, attempt, n=len(seeds): train_mem_mb(wildcards, attempt) * n,
                runtime=lambda wildcards, n=len(seeds): train_runtime(wildcards) * n,
                gpu=config["resources"]["train"]["gpu"],
                # As the SLURM profile gives `train` (set-resources cannot name these rules):
                # SIGTERM 5 minutes before the time limit, to checkpoint every seed.
                slurm_extra="'--signal=TERM@300'",
            conda:
                "../envs/tom.yaml"
            shell:
                "exec tom train --env {wildcards.env} --objective {wildcards.objective} "
                "--seeds {params.seeds} --preset {params.preset} --device {params.device} "
                "--threads {threads} --out {params.out:q} {params.quiet} {params.overrides:q} "
                "> {log} 2>&1"
