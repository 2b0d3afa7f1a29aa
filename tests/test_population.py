"""`tom.population`: seeds trained in one process, in turns, give each seed's single run
exactly (on a CPU), and a member that stops leaves the others running."""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import inspect
import json
import signal
import threading
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch

import tom.population as population_module
from tom.buffer import Transition
from tom.cli import main
from tom.config import resolve
from tom.interrupt import Interrupted
from tom.mbpo import NumericalFault, Trainer, TrainResult
from tom.objectives.tom import DualWork, discriminator_loss
from tom.outputs import RUN_FILES
from tom.population import Population
from tom.sac import UpdateStats

TIMING = ("time_", "wall_time", "sps")


def _cfg(seed: int, objective: str = "tom", overrides: tuple[str, ...] = ()):
    return resolve("inverted_pendulum", objective, seed=seed, preset="smoke",
                   overrides=list(overrides))


def _untimed(result: TrainResult) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in result.metrics]


def _parameters(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in (*trainer.agent.actor.parameters(),
                                         *trainer.agent.critic.parameters(),
                                         *trainer.model.parameters())]


@pytest.mark.parametrize(("objective", "threads"),
                         [("tom", False), ("mle", False), ("tom", True), ("mle", True)])
def test_members_equal_their_single_runs_bit_for_bit(objective, threads):
    """Seeds 0, 1 and 2 in turns against each alone: the same metrics, weight rows and final
    networks, exactly, in turns of one real step in this thread (the default on a CPU) and
    in threads that pass the turn inside steps too (the default on a GPU). Without the swap
    of the global random state, member 1 would draw after member 0 and differ at its first
    SAC update."""
    singles = {}
    for seed in (0, 1, 2):
        trainer = Trainer(_cfg(seed, objective))
        singles[seed] = (trainer.run(), _parameters(trainer))
    torch.manual_seed(123)
    np.random.seed(123)
    caller = (torch.get_rng_state(), np.random.get_state()[1].copy())
    population = Population(threads=threads)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed, objective)))
                for seed in (0, 1, 2)]
    # Adding seeds the global generators (as Trainer does); run restores what it found.
    before_run = (torch.get_rng_state(), np.random.get_state()[1].copy())
    results = population.run()
    assert torch.equal(torch.get_rng_state(), before_run[0])
    assert np.array_equal(np.random.get_state()[1], before_run[1])
    assert not torch.equal(caller[0], before_run[0])
    for seed, trainer, result in zip((0, 1, 2), trainers, results, strict=True):
        single, single_params = singles[seed]
        assert _untimed(result) == _untimed(single)
        assert result.weights == single.weights
        for p, q in zip(single_params, _parameters(trainer), strict=True):
            assert torch.equal(p, q)
    assert _untimed(results[0]) != _untimed(results[1])


@pytest.mark.parametrize("threads", [False, True])
def test_compiled_members_equal_their_single_compiled_runs_bit_for_bit(threads):
    """`compile: true` (on in the paper preset): the members share the compiled code of the
    SAC critic's, the model's and the dual's losses (one graph each, the same weights'
    shapes) and still give their single runs' metrics and networks exactly, as coroutines
    and as threads taking turns (how a GPU runs them)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = ("compile=true",)
    singles = {}
    for seed in (0, 1):
        trainer = Trainer(_cfg(seed, "tom-nodisc", compiled))
        singles[seed] = (trainer.run(), _parameters(trainer))
    population = Population(threads=threads)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed, "tom-nodisc", compiled)))
                for seed in (0, 1)]
    for seed, trainer, result in zip((0, 1), trainers, population.run(), strict=True):
        single, single_params = singles[seed]
        assert _untimed(result) == _untimed(single)
        for p, q in zip(single_params, _parameters(trainer), strict=True):
            assert torch.equal(p, q)
    # One graph per loss (critic, model, dual) for all four runs: compiled once, shared.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3


@pytest.mark.parametrize("threads", [False, True])
def test_a_member_that_fails_leaves_the_others_running(monkeypatch, threads):
    """A numerical fault in member 1's first refit: it ends with the fault, members 0 and 2
    run to the end and still equal their single runs."""
    single = {seed: Trainer(_cfg(seed)).run() for seed in (0, 2)}
    population = Population(threads=threads)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed))) for seed in (0, 1, 2)]

    def fault():
        raise NumericalFault("model", trainers[1].env_steps, "model training loss")

    monkeypatch.setattr(trainers[1], "_refit", fault)
    results = population.run()
    assert isinstance(results[1], NumericalFault)
    assert "model training loss is not finite, in phase 'model'" in str(results[1])
    assert _untimed(results[0]) == _untimed(single[0])
    assert _untimed(results[2]) == _untimed(single[2])


def test_members_pass_the_turn_inside_their_steps_before_waiting(monkeypatch):
    """A member passes the turn after each real step and also inside it, where it would wait
    for its GPU work: after its SAC block, each model-fit epoch, the discriminator's training
    and the dual's steps, and every 10 steps of those three loops and of its evaluation
    (`tom.turns.STEPS_PER_TURN`; here 12 discriminator steps and 25 dual steps per refit,
    `tom.evaluation.Evaluation.run`). The next member takes each
    turn, so members' work overlaps on a GPU; a member that leaves a pass out of one of these
    places fails this test."""
    longer_loops = ("tom.disc_passes=6", "tom.dual_steps=25")  # 6 × 2 minibatches; 10+10+5
    population = Population(threads=True)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed, overrides=longer_loops)))
                for seed in (0, 1)]
    passes: list[tuple[int, str]] = []
    original = Population._pass_turn

    def recording(self, member):
        caller = next(f.function for f in inspect.stack(context=0)[1:]
                      if f.function == "_member_run"
                      or not f.filename.endswith(("population.py", "turns.py")))
        passes.append(([m.trainer for m in self.members].index(member.trainer), caller))
        original(self, member)

    monkeypatch.setattr(Population, "_pass_turn", recording)
    population.run()
    assert {where for _, where in passes} == {
        "_member_run", "_sac_block", "epoch_alone", "_train_discriminator_alone",
        "_shaping_reward", "_train_dual_alone", "run"}
    for member in (0, 1):  # per refit: one pass after the discriminator, 1 inside it, 3 dual
        count = [where for who, where in passes if who == member].count
        assert count("_train_discriminator_alone") == count("_shaping_reward") > 0
        assert count("_train_dual_alone") == 3 * count("_shaping_reward")
        lengths = [int(row["episode_length"]) for row in trainers[member].result.metrics]
        assert trainers[member].cfg.schedule.eval_episodes == 1
        assert count("run") == sum(n // 10 for n in lengths) > 0
    members = [who for who, _ in passes]
    # They alternate, 0, 1, 0, 1, ..., until one has ended (their last evaluations may last
    # different numbers of steps); the other then passes the turn on to itself.
    end = len(members)
    while end > 1 and members[end - 1] == members[end - 2]:
        end -= 1
    assert members[:end] == [i % 2 for i in range(end)]
    assert len(members) - end <= trainers[0].cfg.schedule.max_episode_steps // 10 + 1
    steps = trainers[0].total_steps
    assert members.count(0) > steps  # more than once per real step


@pytest.mark.parametrize("threads", [False, True])
def test_an_unexpected_error_ends_every_member_and_is_raised(monkeypatch, threads):
    """A bug (not a numerical fault) in member 1's first refit: `run` raises it, after
    every member has ended; the caller's random state is restored."""
    population = Population(threads=threads)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed))) for seed in (0, 1, 2)]

    def bug():
        raise KeyError("a bug")

    monkeypatch.setattr(trainers[1], "_refit", bug)
    before = torch.get_rng_state()
    with pytest.raises(KeyError, match="a bug"):
        population.run()
    assert torch.equal(torch.get_rng_state(), before)
    assert not any(t.name.startswith("tom population") for t in threading.enumerate())
    assert all(t.env_steps < t.total_steps for t in trainers)


@pytest.mark.parametrize("threads", [False, True])
def test_ctrl_c_in_the_caller_ends_every_member(monkeypatch, threads):
    """KeyboardInterrupt in the thread that called `run` (Ctrl-C without tom's signal
    handlers; as coroutines, raised in the member running then): each member ends at its
    next turn and `run` raises it, leaving no thread."""
    population = Population(threads=threads)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed))) for seed in (0, 1)]
    refit = trainers[1]._refit

    def refit_then_ctrl_c():  # once; then wait until the caller has seen it (within 0.2 s)
        refit()
        if trainers[1].env_steps > trainers[1].cfg.schedule.init_steps:
            return
        _thread.interrupt_main()
        deadline = time.monotonic() + 10
        while population._failure is None and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(trainers[1], "_refit", refit_then_ctrl_c)
    # Python's own Ctrl-C handler: a process that a shell without job control started in the
    # background has SIGINT ignored, and interrupt_main then does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            population.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not any(t.name.startswith("tom population") for t in threading.enumerate())
    assert all(t.env_steps < t.total_steps for t in trainers)


class _GradModeRun:
    """A `Trainer` stand-in whose real steps run in a grad mode of its own, passing the turn
    (a yield of `Trainer.run_steps`) inside it; records the mode it finds after each turn."""

    device = torch.device("cpu")
    cfg = types.SimpleNamespace(stack_seeds=False)
    env_steps = 0
    away = 0.0
    result = None

    def __init__(self, grad: bool) -> None:
        self.grad, self.seen = grad, []

    def run_steps(self):
        for _ in range(3):
            with torch.set_grad_enabled(self.grad):
                yield
                self.seen.append(torch.is_grad_enabled())


@pytest.mark.parametrize("threads", [False, True])
def test_each_member_keeps_its_grad_mode_across_turns(threads):
    """Grad mode is per thread in torch: members as coroutines of one thread must each get
    theirs back at their turn (else a member in `torch.no_grad` would turn off the others'
    gradients), and the caller's is restored after the run."""
    population = Population(threads=threads)
    runs = [population.add(lambda grad=grad: _GradModeRun(grad)) for grad in (False, True)]
    with torch.no_grad():
        population.run()
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert [run.seen for run in runs] == [[False] * 3, [True] * 3]


class _StopAfter:
    """A `StopRequest` stand-in whose signal arrives after ``steps`` polls."""

    def __init__(self, steps: int) -> None:
        self.polls, self.steps = 0, steps

    @property
    def signal(self):
        self.polls += 1
        return 15 if self.polls > self.steps else None


@pytest.mark.parametrize("threads", [False, True])
def test_a_signal_checkpoints_every_member_and_they_resume_exactly(threads):
    """SIGTERM during the run: each member checkpoints at its next real step and ends with
    `Interrupted`; members rebuilt from those checkpoints finish as the single runs do."""
    single = {seed: Trainer(_cfg(seed)).run() for seed in (0, 1)}
    stop = _StopAfter(500)  # polled by both members: some 250 real steps each
    saved: dict[int, dict] = {}
    population = Population(threads=threads)
    for seed in (0, 1):
        population.add(lambda seed=seed: Trainer(_cfg(seed)), stop=stop,
                       checkpoint=lambda state, seed=seed: saved.__setitem__(seed, state))
    results = population.run()
    assert all(isinstance(r, Interrupted) and r.exit_status == 143 for r in results)
    assert sorted(saved) == [0, 1]
    assert 0 < saved[0]["env_steps"] < 400

    def load(seed: int) -> Trainer:
        trainer = Trainer(_cfg(seed))
        trainer.load_state_dict(saved[seed])
        return trainer

    resumed = Population()
    for seed in (0, 1):
        resumed.add(lambda seed=seed: load(seed))
    for seed, result in zip((0, 1), resumed.run(), strict=True):
        assert _untimed(result) == _untimed(single[seed])


# -- tom train --seeds ------------------------------------------------------------------------

def _cli(out, *seed_args: str) -> int:
    return main(["train", "--env", "inverted_pendulum", "--objective", "tom", "--preset", "smoke",
                 "--out", str(out), "--quiet", *seed_args])


def test_train_seeds_writes_the_run_directories_of_single_runs(tmp_path):
    """`tom train --seeds 0 1` writes runs/0 and runs/1 with the files `--seed 0` and
    `--seed 1` write: the same metrics (but their timings), weights, config and policy."""
    assert _cli(tmp_path / "runs" / "{seed}", "--seeds", "0", "1") == 0
    for seed in (0, 1):
        assert _cli(tmp_path / f"single{seed}", "--seed", str(seed)) == 0
        got, want = tmp_path / "runs" / str(seed), tmp_path / f"single{seed}"
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
        for name in RUN_FILES:
            assert (got / name).exists()
        metrics = [pd.read_csv(d / "metrics.csv") for d in (got, want)]
        cols = [c for c in metrics[0].columns if not c.startswith(TIMING)]
        pd.testing.assert_frame_equal(metrics[0][cols], metrics[1][cols])
        pd.testing.assert_frame_equal(pd.read_csv(got / "weights.csv"),
                                      pd.read_csv(want / "weights.csv"))
        configs = [json.loads((d / "config.json").read_text()) for d in (got, want)]
        assert configs[0]["config"] == configs[1]["config"]
        policies = [torch.load(d / "policy.pt", weights_only=False) for d in (got, want)]
        assert policies[0].keys() == policies[1].keys()
        for key in policies[0]:
            if isinstance(policies[0][key], torch.Tensor):
                assert torch.equal(policies[0][key], policies[1][key]), key


def test_train_seeds_rejects_bad_input_before_any_compute(tmp_path, capsys):
    out = tmp_path / "never"
    assert _cli(out, "--seeds", "0", "1") == 2
    assert "must contain {seed}, e.g. results/runs/hopper/tom/{seed}" in capsys.readouterr().err
    assert _cli(tmp_path / "{seed}", "--seeds", "0", "0") == 2
    assert "--seeds = [0, 0] is not allowed: give one or more distinct seeds" in (
        capsys.readouterr().err)
    assert _cli(tmp_path / "{seed}", "--seed", "1", "--seeds", "2", "3") == 2
    assert "--seed and --seeds are not allowed together" in capsys.readouterr().err
    assert _cli(tmp_path / "{seed}", "--seeds", "1", "-2") == 2
    assert "'seed' = -2 is not allowed" in capsys.readouterr().err
    assert not out.exists() and not any(tmp_path.iterdir())


# -- stacked SAC updates (stack_seeds) ----------------------------------------------------------

STACKED = ("stack_seeds=true",)


def _assert_same_rows(result: TrainResult, single: TrainResult) -> None:
    """The same untimed metrics, exactly (NaN, where no data yet, equal to NaN)."""
    pd.testing.assert_frame_equal(pd.DataFrame(_untimed(result)), pd.DataFrame(_untimed(single)),
                                  check_exact=True)


class _EachOnItsOwn:
    """Stand-ins for the stacked work (`tom.population._STACKED`) that do each member's part
    with the member's own agent or objective, fed the noise and minibatches the member drew:
    members must then equal their single runs exactly, which checks what the population does
    around the stacks (who waits for whom, whose random state draws, whose results go where).
    ``calls`` records (kind, members) per stacked call."""

    calls: list[tuple[str, int]] = []

    @staticmethod
    @contextlib.contextmanager
    def feeding(noise, name="randn_like"):
        """``torch.<name>`` returning ``noise``'s tensors in order, and all of them."""
        feed, original = iter(noise), getattr(torch, name)
        setattr(torch, name, lambda *args, **kwargs: next(feed))
        try:
            yield
        finally:
            setattr(torch, name, original)
        assert next(feed, None) is None

    @classmethod
    def sac(cls, stack, parts):
        cls.calls.append(("sac", len(parts)))
        stats = []
        for agent, block, noise in parts:
            with cls.feeding(noise.flatten(0, 1)):
                stats.append(torch.tensor(list(agent.update_block(block).values())))
        return [UpdateStats(row) for row in stats], []

    @classmethod
    def act(cls, stack, parts):
        cls.calls.append(("act", len(parts)))
        actions = []
        for agent, obs, noise in parts:
            with cls.feeding([noise]):
                actions.append(agent.act(obs).cpu())
        return actions, []

    @classmethod
    def disc(cls, stack, parts):
        cls.calls.append(("disc", len(parts)))
        for disc, opt, cfg, work in parts:
            for pos, neg, eps in zip(work.pos, work.neg, work.eps, strict=True):
                with cls.feeding([] if eps is None else [eps], "rand"):
                    loss = discriminator_loss(disc, pos, neg, cfg.replay_label,
                                              cfg.grad_penalty)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return [None] * len(parts), []

    @classmethod
    def dual(cls, stack, parts):
        cls.calls.append(("dual", len(parts)))
        losses = []
        for objective, work in parts:
            for u in range(len(work.rho)):
                loss = objective.dual_minibatch_loss(DualWork(
                    Transition(*(t[u] for t in work.batch)), work.rho[u], work.s0[u],
                    work.a0[u], work.next_act[u]))
                objective.q_opt.zero_grad(set_to_none=True)
                loss.backward()
                objective.q_opt.step()
            losses.append(loss.detach())
        return losses, []

    @classmethod
    def fit(cls, stack, parts):
        """(Given the parts in the slots of a stack built for more members, with None in
        the others' slots; a result per slot.)"""
        cls.calls.append(("fit", sum(part is not None for part in parts)))
        totals = []
        for part in parts:
            if part is None:
                totals.append(None)
                continue
            model, epoch = part
            total = torch.zeros(())
            for idx in epoch.idx:
                loss = model._objective(*(None if t is None else t[idx] for t in (
                    epoch.x, epoch.y, epoch.w, epoch.dw, epoch.ndw)))
                model._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                model._optimizer.step()
                total.add_(loss.detach())
            totals.append(total)
        return totals, []

    @classmethod
    def install(cls, monkeypatch) -> None:
        cls.calls = []
        for kind in ("act", "sac", "disc", "dual", "fit"):
            entry = population_module._STACKED[kind]
            monkeypatch.setitem(population_module._STACKED, kind, dataclasses.replace(
                entry, build=lambda parts, graph, kind=kind: cls.calls.append(
                    (f"build {kind}", len(parts))), run=getattr(cls, kind)))


@pytest.mark.parametrize("threads", [None, True])  # coroutines in this thread; threads
@pytest.mark.parametrize("fits", [(), ("model.max_epochs=8", "model.patience=2",
                                  "model.steps_per_epoch=3")])
def test_stacked_members_wait_for_each_other_and_equal_their_single_runs(fits, threads,
                                                                          monkeypatch):
    """With stack_seeds, each round of actions, of SAC blocks and of TOM's discriminator and
    dual trainings is one call with every member's part, and each model-fit epoch one call
    with the part of every member whose fit goes on; the members' runs are their single
    runs, bit for bit, when that call does each part on its own (the stacked arithmetic
    itself: tests/test_stacked_sac.py, tests/test_stacked_tom.py,
    tests/test_stacked_model.py). With early stopping (the second case) members' fits stop
    after different numbers of epochs; the members ahead then wait for the others, so that
    the next rounds again stack them all. The same whether the members are coroutines in
    this thread (the default on a CPU) or threads (on a GPU)."""
    results, fits_done = {}, []
    for seed in (0, 1, 2):  # each built right before its run, which starts from its seed
        trainer = Trainer(_cfg(seed, overrides=fits))
        fits_done.append(_recording_fits(trainer.model))
        results[seed] = (trainer.run(), _parameters(trainer))
        updates, rounds = trainer.agent.num_updates, trainer.objective.rounds
        acting = trainer.total_steps - trainer.cfg.schedule.init_steps
    _EachOnItsOwn.install(monkeypatch)
    population = Population(threads=threads)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed, overrides=STACKED + fits)))
                for seed in (0, 1, 2)]
    stacked_fits = [_recording_fits(trainer.model) for trainer in trainers]
    for seed, trainer, result in zip((0, 1, 2), trainers, population.run(), strict=True):
        single, single_params = results[seed]
        _assert_same_rows(result, single)
        for p, q in zip(single_params, _parameters(trainer), strict=True):
            assert torch.equal(p, q)
    assert stacked_fits == fits_done  # each fit's epochs and training loss
    blocks = updates // _cfg(0).schedule.update_block
    calls = _EachOnItsOwn.calls
    assert [n for kind, n in calls if kind == "sac"] == [3] * blocks
    assert [n for kind, n in calls if kind == "dual"] == [3] * rounds and rounds > 0
    assert [n for kind, n in calls if kind == "disc"] == [3] * rounds
    assert [n for kind, n in calls if kind == "act"] == [3] * acting and acting > 0
    # Per refit, epoch k is one call of the members whose fits reach it, all through one
    # stack of the three.
    expected = [sum(e > k for e, _ in refit) for refit in zip(*fits_done, strict=True)
                for k in range(max(e for e, _ in refit))]
    assert [n for kind, n in calls if kind == "fit"] == expected
    assert (min(expected) < 3) == bool(fits)
    assert [n for kind, n in calls if kind == "build fit"] == [3]


@pytest.mark.parametrize("threads", [None, True])
def test_members_phase_seconds_are_their_own_work_and_their_share_of_the_stacked(
        threads, monkeypatch):
    """Each member's phase seconds leave out the other members' turns, and each piece of
    stacked work counts, shared among the members taking part, in its kind's phase: so the
    members' phase seconds add up to no more than the population's wall time (before, each
    member waiting for the others counted their turns), and every member's SAC seconds hold
    its share of the stacked SAC blocks (slowed here by a sleep)."""
    _EachOnItsOwn.install(monkeypatch)
    pause, calls = 0.02, {}
    for kind, entry in list(population_module._STACKED.items()):
        def slowed(stack, parts, run=entry.run, kind=kind):
            calls[kind] = calls.get(kind, 0) + 1
            if kind == "sac":
                time.sleep(pause)
            return run(stack, parts)
        monkeypatch.setitem(population_module._STACKED, kind,
                            dataclasses.replace(entry, run=slowed))
    population = Population(threads=threads)
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed, overrides=STACKED)))
                for seed in (0, 1, 2)]
    start = time.perf_counter()
    population.run()
    wall = time.perf_counter() - start
    phases = sum(sum(t.times.values()) for t in trainers)
    assert phases <= wall
    assert calls["sac"] > 0 and calls["act"] > 0
    for trainer in trainers:
        assert trainer.times["sac"] >= calls["sac"] * pause / 3


def _recording_fits(model) -> list[tuple[int, float]]:
    """(epochs, training loss) of each of ``model``'s fits from now on, in a list."""
    done, fit = [], model.fit

    def recording(*args, **kwargs):
        result = fit(*args, **kwargs)
        done.append((result.epochs, result.train_loss))
        return result

    model.fit = recording
    return done


def test_stacked_members_go_on_without_a_member_that_failed(monkeypatch):
    single = {seed: Trainer(_cfg(seed)).run() for seed in (0, 2)}
    _EachOnItsOwn.install(monkeypatch)
    population = Population()
    trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed, overrides=STACKED)))
                for seed in (0, 1, 2)]
    done = []

    def fault_at_second_refit(original=trainers[1]._refit):
        done.append(1)
        if len(done) == 2:
            raise NumericalFault("model", trainers[1].env_steps, "model training loss")
        original()

    monkeypatch.setattr(trainers[1], "_refit", fault_at_second_refit)
    results = population.run()
    assert isinstance(results[1], NumericalFault)
    _assert_same_rows(results[0], single[0])
    _assert_same_rows(results[2], single[2])
    calls = [n for kind, n in _EachOnItsOwn.calls]
    assert calls[0] == 3 and calls[-1] == 2 and calls == sorted(calls, reverse=True)


def test_stacked_members_train_with_the_stacked_updates():
    """The real stack: every round is one update of all members, each member's agent has
    taken its single run's number of updates, and the runs differ from each other. Members
    in threads compute exactly what members as coroutines in this thread do."""
    runs = {}
    for threads in (False, True):
        population = Population(threads=threads)
        trainers = [population.add(lambda seed=seed: Trainer(_cfg(seed, overrides=STACKED)))
                    for seed in (0, 1)]
        runs[threads] = population.run(), [_parameters(t) for t in trainers]
    results = runs[True][0]  # of ``trainers``, the last ones built
    assert [_untimed(r) for r in results] == [_untimed(r) for r in runs[False][0]]
    for ours, theirs in zip(runs[True][1], runs[False][1], strict=True):
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs, strict=True))
    single = Trainer(_cfg(0))
    single_result = single.run()
    for trainer, result in zip(trainers, results, strict=True):
        assert trainer.agent.num_updates == single.agent.num_updates
        assert len(result.metrics) == len(single_result.metrics)
        assert result.metrics[-1].keys() == single_result.metrics[-1].keys()
        assert all(np.isfinite(v) for v in result.metrics[-1].values())
    assert _untimed(results[0]) != _untimed(results[1])
    mixed = Population()
    for overrides in (STACKED, ()):
        mixed.add(lambda overrides=overrides: Trainer(_cfg(0, overrides=overrides)))
    with pytest.raises(ValueError, match="stack_seeds true and false are not allowed together"):
        mixed.run()


def test_train_seeds_with_stacked_sac_updates_writes_their_run_directories(tmp_path,
                                                                           monkeypatch):
    """`--set stack_seeds=true`: the seeds' SAC blocks go through one stack per round, and each
    seed writes the files of a run, its config recording the setting; one seed alone is a
    population of one."""
    from tom.stacked_sac import StackedSAC

    members, original = [], StackedSAC.update_block
    monkeypatch.setattr(StackedSAC, "update_block",
                        lambda self, b, n: members.append(len(b)) or original(self, b, n))
    assert _cli(tmp_path / "{seed}", "--seeds", "0", "1", "--set", "stack_seeds=true") == 0
    assert members and set(members) == {2}
    assert _cli(tmp_path / "alone", "--seed", "3", "--set", "stack_seeds=true") == 0
    assert set(members) == {1, 2}
    for run in ("0", "1", "alone"):
        for name in RUN_FILES:
            assert (tmp_path / run / name).exists(), (run, name)
        config = json.loads((tmp_path / run / "config.json").read_text())["config"]
        assert config["stack_seeds"] is True


def test_stacked_members_whose_work_differs_still_equal_their_single_runs(monkeypatch):
    """VaGraM as the paper's code runs it mixes model data into a SAC minibatch by a coin per
    minibatch, so a block may mix shapes and then runs update by update, outside the stack:
    one member may wait at its SAC block while another is already at its next action. Every
    piece of waiting work is done (grouped by kind), and members still equal their single
    runs when the stand-ins do each part on its own."""
    epochs = ("schedule.epochs=3",)
    single = {seed: Trainer(_cfg(seed, "vagram", epochs)).run() for seed in (0, 1)}
    _EachOnItsOwn.install(monkeypatch)
    population = Population()
    for seed in (0, 1):
        population.add(lambda seed=seed: Trainer(_cfg(seed, "vagram", (*epochs, *STACKED))))
    for seed, result in zip((0, 1), population.run(), strict=True):
        _assert_same_rows(result, single[seed])
    sac_groups = [n for kind, n in _EachOnItsOwn.calls if kind == "sac"]
    assert 1 in sac_groups and 2 in sac_groups  # blocks of one member alone, and of both
