"""End-to-end throughput of the training loop (``tom bench``; benchmarks/throughput.py).

Runs the real loop (`tom.mbpo.Trainer`), not synthetic pieces: the replay buffer is first
filled to ``buffer_size`` real transitions (uniformly random actions in the real environment,
the cheap part of a run), the model is fit once on them (the first fit from scratch is slower
than the warm-started ones of a run, so it is not timed), and then ``steps`` real steps are
timed through the loop (whole epochs: the refits, rollouts, SAC updates and the evaluation
all happen as in a run). Reported: real steps per second (all timed steps over their wall
time, and the median over the timed epochs) and the seconds per phase.
"""

from __future__ import annotations

import cProfile
import math
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from tom import turns
from tom.buffer import Transition
from tom.compile import seconds_compiling
from tom.config import ConfigError, resolve, set_value
from tom.dynamics import FitResult
from tom.mbpo import PHASES, Trainer
from tom.population import Population


def fill(trainer: Trainer, steps: int) -> None:
    """``steps`` real transitions with uniformly random actions into the trainer's buffer
    (gathered on the host and added at once: one copy to a GPU, not one per transition)."""
    env, real = trainer.env, trainer.real
    obs, _ = env.reset()
    as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    real.add_initial_state(as_tensor(obs))
    rows = []
    for _ in range(steps):
        act = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(act)
        rows.append((obs, act, float(reward), next_obs, float(terminated)))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
            real.add_initial_state(as_tensor(obs))
    if rows:
        real.add_batch(Transition(*(as_tensor(column) for column in zip(*rows, strict=True))))
    trainer.obs = as_tensor(obs).to(trainer.device)
    trainer.env_steps = steps


class GpuBusy:
    """The GPU's busy share while the timed steps run: ``nvidia-smi``'s ``utilization.gpu``
    (the share of each sample period in which at least one kernel ran) sampled every 100 ms.
    It tells a loop that keeps the GPU busy (where only fewer or larger kernels help) from
    one that leaves it idle while the host works or waits. ``percent`` is None off a GPU or
    without ``nvidia-smi``."""

    def __init__(self, device: torch.device) -> None:
        self.percent: float | None = None
        self._process: subprocess.Popen[str] | None = None
        tool = shutil.which("nvidia-smi")
        if device.type == "cuda" and tool is not None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._process = subprocess.Popen(
                [tool, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "100", "-i", str(index)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> float | None:
        """End the sampling; the mean busy percentage (None where nothing was sampled)."""
        if self._process is not None:
            self._process.terminate()
            try:
                out, _ = self._process.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                out, _ = self._process.communicate()
            samples = [float(line) for line in out.split() if line.strip().isdigit()]
            self.percent = statistics.mean(samples) if samples else None
            self._process = None
        return self.percent


def measure_throughput(env: str, objective: str, *, buffer_size: int = 20_000,
                       steps: int = 1000, device: str = "cpu", threads: int = 1,
                       preset: str = "paper", overrides: list[str] | None = None,
                       population: int = 1,
                       profiler: cProfile.Profile | None = None,
                       steps_per_turn: int | None = None) -> dict[str, Any]:
    """Time ``steps`` real steps (rounded up to whole epochs) after a ``buffer_size`` fill.

    With ``population`` > 1, that many runs (seeds 0, 1, ...) take turns in one process
    (`tom.population`): real steps per second are per run (each run's steps over the common
    wall time), and the phase seconds are the runs' mean: each run's own work in the phase
    and its share of the stacked work of that phase, not the other runs' turns taken inside
    it (`tom.population`; on a GPU, the host's time). A ``profiler`` is enabled for the
    timed steps only (on a GPU its times are the host's: the waits for the device show in
    the calls that synchronise). On a GPU,
    ``gpu_busy_percent`` is its busy share over the timed steps (`GpuBusy`).
    ``steps_per_turn`` replaces `tom.turns.STEPS_PER_TURN` for the measurement (0: one turn
    per whole inner loop).
    With ``stack_seeds=true`` among the overrides, the runs' actions, SAC blocks,
    discriminator and dual steps and model-fit epochs are stacked (also for one run: a
    population of one, to compare with its plain work)."""
    torch.set_num_threads(threads)
    if population < 1:
        raise ConfigError(f"--seeds = {population} is not allowed: it must be >= 1")
    if steps_per_turn is not None and steps_per_turn < 0:
        raise ConfigError(f"--steps-per-turn = {steps_per_turn} is not allowed: it must be "
                          ">= 1, or 0 for one turn per whole inner loop")
    cfgs = [resolve(env, objective, seed=seed, preset=preset, overrides=overrides or [],
                    device=device) for seed in range(population)]
    length = cfgs[0].schedule.epoch_length
    if buffer_size % length or buffer_size < cfgs[0].schedule.init_steps:
        raise ValueError(f"--buffer-size = {buffer_size} must be a multiple of the epoch length "
                         f"{length} and >= schedule.init_steps = {cfgs[0].schedule.init_steps}")
    epochs = math.ceil(steps / length)
    for cfg in cfgs:
        set_value(cfg, "schedule.epochs", buffer_size // length + epochs)
    first_fit = 0.0
    fit_steps: list[int] = []  # the model fits' minibatch steps in the timed steps, per run

    def prepared(cfg) -> Trainer:
        nonlocal first_fit
        trainer = Trainer(cfg)
        fill(trainer, buffer_size)
        trainer.epoch = buffer_size // length
        start = time.perf_counter()
        trainer._refit()  # the first fit from scratch: not part of a run's steady state
        first_fit += time.perf_counter() - start
        trainer.times.clear()
        count_fit_steps(trainer, fit_steps)
        return trainer

    pop = Population()
    trainers = [pop.add(lambda cfg=cfg: prepared(cfg)) for cfg in cfgs]
    if profiler is not None:
        profiler.enable()
    default_per_turn = turns.STEPS_PER_TURN
    if steps_per_turn is not None:
        turns.STEPS_PER_TURN = steps_per_turn or sys.maxsize
    busy = GpuBusy(trainers[0].device)
    compiling = seconds_compiling()
    start = time.perf_counter()
    try:
        if population == 1 and not cfgs[0].stack_seeds:
            trainers[0].run()
        else:
            pop.run()
    finally:
        wall = time.perf_counter() - start
        compiling = seconds_compiling() - compiling
        busy.stop()
        turns.STEPS_PER_TURN = default_per_turn
        if profiler is not None:
            profiler.disable()
    timed = [row for trainer in trainers for row in trainer.result.metrics]
    return {
        "env": env, "objective": objective, "device": device, "threads": threads,
        "compile": cfgs[0].compile, "cuda_graph": cfgs[0].cuda_graph, "population": population,
        "buffer_size": buffer_size, "steps": epochs * length,
        "steps_per_s": epochs * length / wall,
        "compile_s": compiling,
        "steps_per_s_without_compiling": epochs * length / (wall - compiling),
        "steps_per_s_median_epoch": statistics.median(row["sps"] for row in timed),
        "first_fit_s": first_fit / population, "wall_s": wall,
        "gpu_busy_percent": busy.percent,
        "steps_per_turn": turns.STEPS_PER_TURN if steps_per_turn is None else steps_per_turn,
        "stack_seeds": cfgs[0].stack_seeds,
        **{f"time_{phase}": statistics.mean(t.times[phase] for t in trainers)
           for phase in PHASES},
        "model_fit_steps": statistics.mean(fit_steps),
    }


def count_fit_steps(trainer: Trainer, counts: list[int]) -> None:
    """Count the minibatch steps of ``trainer``'s model fits from now on, in a new entry of
    ``counts``. A fit runs until its holdout loss stops improving, so the model phase's
    seconds follow how many steps the fits took; per step they compare across code versions
    whose rounding (and so early stopping) differs."""
    index, fit = len(counts), trainer.model.fit
    counts.append(0)

    def counted(*args: Any, **kwargs: Any) -> FitResult:
        result = fit(*args, **kwargs)
        counts[index] += result.steps
        return result

    trainer.model.fit = counted  # type: ignore[method-assign]


def format_row(row: dict[str, Any]) -> str:
    phases = ", ".join(f"{p} {row[f'time_{p}']:.1f}" for p in PHASES)
    if row.get("model_fit_steps"):
        phases += (f" ({row['model_fit_steps']:.0f} model-fit steps, "
                   f"{row['time_model'] / row['model_fit_steps'] * 1e3:.2f} ms each)")
    runs = (f", {row['population']} runs in turns (per run:)" if row["population"] > 1
            else "")
    if row.get("stack_seeds"):
        runs += ", their actions, SAC updates, discriminator, dual and model-fit steps stacked"
    return (f"{row['env']}/{row['objective']} {row['device']}"
            f"{' compiled' if row['compile'] else ''}{' graphed' if row['cuda_graph'] else ''} "
            f"{row['threads']} thread(s){runs}, "
            f"buffer {row['buffer_size']}: {row['steps_per_s']:.2f} real steps/s "
            + (f"({row['steps_per_s_without_compiling']:.2f} without its "
               f"{row['compile_s']:.1f} s of compiling) " if row.get("compile_s") else "")
            + f"(median epoch {row['steps_per_s_median_epoch']:.2f}) over {row['steps']} steps; "
            f"seconds: {phases}"
            + ("" if row.get("gpu_busy_percent") is None
               else f"; GPU busy {row['gpu_busy_percent']:.0f} %"))
