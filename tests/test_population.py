"""`tom.population`: seeds trained in one process, in turns, give each seed's single run
exactly (on a CPU), and a member that stops leaves the others running."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tom.config import resolve
from tom.interrupt import Interrupted
from tom.mbpo import NumericalFault, Trainer, TrainResult
from tom.population import Population

TIMING = ("time_", "wall_time", "sps")


def _cfg(seed: int, objective: str = "tom"):
    return resolve("inverted_pendulum", objective, seed=seed, preset="smoke")


def _untimed(result: TrainResult) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in result.metrics]


def _parameters(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in (*trainer.agent.actor.parameters(),
                                         *trainer.agent.critic.parameters(),
                                         *trainer.model.parameters())]


@pytest.mark.parametrize("objective", ["tom", "mle"])
def test_members_equal_their_single_runs_bit_for_bit(objective):
    """Seeds 0, 1 and 2 in turns against each alone: the same metrics, weight rows and final
    networks, exactly. Without the swap of the global random state, member 1 would draw
    after member 0 and differ at its first SAC update."""
    singles = {}
    for seed in (0, 1, 2):
        trainer = Trainer(_cfg(seed, objective))
        singles[seed] = (trainer.run(), _parameters(trainer))
    torch.manual_seed(123)
    np.random.seed(123)
    caller = (torch.get_rng_state(), np.random.get_state()[1].copy())
    population = Population()
    trainers = []
    for seed in (0, 1, 2):
        trainers.append(Trainer(_cfg(seed, objective)))
        population.add(trainers[-1])
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


def test_a_member_that_fails_leaves_the_others_running(monkeypatch):
    """A numerical fault in member 1's first refit: it ends with the fault, members 0 and 2
    run to the end and still equal their single runs."""
    single = {seed: Trainer(_cfg(seed)).run() for seed in (0, 2)}
    population = Population()
    trainers = []
    for seed in (0, 1, 2):
        trainers.append(Trainer(_cfg(seed)))
        population.add(trainers[-1])

    def fault():
        raise NumericalFault("model", trainers[1].env_steps, "model training loss")

    monkeypatch.setattr(trainers[1], "_refit", fault)
    results = population.run()
    assert isinstance(results[1], NumericalFault)
    assert "model training loss is not finite, in phase 'model'" in str(results[1])
    assert _untimed(results[0]) == _untimed(single[0])
    assert _untimed(results[2]) == _untimed(single[2])


class _StopAfter:
    """A `StopRequest` stand-in whose signal arrives after ``steps`` polls."""

    def __init__(self, steps: int) -> None:
        self.polls, self.steps = 0, steps

    @property
    def signal(self):
        self.polls += 1
        return 15 if self.polls > self.steps else None


def test_a_signal_checkpoints_every_member_and_they_resume_exactly():
    """SIGTERM during the run: each member checkpoints at its next real step and ends with
    `Interrupted`; members rebuilt from those checkpoints finish as the single runs do."""
    single = {seed: Trainer(_cfg(seed)).run() for seed in (0, 1)}
    stop = _StopAfter(500)  # polled by both members: some 250 real steps each
    saved: dict[int, dict] = {}
    population = Population()
    for seed in (0, 1):
        population.add(Trainer(_cfg(seed)), stop=stop,
                       checkpoint=lambda state, seed=seed: saved.__setitem__(seed, state))
    results = population.run()
    assert all(isinstance(r, Interrupted) and r.exit_status == 143 for r in results)
    assert sorted(saved) == [0, 1]
    assert 0 < saved[0]["env_steps"] < 400

    resumed = Population()
    for seed in (0, 1):
        trainer = Trainer(_cfg(seed))
        trainer.load_state_dict(saved[seed])
        resumed.add(trainer)
    for seed, result in zip((0, 1), resumed.run(), strict=True):
        assert _untimed(result) == _untimed(single[seed])
