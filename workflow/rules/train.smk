# One training job per (env, objective, seed): `tom train` writes the run directory
# (metrics.csv, weights.csv, config.json last, policy.pt) atomically, so a killed job never
# leaves files that look complete; Snakemake runs an incomplete job again. The params include a
# digest of the resolved hyperparameters, so editing a preset reruns exactly the runs it changes.


def train_runtime(wildcards):
    """Minutes: a number, or a task -> minutes map with a `default`. The same on every retry:
    a retried run resumes from its checkpoint, so it needs no more time than was left."""
    runtime = config["resources"]["train"]["runtime"]
    if isinstance(runtime, dict):
        runtime = runtime.get(wildcards.env, runtime["default"])
    return int(runtime)


def resolved_hyperparameters(wildcards):
    """Digest of the run's resolved config: a change to a preset in tom.config reruns the run."""
    import hashlib
    import json

    from tom.config import resolve

    cfg = resolve(wildcards.env, wildcards.objective, int(wildcards.seed), config["preset"],
                  list(config["overrides"]), config["device"])
    text = json.dumps(cfg.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_mem_mb(wildcards, attempt):
    """Grows per retry: a job killed for memory would be killed again with the same limit."""
    return int(config["resources"]["train"]["mem_mb"]) * attempt


rule train:
    output:
        **{name.split(".")[0]: f"{RUN_DIR}/{name}" for name in RUN_FILES},
    log:
        "logs/train/{env}/{objective}/{seed}.log",
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
    shell:
        "exec tom train --env {wildcards.env} --objective {wildcards.objective} "
        "--seed {wildcards.seed} --preset {params.preset} --device {params.device} "
        "--threads {threads} --out {params.out} {params.quiet} {params.overrides:q} "
        "> {log} 2>&1"
