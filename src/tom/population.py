"""Several runs (seeds) of one task and objective trained in one process, taking turns.

Each member is a `Trainer` of its own, with its own environments, buffers and networks; the
members take turns one real step at a time (`Trainer.run_steps`: the step, then the refit and
the SAC updates due after it). The global random generators (torch's CPU and CUDA ones,
numpy's, Python's) are one per process, so before its turn a member's generator states are
put in place and after it they are taken back: each member draws exactly what a single run
of its seed draws, and its results are that run's, bit for bit on a CPU (the tests check it).

What it is for: on a GPU one run's steps occupy a small part of the chip (benchmarks/
RESULTS.md: stacked, twenty members' steps cost about what one does). Each member's work goes
to its own CUDA stream, so one member's kernels can run while the next member's step is being
launched. On a CPU it gains nothing over running the seeds as separate processes (it is
measured in benchmarks/RESULTS.md); there it serves to check that members equal single runs.

A member that stops (a `NumericalFault`, or `Interrupted` after a signal, each member
checkpointing first as a single run does) leaves the others running; `run` returns each
member's result or the exception that ended it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tom.checkpoint import rng_state, set_rng_state
from tom.interrupt import Interrupted
from tom.mbpo import NumericalFault, Trainer, TrainResult


@dataclass
class _Member:
    trainer: Trainer
    run_options: dict[str, Any]
    rng: dict[str, Any]  # tom.checkpoint.rng_state()
    stream: Any = None  # torch.cuda.Stream on a GPU
    steps: Any = None
    outcome: TrainResult | BaseException | None = field(default=None)


class Population:
    """Runs added with `add`, then `run` together."""

    def __init__(self) -> None:
        self.members: list[_Member] = []

    def add(self, build: Callable[[], Trainer], **run_options: Any) -> Trainer:
        """Add the trainer ``build()`` returns (`Trainer(cfg)`, which seeds the global
        generators, perhaps followed by `Trainer.load_state_dict`, which restores them): its
        run continues from the global random state that ``build`` leaves, as a single run
        started right after would. ``run_options`` go to `Trainer.run_steps`."""
        trainer = build()
        stream = None
        if trainer.device.type == "cuda":  # its own stream, after what building it queued
            stream = torch.cuda.Stream(trainer.device)
            stream.wait_stream(torch.cuda.current_stream(trainer.device))
        self.members.append(_Member(trainer, run_options, rng_state(), stream))
        return trainer

    def run(self) -> list[TrainResult | NumericalFault | Interrupted]:
        """Every member to the end of its schedule (or its fault or interruption), in turns.

        The caller's global random state is restored afterwards."""
        outer = rng_state()
        try:
            for member in self.members:
                member.steps = member.trainer.run_steps(**member.run_options)
            active = list(self.members)
            while active:
                for member in list(active):
                    if not self._turn(member):
                        active.remove(member)
        finally:
            for member in self.members:  # the caller reads the results on its own stream
                if member.stream is not None:
                    torch.cuda.current_stream(member.trainer.device).wait_stream(member.stream)
            set_rng_state(outer)
        return [m.outcome for m in self.members]

    @staticmethod
    def _turn(member: _Member) -> bool:
        """One step of ``member`` in its own random state and stream; False once it ended."""
        set_rng_state(member.rng)
        stream = (torch.cuda.stream(member.stream) if member.stream is not None
                  else contextlib.nullcontext())
        try:
            with stream:
                next(member.steps)
            return True
        except StopIteration:
            member.outcome = member.trainer.result
        except (NumericalFault, Interrupted) as stopped:
            member.outcome = stopped
        finally:
            member.rng = rng_state()
        return False
