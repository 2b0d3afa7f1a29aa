"""Side by side: real steps per second of the paper's code and of ours, same task, same budget.

    python benchmarks/paper_code.py --checkout /path/to/TOM --env hopper --objective mle tom \
        --buffer-size 20000 --epochs 1 --threads 2 [--device cuda] [--csv benchmarks/paper_code.csv]

``--checkout`` is an unmodified checkout of the paper's code (GitHub kausiksivakumar/TOM,
commit 4d196c3; the search tool's ``fetch`` brings it). Nothing of it is copied here: it is
run as it is, under an adapter (the ``_run`` mode of this script) that makes it run on
Gymnasium v5 and a CPU without touching its files (benchmarks/README.md says what the adapter
changes). With ``--device cuda`` both run on the GPU: the paper's code on the CUDA device it
hard-codes, ours with ``--device cuda`` (CUDA graphs, its default there). For each objective,
one after the other, never at the same time:

- the paper's code runs ``mbpo.py`` with its own defaults for the task (``--method mbpo`` for
  ``mle``, ``--method tom --use_disc --f chi`` for ``tom``), its initial exploration set to
  ``buffer_size − 1000`` steps, so that its epoch 1 starts with ``buffer_size`` real
  transitions in the buffer, as ours does. Its epoch 0 is warm-up (the first fit; and TOM's
  code fits by MLE until its recent-policy pool holds 1 000 transitions); epochs 1…``epochs``
  are timed, from the end of one evaluation line (``Epoch k Eval_Reward``) to the next.
- ours runs ``tom bench`` (`tom.bench.measure_throughput`) at the paper preset: the buffer
  filled to ``buffer_size``, one untimed first fit, then ``epochs`` timed epochs. The paper
  preset compiles (``compile``; ``--eager``: not); a run compiles once, so ours is its timed
  steps over their wall time without the seconds of compiling in them (printed).

Prints both throughputs (the paper code's: median over the timed epochs) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Our names -> the paper code's.
PAPER_ENVS = {"hopper": "Hopper-v2", "walker2d": "Walker2d-v2", "halfcheetah": "HalfCheetah-v2"}
PAPER_METHODS = {
    "mle": ["--method", "mbpo"],
    "tom": ["--method", "tom", "--use_disc", "--f", "chi"],
    "tom-nodisc": ["--method", "tom", "--f", "chi"],
    "pmac": ["--method", "litm"],
    "vagram": ["--method", "vaml"],
}
GYMNASIUM_IDS = {"Hopper-v2": "Hopper-v5", "Walker2d-v2": "Walker2d-v5",
                 "HalfCheetah-v2": "HalfCheetah-v5"}
EPOCH_LINE = re.compile(r"^Epoch (\d+) Eval_Reward")
# Tells the paper code's process (the ``_run`` mode) where to run: anything but "cuda" is the CPU.
DEVICE_VARIABLE = "TOM_PAPER_CODE_DEVICE"


# -- the adapter: runs inside the paper code's process ------------------------------------------

class _OldGymEnv:
    """Gym ≤ 0.25's API over a Gymnasium environment: reset() -> obs, step() -> 4-tuple with
    done = terminated or truncated (what gym's TimeLimit returned), seed() for the next reset."""

    def __init__(self, env: Any) -> None:
        self._env, self._seed = env, None
        self.observation_space, self.action_space = env.observation_space, env.action_space
        self._max_episode_steps = env.spec.max_episode_steps

    def seed(self, seed: int) -> None:
        self._seed = seed
        self.action_space.seed(seed)

    def reset(self) -> Any:
        obs, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return obs

    def step(self, action: Any) -> tuple[Any, float, bool, dict]:
        obs, reward, terminated, truncated, info = self._env.step(action)
        return obs, float(reward), bool(terminated or truncated), info


def _install_gym_module() -> None:
    """A module named ``gym`` whose ``make`` maps the paper's v2 task ids to Gymnasium v5."""
    import types

    import gymnasium

    def make(env_id: str, **kwargs: Any) -> _OldGymEnv:
        if env_id not in GYMNASIUM_IDS:
            raise ValueError(f"the adapter maps only {', '.join(GYMNASIUM_IDS)}, got {env_id!r}")
        return _OldGymEnv(gymnasium.make(GYMNASIUM_IDS[env_id], **kwargs))

    module = types.ModuleType("gym")
    module.make = make  # type: ignore[attr-defined]
    module.spaces = gymnasium.spaces  # type: ignore[attr-defined]
    sys.modules["gym"] = module


def _redirect_cuda_to_cpu() -> None:
    """Make the code's hard-coded CUDA devices mean the CPU: `.to`, `.cuda` and the tensor
    factories' ``device=`` are redirected (only used where torch has no CUDA)."""
    import functools

    import torch

    def cpu(device: Any) -> Any:
        if isinstance(device, str) and device.startswith("cuda"):
            return "cpu"
        if isinstance(device, torch.device) and device.type == "cuda":
            return torch.device("cpu")
        return device

    def redirect(fn: Any, positional: int | None) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if positional is not None and len(args) > positional:
                args = (*args[:positional], cpu(args[positional]), *args[positional + 1:])
            if "device" in kwargs:
                kwargs["device"] = cpu(kwargs["device"])
            return fn(*args, **kwargs)
        return wrapper

    torch.Tensor.to = redirect(torch.Tensor.to, 1)  # type: ignore[method-assign]
    torch.nn.Module.to = redirect(torch.nn.Module.to, 1)  # type: ignore[method-assign]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    for name in ("zeros", "ones", "empty", "full", "tensor", "as_tensor", "rand", "randn",
                 "randint", "arange", "eye", "zeros_like", "ones_like"):
        setattr(torch, name, redirect(getattr(torch, name), None))


def _on_cuda() -> bool:
    """Whether the paper's code keeps its CUDA devices: asked for (``--device cuda``) and there."""
    import torch

    return os.environ.get(DEVICE_VARIABLE, "cpu") == "cuda" and torch.cuda.is_available()


def run_paper_code(checkout: Path, argv: list[str]) -> None:
    """Run the checkout's ``mbpo.py`` with ``argv`` in this process, under the adapter."""
    _install_gym_module()
    if not _on_cuda():
        _redirect_cuda_to_cpu()
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    sys.argv = ["mbpo.py", *argv]
    runpy.run_path(str(checkout / "mbpo.py"), run_name="__main__")


# -- the side-by-side measurement ---------------------------------------------------------------

def paper_code_epochs(checkout: Path, env: str, objective: str, buffer_size: int, epochs: int,
                      threads: int, log: Path, seed: int = 0, device: str = "cpu"
                      ) -> list[float]:
    """Wall seconds of the paper code's epochs 1…epochs (each 1 000 real steps + evaluation)."""
    argv = ["--env", PAPER_ENVS[env], *PAPER_METHODS[objective], "--seed", str(seed),
            "--init_exploration_steps", str(buffer_size - 1000)]
    environ = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONUNBUFFERED": "1", DEVICE_VARIABLE: device}
    command = [sys.executable, __file__, "_run", str(checkout), *argv]
    stamps: list[float] = []
    with log.open("w") as err, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err,
                                                text=True, env=environ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if EPOCH_LINE.match(line):
                stamps.append(time.perf_counter())
                print(f"  paper code: {line.strip()}", flush=True)
                if len(stamps) == epochs + 1:
                    proc.terminate()
                    break
        proc.wait()
    if len(stamps) < epochs + 1:
        raise RuntimeError(f"the paper's code stopped after {len(stamps)} epochs "
                           f"(exit {proc.returncode}); its stderr is in {log}")
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_run":
        run_paper_code(Path(sys.argv[2]).resolve(), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, required=True,
                        help="an unmodified checkout of the paper's code")
    parser.add_argument("--env", default="hopper", choices=sorted(PAPER_ENVS))
    parser.add_argument("--objective", nargs="+", default=["mle", "tom"],
                        choices=sorted(PAPER_METHODS))
    parser.add_argument("--buffer-size", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs of 1 000 steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where both run (cuda: the paper's code as it is written)")
    parser.add_argument("--eager", action="store_true",
                        help="ours with compile=false (the paper preset compiles the inner "
                             "steps: tom.compile)")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    if not (args.checkout / "mbpo.py").is_file():
        parser.error(f"--checkout {args.checkout}: no mbpo.py there (a checkout of "
                     "kausiksivakumar/TOM is expected)")
    if args.buffer_size < 2000 or args.buffer_size % 1000:
        parser.error(f"--buffer-size {args.buffer_size}: a multiple of 1000, at least 2000")
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: at least 1")

    import pandas as pd
    import torch

    from tom.bench import measure_throughput
    from tom.outputs import append_csv, git_commit

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    rows = []
    for objective in args.objective:
        log = Path(tempfile.gettempdir()) / f"paper_code_{args.env}_{objective}.log"
        print(f"{args.env}/{objective}: the paper's code ({args.checkout}) ...", flush=True)
        paper = paper_code_epochs(args.checkout, args.env, objective, args.buffer_size,
                                  args.epochs, args.threads, log, device=args.device)
        paper_sps = 1000 / statistics.median(paper)
        print(f"{args.env}/{objective}: ours ...", flush=True)
        ours = measure_throughput(args.env, objective, buffer_size=args.buffer_size,
                                  steps=1000 * args.epochs, threads=args.threads,
                                  device=args.device,
                                  overrides=["compile=false"] if args.eager else [])
        # A run compiles once: its speed after compiling (the seconds are printed).
        ours_sps = ours["steps_per_s_without_compiling"]
        rows.append({"env": args.env, "objective": objective, "device": args.device,
                     "threads": args.threads,
                     "buffer_size": args.buffer_size, "epochs": args.epochs,
                     "compile": ours["compile"], "ours_compile_s": round(ours["compile_s"], 1),
                     "paper_code_steps_per_s": round(paper_sps, 3),
                     "ours_steps_per_s": round(ours_sps, 3),
                     "ratio": round(ours_sps / paper_sps, 3),
                     "commit": git_commit(), "torch": torch.__version__})
        compiling = (f" ({ours['compile_s']:.1f} s of compiling in its timed steps left out)"
                     if ours["compile"] else "")
        print(f"{args.env}/{objective}, {args.device}, {args.threads} thread(s), "
              f"buffer {args.buffer_size}"
              f"{', ours compiled' if ours['compile'] else ''}: "
              f"paper's code {paper_sps:.2f} real steps/s, ours {ours_sps:.2f}"
              f"{compiling}: "
              f"{ours_sps / paper_sps:.2f}×", flush=True)
    if args.csv:
        append_csv(args.csv, pd.DataFrame(rows))


if __name__ == "__main__":
    main()
