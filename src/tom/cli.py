"""Command line: ``tom train`` runs one (env, objective, seed); ``tom envs`` lists choices;
``tom aggregate`` turns finished run directories into tidy summary tables; ``tom notebook``
executes an analysis notebook."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tom.config import PRESETS, ConfigError, all_keys, resolve
from tom.turns import STEPS_PER_TURN


def _train(args: argparse.Namespace) -> int:
    # Validate everything before any compute is spent (and before importing the heavy parts).
    if args.seeds is not None and args.seed is not None:
        raise ConfigError("--seed and --seeds are not allowed together: give one of them")
    seeds = [args.seed or 0] if args.seeds is None else args.seeds
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds = {seeds} is not allowed: give one or more distinct seeds")
    if len(seeds) > 1 and "{seed}" not in args.out:
        raise ConfigError(f"--out = {args.out!r} is not allowed with several --seeds: it must "
                          "contain {seed}, e.g. results/runs/hopper/tom/{seed}")
    cfgs = [resolve(args.env, args.objective, seed=seed, preset=args.preset,
                    overrides=args.set, device=args.device) for seed in seeds]
    if args.threads < 1:
        raise ConfigError(f"--threads = {args.threads} is not allowed: it must be >= 1")
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every = {args.checkpoint_every} is not allowed: it "
                          "must be >= 0 (0: checkpoint only when a signal stops the run)")
    if not args.grace > 0:
        raise ConfigError(f"--grace = {args.grace} is not allowed: it must be > 0 seconds")
    if cfgs[0].device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("config key 'device' = 'cuda' is not allowed here: "
                              "torch sees no CUDA device (use --device cpu)")
    outs = [_run_directory(args.out.replace("{seed}", str(seed))) for seed in seeds]
    import torch

    from tom.interrupt import Interrupted, StopRequest
    from tom.mbpo import NumericalFault
    from tom.population import Population

    # Small networks gain little from intra-op threads, and oversubscribed cores (parallel
    # pipeline jobs) make each op many times slower: one thread per run by default.
    torch.set_num_threads(args.threads)
    stop = StopRequest(args.grace).install()
    try:
        runs = [_TrainRun(cfg, out, args, stop) for cfg, out in zip(cfgs, outs, strict=True)]
        if len(runs) == 1 and not cfgs[0].stack_seeds:
            runs[0].build()
            outcomes = [runs[0].run()]
        else:  # one process, the seeds in turns (tom.population); stack_seeds: also one seed
            population = Population()
            for run in runs:
                population.add(run.build, **run.options(progress=False,
                                                        epoch_lines=not args.quiet))
            outcomes = population.run()
    finally:
        stop.uninstall()
    status = 0
    for run, outcome in zip(runs, outcomes, strict=True):
        if isinstance(outcome, Interrupted):
            print(f"tom: stopped by {outcome} at real step {run.trainer.env_steps}; checkpoint "
                  f"saved to {run.path}: run the same command again to resume", file=sys.stderr)
            status = status or outcome.exit_status
        elif isinstance(outcome, NumericalFault):
            kept = (f"the last good checkpoint is kept in {run.path}" if run.path.exists()
                    else "no checkpoint had been written yet")
            print(f"tom: numerical fault in seed {run.cfg.seed}: {outcome}; {kept}",
                  file=sys.stderr)
            status = status or 3
        else:
            run.finish(outcome)
    return status


class _TrainRun:
    """One seed of `tom train`: its run directory and checkpoint, its trainer (`build`:
    resumed from the checkpoint if there is one), and the files it writes at the end."""

    def __init__(self, cfg, out: Path, args: argparse.Namespace, stop) -> None:
        import mujoco
        import torch

        import tom
        from tom import checkpoint
        from tom.outputs import git_commit

        self.cfg, self.out, self.args, self.stop = cfg, out, args, stop
        # What the checkpoint's contents depend on: this code, and the versions that
        # serialise the networks and the simulator's state.
        self.path = out / checkpoint.CHECKPOINT
        self.code = (f"tom {tom.__version__} ({git_commit()}), torch {torch.__version__}, "
                     f"mujoco {mujoco.__version__}")
        self.state = None
        if self.path.exists() and args.restart:
            self.path.unlink()
            print(f"--restart: deleted {self.path}; starting over")
        elif self.path.exists():
            self.state = checkpoint.load(self.path, cfg.to_dict(), self.code)
        for stale in out.glob(f".{checkpoint.CHECKPOINT}.*.tmp"):  # a process killed mid-write
            stale.unlink()

    def build(self):
        """The trainer, resumed from the checkpoint if there is one."""
        from tom.mbpo import Trainer

        self.trainer = Trainer(self.cfg)
        if self.state is not None:
            self.trainer.load_state_dict(self.state)
            print(f"resuming from {self.path}: epoch {self.trainer.epoch + 1} of "
                  f"{self.cfg.schedule.epochs}, real step {self.trainer.env_steps} of "
                  f"{self.trainer.total_steps}")
            self.state = None
        return self.trainer

    def save(self, trainer_state: dict) -> None:
        from tom import checkpoint

        checkpoint.save(self.path, self.cfg.to_dict(), self.code, trainer_state)

    def options(self, progress: bool, epoch_lines: bool = False) -> dict:
        """`Trainer.run`'s keyword arguments for this run; ``epoch_lines``: one line on stderr
        per epoch (where several runs share the terminal, instead of a progress bar)."""
        from tom.outputs import PARTIAL_METRICS, write_csv

        def on_epoch(result) -> None:
            write_csv(self.out / PARTIAL_METRICS, result.metrics)
            if epoch_lines:
                row = result.metrics[-1]
                print(f"{self.cfg.env}/{self.cfg.objective}/{self.cfg.seed}: epoch "
                      f"{int(row['epoch'])} of {self.cfg.schedule.epochs}, return "
                      f"{row['return_mean']:.1f}, {row['sps']:.1f} real steps/s",
                      file=sys.stderr, flush=True)

        return dict(progress=progress, on_epoch=on_epoch, checkpoint=self.save,
                    checkpoint_every=self.args.checkpoint_every, stop=self.stop)

    def run(self):
        """The run to its end; its result, or the `Interrupted` or `NumericalFault` that
        stopped it."""
        from tom.interrupt import Interrupted
        from tom.mbpo import NumericalFault

        try:
            return self.trainer.run(**self.options(progress=not self.args.quiet))
        except (Interrupted, NumericalFault) as stopped:
            return stopped

    def finish(self, result) -> None:
        from tom.outputs import write_run

        if self.args.keep_checkpoint:
            self.save(self.trainer.state_dict())
        last = result.metrics[-1]
        write_run(self.out, self.cfg, result, last["wall_time"])
        if not self.args.keep_checkpoint:
            self.path.unlink(missing_ok=True)
        print(f"done: {self.cfg.env}/{self.cfg.objective}/seed {self.cfg.seed}: return "
              f"{last['return_mean']:.1f} after {last['env_steps']} real steps, "
              f"{last['wall_time']:.0f} s -> {self.out}")


def _run_directory(text: str) -> Path:
    """The run directory, created if needed; an unusable one is a ConfigError, before compute."""
    out = Path(text)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tom-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"--out = {text!r} is not a writable directory ({err.strerror}): give "
                          "a folder this user can create and write") from None
    return out


def _envs(args: argparse.Namespace) -> int:
    from tom.envs import TASKS
    from tom.objectives import OBJECTIVES

    if args.keys:
        print("\n".join(all_keys()))
        return 0
    print("tasks:")
    for name, spec in TASKS.items():
        print(f"  {name:<26} {spec.gym_id:<26} obs {spec.obs_dim:>3}  act {spec.act_dim:>2}  "
              f"{spec.description}")
    print("objectives:")
    for name, spec in OBJECTIVES.items():
        print(f"  {name:<26} {spec.description}")
    print("presets:")
    for name in PRESETS:
        print(f"  {name}")
    return 0


def _aggregate(args: argparse.Namespace) -> int:
    from tom.analysis.aggregate import aggregate

    try:
        prov = aggregate(args.runs, args.out)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    skipped = len(prov["skipped_incomplete"])
    print(f"aggregated {prov['n_runs']} runs (preset {prov['preset']}"
          + (f", {skipped} incomplete skipped" if skipped else "") + f") -> {args.out}")
    return 0


def _notebook(args: argparse.Namespace) -> int:
    import logging

    import yaml

    from tom.analysis.notebook import run_notebook

    if not Path(args.source).is_file():
        raise ConfigError(f"notebook {args.source!r} does not exist")
    parameters = {}
    for item in args.param:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--param {item!r} is not of the form name=value "
                              "(the value is read as YAML: 3, [200, 400], text)")
        parameters[key] = yaml.safe_load(text) if text else ""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_notebook(Path(args.source), Path(args.output), parameters)
    print(f"executed {args.source} -> {args.output}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import cProfile
    import pstats

    from tom.bench import format_row, measure_throughput

    if args.profile is not None and args.profile < 1:
        raise ConfigError(f"--profile = {args.profile} is not allowed: it must be >= 1 "
                          "(how many functions to list)")
    rows = []
    for objective in args.objective:
        for buffer_size in args.buffer_size:
            profiler = None if args.profile is None else cProfile.Profile()
            row = measure_throughput(args.env, objective, buffer_size=buffer_size,
                                     steps=args.steps, device=args.device, threads=args.threads,
                                     preset=args.preset, overrides=args.set,
                                     population=args.seeds, profiler=profiler,
                                     steps_per_turn=args.steps_per_turn)
            print(format_row(row), flush=True)
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
            rows.append(row)
    if args.csv:
        import pandas as pd

        from tom.outputs import append_csv, git_commit

        append_csv(Path(args.csv), pd.DataFrame(rows).assign(commit=git_commit()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one (env, objective, seed) run")
    tr.add_argument("--env", required=True, help="task short name (see `tom envs`)")
    tr.add_argument("--objective", required=True, help="model-learning objective")
    tr.add_argument("--seed", type=int, help="random seed (default 0)")
    tr.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                    help="several seeds in one process, in turns (tom.population; instead of "
                    "--seed): each writes the run directory --out names with {seed} replaced, "
                    "exactly as its own `tom train --seed` would")
    tr.add_argument("--preset", default="quick", help=f"one of {', '.join(PRESETS)}")
    tr.add_argument("--out", required=True, help="run directory to write")
    tr.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. model.kind=ensemble schedule.epochs=5")
    tr.add_argument("--device", default="cpu", help="cpu or cuda")
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--checkpoint-every", type=int, default=1, metavar="EPOCHS",
                    help="write checkpoint.pt in --out every this many epochs (default 1; 0: "
                    "only when SIGTERM/SIGINT stops the run); an existing one is resumed")
    tr.add_argument("--restart", action="store_true",
                    help="delete an existing checkpoint in --out and start over")
    tr.add_argument("--keep-checkpoint", action="store_true",
                    help="keep checkpoint.pt after the run completes (default: delete it)")
    tr.add_argument("--grace", type=float, default=20.0, metavar="SECONDS",
                    help="after SIGTERM/SIGINT, exit at most this long later, checkpointed at "
                    "the next real step if one is reached in time (default 20; SLURM kills "
                    "30 s after SIGTERM)")
    tr.set_defaults(func=_train)
    ev = sub.add_parser("envs", help="list tasks, objectives and presets")
    ev.add_argument("--keys", action="store_true", help="list every config key instead")
    ev.set_defaults(func=_envs)
    ag = sub.add_parser("aggregate", help="summarise finished runs into tidy CSV tables")
    ag.add_argument("--runs", nargs="+", default=["results/runs"], metavar="PATH",
                    help="run directories, or folders searched for them (default results/runs)")
    ag.add_argument("--out", default="results/summary", help="summary folder to write")
    ag.set_defaults(func=_aggregate)
    be = sub.add_parser("bench", help="real steps per second of the training loop, by phase "
                        "(after filling the buffer with random real transitions)")
    be.add_argument("--env", default="hopper")
    be.add_argument("--objective", nargs="+", default=["mle", "tom"])
    be.add_argument("--preset", default="paper", choices=PRESETS)
    be.add_argument("--buffer-size", type=int, nargs="+", default=[20_000], metavar="N")
    be.add_argument("--steps", type=int, default=1000, help="timed real steps (whole epochs)")
    be.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    be.add_argument("--threads", type=int, default=2)
    be.add_argument("--seeds", type=int, default=1, metavar="P",
                    help="P runs (seeds 0..P-1) in one process, in turns (as `tom train "
                    "--seeds`); real steps/s are per run")
    be.add_argument("--steps-per-turn", type=int, metavar="N",
                    help="with --seeds on a GPU (where runs are threads): inner steps a run "
                    "queues per turn in its model fit, "
                    f"discriminator and dual loops (default {STEPS_PER_TURN}; 0: a turn per "
                    "whole loop, as before tom.turns.in_turns), to measure the choice")
    be.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    be.add_argument("--csv", help="append one row per measurement to this CSV")
    be.add_argument("--profile", type=int, metavar="N",
                    help="profile the timed steps (cProfile) and list the N functions that "
                    "took the most time of their own")
    be.set_defaults(func=_bench)
    nb = sub.add_parser("notebook", help="execute an analysis notebook (jupytext .py) with "
                        "papermill; the pipeline's figure and table rules use it")
    nb.add_argument("source", help="jupytext percent-format notebook, e.g. notebooks/fig3.py")
    nb.add_argument("output", help="executed notebook (.ipynb) to write")
    nb.add_argument("--param", nargs="*", default=[], metavar="NAME=VALUE",
                    help="papermill parameters; values are read as YAML (3, [200, 400], text)")
    nb.set_defaults(func=_notebook)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"tom: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
