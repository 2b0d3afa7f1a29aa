"""Command line: ``tom train`` runs one (env, objective, seed); ``tom envs`` lists choices;
``tom aggregate`` turns finished run directories into tidy summary tables."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tom.config import PRESETS, ConfigError, all_keys, resolve


def _train(args: argparse.Namespace) -> int:
    # Validate everything before any compute is spent (and before importing the heavy parts).
    cfg = resolve(args.env, args.objective, seed=args.seed, preset=args.preset,
                  overrides=args.set, device=args.device)
    if args.threads < 1:
        raise ConfigError(f"--threads = {args.threads} is not allowed: it must be >= 1")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("config key 'device' = 'cuda' is not allowed here: "
                              "torch sees no CUDA device (use --device cpu)")
    import torch

    from tom.mbpo import train
    from tom.outputs import PARTIAL_METRICS, write_csv, write_run

    # Small networks gain little from intra-op threads, and oversubscribed cores (parallel
    # pipeline jobs) make each op many times slower: one thread per run by default.
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = train(cfg, progress=not args.quiet,
                   on_epoch=lambda r: write_csv(out / PARTIAL_METRICS, r.metrics))
    write_run(out, cfg, result, time.perf_counter() - start)
    last = result.metrics[-1]
    print(f"done: {cfg.env}/{cfg.objective}/seed {cfg.seed}: return {last['return_mean']:.1f} "
          f"after {last['env_steps']} real steps, {time.perf_counter() - start:.0f} s -> {out}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one (env, objective, seed) run")
    tr.add_argument("--env", required=True, help="task short name (see `tom envs`)")
    tr.add_argument("--objective", required=True, help="model-learning objective")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--preset", default="quick", help=f"one of {', '.join(PRESETS)}")
    tr.add_argument("--out", required=True, help="run directory to write")
    tr.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. model.kind=ensemble schedule.epochs=5")
    tr.add_argument("--device", default="cpu", help="cpu or cuda")
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_train)
    ev = sub.add_parser("envs", help="list tasks, objectives and presets")
    ev.add_argument("--keys", action="store_true", help="list every config key instead")
    ev.set_defaults(func=_envs)
    ag = sub.add_parser("aggregate", help="summarise finished runs into tidy CSV tables")
    ag.add_argument("--runs", nargs="+", default=["results/runs"], metavar="PATH",
                    help="run directories, or folders searched for them (default results/runs)")
    ag.add_argument("--out", default="results/summary", help="summary folder to write")
    ag.set_defaults(func=_aggregate)
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
