"""Several runs (seeds) of one task and objective trained in one process, taking turns.

Each member is a `Trainer` of its own, with its own environments, buffers and networks; one
member runs at a time. A member holds the turn for at most one real step (`Trainer.run_steps`:
the step, then the refit and the SAC updates due after it). The global random generators
(torch's CPU and CUDA ones, numpy's, Python's) are one per process, so before its turn a
member's generator states are put in place and after it they are taken back: each member
draws exactly what a single run of its seed draws, and its results are that run's, bit for
bit on a CPU (the tests check it).

What it is for: on a GPU one run's steps occupy a small part of the chip (benchmarks/
RESULTS.md: stacked, twenty members' steps cost about what one does). There each member runs
in a thread of its own, with its own CUDA stream, and passes the turn not only after each
real step but also where it would otherwise wait for its own kernels (`tom.turns.pass_turn`:
after its SAC block, each model-fit epoch, the discriminator's and the dual's training) and
every 10 steps of those loops and of its evaluation (`tom.turns.in_turns`). The next members
then launch their work while this member's runs. Measured on one H100 (before the passes
every 10 steps), 2, 5 and 10 members made 1.17×, 1.39× and 1.51× one run's throughput, and
with them 10 members 2.15× on an H200; fewer graph launches did not help; the GPU runs the
members' small kernels at once only partly (at most 3.7 SAC updates in the time of one,
benchmarks/graph_streams.py) and was busy 82 % of the time with one member or ten on the
H100 (benchmarks/RESULTS.md). Grad mode and the current stream
are per thread, so each member keeps its own. On a CPU there is nothing to overlap, and
threads cost: while more than one live thread has called MKL's matrix product (each keeps an
OpenMP team of its own), every product takes about 1.5× as long on 2 cores
(benchmarks/RESULTS.md). There the members are coroutines (greenlets) in the caller's thread
by default, passing the turn only after each real step and where they wait for each other's
stacked work; ``threads=True`` forces threads (the tests check both ways on a CPU). On a GPU
members always run in threads: only that way is checked there against single runs.

With ``stack_seeds`` (a config key, the same for every member) the members also do some of
their work as one, with a member axis: each real step's action and their blocks of SAC
updates (`tom.stacked_sac`), TOM's discriminator and dual training (`tom.stacked_tom`), and
each epoch of their model fits (`tom.stacked_model`; early stopping stays each member's).
A member that reaches such work draws its part's random inputs in its own turn and waits,
passing the turn, until every active member has its part waiting (`tom.turns.together`);
the last one to arrive runs them all as one, on a GPU on a stream of the population's own.
Where members are out of step (their fits stopped after different numbers of epochs), only
the parts of those furthest behind run, and the others wait to be stacked with them later.
Members then equal their single runs only to rounding. The members' evaluations are not
stacked: each plays its episodes in its own turns (stacked, ten seeds' evaluations took
longer than in turns, on a GPU and on a CPU; benchmarks/RESULTS.md).

Each member's phase timers (`Trainer.times`) leave out the other members' turns taken
inside its phases, and count each piece of stacked work, shared among the members taking
part, in the phase of its kind: the members' phase seconds add up to at most the wall time.

A member that stops (a `NumericalFault`, or `Interrupted` after a signal, each member
checkpointing first as a single run does) leaves the others running; `run` returns each
member's result or the exception that ended it. Any other exception ends every member (in
threads, each at its next turn) and is raised by `run`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import greenlet
import torch

from tom import turns
from tom.checkpoint import rng_state, set_rng_state
from tom.interrupt import Interrupted
from tom.mbpo import NumericalFault, Trainer, TrainResult
from tom.sac import UpdateStats
from tom.stacked_model import StackedFit
from tom.stacked_sac import StackedPolicy, StackedSAC
from tom.stacked_tom import StackedDiscriminator, StackedDual


@dataclass
class _Member:
    trainer: Trainer
    run_options: dict[str, Any]
    rng: dict[str, Any]  # the CPU generators' states while another member holds the turn
    stream: Any = None  # torch.cuda.Stream on a GPU
    cuda_rng: torch.Generator | None = None  # its own state object of the CUDA generator
    grad: bool = True  # its grad mode while another member holds the turn
    suspended_at: float | None = None  # when its last turn ended (perf_counter)
    go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    coroutine: greenlet.greenlet | None = None  # where it runs in the caller's thread
    outcome: TrainResult | BaseException | None = None
    request: _Request | None = None  # its part of stacked work, waiting for the others'


@dataclass
class _Request:
    """A member's part of work done with the other members' parts as one (stack_seeds)."""

    kind: str  # what `turns.together` was called with: "act", "sac", "disc", ...
    part: tuple  # what the stacked work takes from this member
    key: tuple  # parts of equal keys (kind and shapes) are done together
    inputs: list[torch.Tensor]  # the tensors of the part, which the stacked work reads
    position: tuple[int, int]  # how far its run is: its real steps, then `_ORDER`
    result: Any = None
    done: bool = False


class _Cancelled(BaseException):
    """Ends a member at its turn after another member failed unexpectedly."""


class Population:
    """Runs added with `add`, then `run` together."""

    def __init__(self, threads: bool | None = None) -> None:
        """``threads``: each member in a thread of its own, else a coroutine in the caller's
        thread (see above); None: threads exactly where the members are on a GPU (there it
        must not be False)."""
        self.threads = threads
        self.stack_seeds = False
        self.members: list[_Member] = []
        self._active: list[_Member] = []  # changed only by the member holding the turn
        self._in_threads = False
        self._next: _Member | None = None  # the coroutine to switch to when one has ended
        self._failure: BaseException | None = None
        # (StackedSAC etc., the objects it was built for per slot), by kind and their ids
        self._stacks: dict[tuple, tuple[Any, list[tuple]]] = {}
        self._stack_stream: Any = None  # torch.cuda.Stream of the stacked work on a GPU

    def add(self, build: Callable[[], Trainer], **run_options: Any) -> Trainer:
        """Add the trainer ``build()`` returns (`Trainer(cfg)`, which seeds the global
        generators, perhaps followed by `Trainer.load_state_dict`, which restores them): its
        run continues from the global random state that ``build`` leaves, as a single run
        started right after would. ``run_options`` go to `Trainer.run_steps`."""
        trainer = build()
        member = _Member(trainer, run_options, _cpu_rng_state())
        if trainer.device.type == "cuda":  # its own stream, after what building it queued
            member.stream = torch.cuda.Stream(trainer.device)
            member.stream.wait_stream(torch.cuda.current_stream(trainer.device))
            member.cuda_rng = _cuda_generator(trainer.device).clone_state()
        self.members.append(member)
        return trainer

    def run(self) -> list[TrainResult | NumericalFault | Interrupted]:
        """Every member to the end of its schedule (or its fault or interruption), in turns.

        The caller's global random state is restored afterwards."""
        on_gpu = any(member.stream is not None for member in self.members)
        stacking = {member.trainer.cfg.stack_seeds for member in self.members}
        if len(stacking) > 1:
            raise ValueError("members with stack_seeds true and false are not allowed together: "
                             "their work is stacked for all members or for none")
        self.stack_seeds = stacking == {True}
        if self.threads is False and on_gpu:
            raise ValueError(
                "Population(threads=False) is not allowed with members on a GPU: only members "
                "in threads are checked there against their single runs (tests/test_cuda.py), "
                "and in one thread they would overlap less; leave threads at None or True")
        self._in_threads = on_gpu if self.threads is None else self.threads
        if self.stack_seeds and on_gpu:
            self._stack_stream = torch.cuda.Stream(self.members[0].trainer.device)
        outer, outer_grad = rng_state(), torch.is_grad_enabled()
        outer_cuda = {gen: gen.graphsafe_get_state() for gen in
                      {_cuda_generator(m.trainer.device) for m in self.members
                       if m.cuda_rng is not None}}
        self._active, self._failure, self._stacks = list(self.members), None, {}
        try:
            if self._in_threads:
                self._run_in_threads()
            else:
                self._run_in_this_thread()
        finally:
            for member in self.members:  # the caller reads the results on its own stream
                if member.stream is not None:
                    torch.cuda.current_stream(member.trainer.device).wait_stream(member.stream)
            for gen, state in outer_cuda.items():
                gen.graphsafe_set_state(state)
            set_rng_state(outer)
            torch.set_grad_enabled(outer_grad)
        if self._failure is not None:
            raise self._failure
        return [m.outcome for m in self.members]

    # -- where the members run: coroutines in the caller's thread, or threads ---------------

    def _run_in_this_thread(self) -> None:
        """Each member a greenlet of this thread; one that ends returns here, and the next
        active member takes the turn."""
        for member in self.members:
            member.coroutine = greenlet.greenlet(functools.partial(self._member_run, member))
        self._next = self._active[0] if self._active else None
        try:
            self._switch_to_next()
        except BaseException as err:  # raised here, between members: each ends at its turn
            if self._failure is None:
                self._failure = err
            self._next = self._active[0] if self._active else None
            self._switch_to_next()
            raise

    def _switch_to_next(self) -> None:
        while self._next is not None:
            member, self._next = self._next, None
            member.coroutine.switch()

    def _run_in_threads(self) -> None:
        threads = [threading.Thread(target=self._member_run, args=(member,), daemon=True,
                                    name=f"tom population member {i}")
                   for i, member in enumerate(self.members)]
        try:
            for thread in threads:
                thread.start()
            if self._active:
                self._active[0].go.release()
            self._join(threads)
        except BaseException as err:  # KeyboardInterrupt: every member ends at its next turn
            if self._failure is None:
                self._failure = err
            self._join(threads)  # (a second Ctrl-C leaves at once; the threads are daemons)
            raise

    @staticmethod
    def _join(threads: list[threading.Thread]) -> None:
        for thread in threads:
            while thread.is_alive():  # in short waits, so that signal handlers run
                thread.join(0.2)

    def _member_run(self, member: _Member) -> None:
        """``member``'s run, in its thread or coroutine, from its first turn."""
        if self._in_threads:
            member.go.acquire()
        _resume(member)
        turns.register(_Turns(self, member, passes=self._in_threads))
        stream = (torch.cuda.stream(member.stream) if member.stream is not None
                  else contextlib.nullcontext())
        try:
            if self._failure is not None:
                raise _Cancelled
            with stream:
                for _ in member.trainer.run_steps(**member.run_options):
                    self._pass_turn(member)
            member.outcome = member.trainer.result
        except (NumericalFault, Interrupted) as stopped:
            member.outcome = stopped
        except _Cancelled:
            pass
        except BaseException as err:  # noqa: BLE001 (raised again by run, in the caller)
            self._failure = err
        finally:
            turns.register(None)
            self._leave(member)

    def _pass_turn(self, member: _Member) -> None:
        """From ``member``, which holds the turn, to the next member; back when it comes round."""
        active = self._active
        following = active[(active.index(member) + 1) % len(active)]
        if following is not member:
            _suspend(member)
            if self._in_threads:
                following.go.release()
                member.go.acquire()
            else:
                following.coroutine.switch()  # back here when a member switches to this one
            _resume(member)
        if self._failure is not None:
            raise _Cancelled

    def _leave(self, member: _Member) -> None:
        """``member`` ended while holding the turn: the next one takes it."""
        i = self._active.index(member)
        del self._active[i]
        if not self._active:
            return
        following = self._active[i % len(self._active)]
        if self._in_threads:
            following.go.release()
        else:
            self._next = following  # switched to once this coroutine has returned

    # -- the members' work as one (stack_seeds) -----------------------------------------------

    def _together(self, member: _Member, kind: str, alone: Callable[[], Any],
                  part: Callable[[], tuple]) -> Any:
        """`tom.turns.together` in ``member``'s thread: ``alone()``, or with stack_seeds,
        ``member``'s ``part()`` (drawn in its random state) done together with the other
        active members' next parts (by whichever member asks last), the turn passed until
        then."""
        if not self.stack_seeds:
            return alone()
        taken = part()
        request = member.request = _Request(kind, taken, *_STACKED[kind].describe(taken),
                                            (member.trainer.env_steps, _ORDER.index(kind)))
        while not request.done:
            if all(m.request is not None for m in self._active):
                self._run_waiting(member)
            else:
                self._pass_turn(member)
        return request.result

    def _run_waiting(self, runner: _Member) -> None:
        """The waiting parts of the members furthest behind in their runs (all of them, when
        the members are in step), as one stacked piece of work per key, run by ``runner``.
        The members ahead go on waiting, to be stacked with the others when they catch up:
        members fall out of step where their fits stop after different numbers of epochs.

        Its seconds are left out of the runner's phase timers (`Trainer.away`) and shared
        among the members taking part, in the phase of its kind: so each member's phase
        seconds are its own work and its share of the stacked work, whatever phase the
        runner was in (one waiting to act may run the others' model-fit epochs)."""
        behind = min(m.request.position for m in self._active)
        groups: dict[tuple, list[_Member]] = {}
        for m in self._active:
            if m.request.position == behind:
                groups.setdefault(m.request.key, []).append(m)
        for members in groups.values():
            requests = [m.request for m in members]
            for m in members:
                m.request = None
            start = time.perf_counter()
            results = self._run_group(members, requests)
            seconds = time.perf_counter() - start
            runner.trainer.away += seconds
            for m in members:
                m.trainer.times[_STACKED[requests[0].kind].phase] += seconds / len(members)
            for request, result in zip(requests, results, strict=True):
                request.result, request.done = result, True

    def _run_group(self, members: list[_Member], requests: list[_Request]) -> list[Any]:
        """One kind's stacked work for ``requests``; on a GPU on the population's own stream,
        after what the members queued and before what they queue next."""
        kind = _STACKED[requests[0].kind]
        stack, parts, slots = self._stack(requests[0].kind, [r.part for r in requests],
                                          members[0].trainer.cfg.cuda_graph)
        stream = self._stack_stream
        # With grad on whatever the grad mode of the member that runs it (one acting, in
        # `torch.no_grad`, may run the others' model-fit epochs): a kind that needs none
        # turns it off itself.
        if stream is None:
            with torch.enable_grad():
                results = kind.run(stack, parts)[0]
            return [results[slot] for slot in slots]
        for m in members:
            stream.wait_stream(m.stream)
        with torch.cuda.stream(stream), torch.enable_grad():
            results, outputs = kind.run(stack, parts)
        for request in requests:  # read on that stream: not reused before it ran
            for tensor in request.inputs:
                tensor.record_stream(stream)
        for m in members:
            m.stream.wait_stream(stream)
            for tensor in outputs:
                tensor.record_stream(m.stream)
        return [results[slot] for slot in slots]

    def _stack(self, name: str, parts: list[tuple], graph: bool
               ) -> tuple[Any, list[tuple | None], list[int]]:
        """The stack of kind ``name`` for ``parts``, the parts in its slots, and each part's
        slot (`_Stacked.run` gives a result per slot). A stack is kept per set of members:
        the same one each round (on a GPU it holds the CUDA graphs), and another where only
        some members do this kind of work this time. For a kind that runs some of its
        members' slots (model-fit epochs: members' fits stop after different numbers of
        epochs), a stack of more members serves, with None in the others' slots, rather than
        a stack per subset, each with graphs and memory of its own."""
        kind = _STACKED[name]
        owners = [kind.owners(part) for part in parts]
        in_order = list(range(len(parts)))
        if not kind.reuse:
            return kind.build(parts, graph), parts, in_order
        key = (name, *(id(obj) for each in owners for obj in each))
        if key in self._stacks:
            return self._stacks[key][0], parts, in_order
        for (cached_name, *_), (stack, held) in self._stacks.items():
            if kind.slots and cached_name == name:
                slots = [_slot(each, held) for each in owners]
                if None not in slots:
                    placed: list[tuple | None] = [None] * len(held)
                    for slot, part in zip(slots, parts, strict=True):
                        placed[slot] = part
                    return stack, placed, slots
        stack = kind.build(parts, graph)
        self._stacks[key] = stack, owners  # the owners kept, so that their ids are not reused
        return stack, parts, in_order


# Where each kind of stacked work comes in a run (`Trainer.run_steps`): with
# `Trainer.env_steps` = e, the refit after real step e (the discriminator, the dual, the
# model fit's epochs), then its SAC block, then the action of real step e + 1.
_ORDER = ("disc", "dual", "fit", "sac", "act")


@dataclass(frozen=True)
class _Stacked:
    """How one kind of work is stacked: its parts' key and tensors, the objects a stack is
    built for, building it, and running it (per-member results, and the output tensors)."""

    describe: Callable[[tuple], tuple[tuple, list[torch.Tensor]]]
    owners: Callable[[tuple], tuple]
    build: Callable[[list[tuple], bool], Any]
    run: Callable[[Any, list[tuple]], tuple[list[Any], list[torch.Tensor]]]
    phase: str  # the phase of `Trainer.times` it is part of
    reuse: bool = True  # False: the owners are new each time (a refit's discriminators)
    slots: bool = False  # True: `run` takes None in the slots of members not taking part


def _slot(owners: tuple, held: list[tuple]) -> int | None:
    """Where ``owners`` are in a stack built for ``held`` (per slot), by identity."""
    for slot, each in enumerate(held):
        if len(each) == len(owners) and all(a is b for a, b in zip(each, owners, strict=True)):
            return slot
    return None


def _shapes(tensors: list[torch.Tensor]) -> tuple:
    return tuple(tuple(t.shape) for t in tensors)


def _run_sac(stack: StackedSAC, parts: list[tuple]) -> tuple[list[Any], list[torch.Tensor]]:
    stats = stack.update_block([batches for _, batches, _ in parts],
                               [noise for *_, noise in parts])
    return [UpdateStats(row) for row in stats], [stats]


def _run_act(stack: StackedPolicy, parts: list[tuple]) -> tuple[list[Any], list[torch.Tensor]]:
    actions = stack.act([obs for _, obs, _ in parts], [noise for *_, noise in parts])
    return list(actions), []  # on the host


def _run_disc(stack: StackedDiscriminator, parts: list[tuple]
              ) -> tuple[list[Any], list[torch.Tensor]]:
    stack.train([work for *_, work in parts])
    return [None] * len(parts), []


def _run_dual(stack: StackedDual, parts: list[tuple]) -> tuple[list[Any], list[torch.Tensor]]:
    losses = stack.train([work for *_, work in parts])
    return list(losses), [losses]


def _run_fit(stack: StackedFit, parts: list[tuple | None]
             ) -> tuple[list[Any], list[torch.Tensor]]:
    totals = stack.train([None if part is None else part[1] for part in parts])
    return list(totals.unbind(0)), [totals]


# "act": (agent, obs, noise), a real step's action (`tom.stacked_sac.StackedPolicy`); "sac":
# (agent, batches, noise) (`tom.stacked_sac`); "disc": (discriminator, optimiser, TOM config,
# work), "dual": (objective, work) (`tom.stacked_tom`); "fit": (dynamics model, its
# fit's epoch) (`tom.stacked_model`).
_STACKED = {
    "act": _Stacked(
        describe=lambda part: (("act", _shapes(part[1:])), list(part[1:])),
        owners=lambda part: (part[0],),
        build=lambda parts, graph: StackedPolicy([p[0] for p in parts]),
        run=_run_act, phase="env"),
    "sac": _Stacked(
        describe=lambda part: (("sac", _shapes([*part[1], part[2]])), [*part[1], part[2]]),
        owners=lambda part: (part[0],),
        build=lambda parts, graph: StackedSAC([p[0] for p in parts], cuda_graph=graph),
        run=_run_sac, phase="sac"),
    "disc": _Stacked(
        describe=lambda part: (("disc", _shapes(part[3].tensors())), part[3].tensors()),
        owners=lambda part: part[:2],
        build=lambda parts, graph: StackedDiscriminator(
            [p[0] for p in parts], [p[1] for p in parts], parts[0][2], cuda_graph=graph),
        run=_run_disc, phase="objective", reuse=False),
    "dual": _Stacked(
        describe=lambda part: (("dual", _shapes(part[1].tensors())), part[1].tensors()),
        owners=lambda part: part[:1],
        build=lambda parts, graph: StackedDual([p[0] for p in parts], cuda_graph=graph),
        run=_run_dual, phase="objective"),
    "fit": _Stacked(
        describe=lambda part: (("fit", type(part[0]).__name__, _shapes([part[1].idx]),
                                part[1].x.shape[1:], part[1].y.shape[1:], part[1].pattern()),
                               part[1].tensors()),
        owners=lambda part: (part[0], part[0]._optimizer),
        build=lambda parts, graph: StackedFit([p[0] for p in parts], cuda_graph=graph),
        run=_run_fit, phase="model", slots=True),
}


def _cuda_generator(device: torch.device) -> torch.Generator:
    return torch.cuda.default_generators[device.index if device.index is not None
                                         else torch.cuda.current_device()]


def _cpu_rng_state() -> dict[str, Any]:
    """`tom.checkpoint.rng_state` but the CUDA generators': each member has its own state
    object of those (`_Member.cuda_rng`), installed by `_resume` rather than copied. Copying
    would not do: CUDA graphs read the generator's seed and offset from tensors of its state
    object, and members' graphs replaying at once on their streams would race for one."""
    return rng_state(cuda=False)


def _resume(member: _Member) -> None:
    """Put ``member``'s random state and grad mode in place, before its turn; the time since
    its last turn is left out of its phase timers (`Trainer.away`)."""
    if member.suspended_at is not None:
        member.trainer.away += time.perf_counter() - member.suspended_at
    set_rng_state(member.rng)
    torch.set_grad_enabled(member.grad)
    if member.cuda_rng is not None:
        _cuda_generator(member.trainer.device).graphsafe_set_state(member.cuda_rng)


def _suspend(member: _Member) -> None:
    """Keep ``member``'s random state and grad mode, after its turn (its CUDA state object
    keeps itself)."""
    member.rng = _cpu_rng_state()
    member.grad = torch.is_grad_enabled()
    member.suspended_at = time.perf_counter()


@dataclass
class _Turns:
    """`tom.turns.Turns` for one member's thread or coroutine."""

    population: Population
    member: _Member
    passes: bool

    def pass_turn(self) -> None:
        self.population._pass_turn(self.member)

    def together(self, kind: str, alone: Callable[[], Any], part: Callable[[], tuple]) -> Any:
        return self.population._together(self.member, kind, alone, part)
