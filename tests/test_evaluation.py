"""Evaluation episodes side by side (`tom.evaluation`) against one environment playing them
one after another, as the loop used to.

The reference is that sequential evaluation: one environment seeded with the evaluation
seed, reset at the start of each episode. Side by side, the episodes must start from the
same initial states, leave the random stream where the reference leaves it, and, with a
policy whose action for an observation does not depend on the batch it comes in, give the
same returns and lengths exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tom import turns
from tom.envs import TASKS, get_task, make_env
from tom.evaluation import Evaluation

CPU = torch.device("cpu")


def rowwise_policy(obs: torch.Tensor) -> torch.Tensor:
    """Elementwise in each row, so a row's action is the same in any batch; it makes
    hopper fall after varying numbers of steps."""
    act_dim = {get_task(name).obs_dim: get_task(name).act_dim
               for name in ("hopper", "inverted_pendulum")}[obs.shape[-1]]
    return torch.tanh(4.0 * obs[..., :act_dim])


def sequential(task: str, seed: int, episodes: int, max_steps: int
               ) -> tuple[list[float], list[int], list[np.ndarray], list[dict]]:
    """One environment, episode after episode: returns, lengths, first observations and
    the random stream's state after each episode."""
    env = make_env(task, seed=seed, max_episode_steps=max_steps)
    returns, lengths, starts, streams = [], [], [], []
    for _ in range(episodes):
        obs, _ = env.reset()
        starts.append(obs)
        total, steps, done = 0.0, 0, False
        while not done:
            act = rowwise_policy(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
            obs, reward, terminated, truncated, _ = env.step(act.numpy())
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
        streams.append(env.unwrapped.np_random.bit_generator.state)
    return returns, lengths, starts, streams


@pytest.mark.parametrize("task", ["hopper", "inverted_pendulum"])
def test_episodes_side_by_side_are_the_episodes_one_after_another(task):
    """Same starts, returns and lengths (episodes ending by termination and by the step
    limit, at different steps), and the stream left where the reference leaves it, also in
    a second evaluation (the next epoch's); the policy sees every episode's row at every
    step, a fixed [episodes, obs_dim] batch."""
    episodes, max_steps = 4, 60
    returns, lengths, starts, streams = sequential(task, 3, 2 * episodes, max_steps)
    evaluation = Evaluation(task, 3, episodes, max_steps)
    batches = []

    def policy(obs: torch.Tensor) -> torch.Tensor:
        batches.append(obs.clone())
        return rowwise_policy(obs)

    for first in (0, episodes):
        these = slice(first, first + episodes)
        got_returns, got_lengths = evaluation.run(policy, CPU)
        assert got_returns == returns[these] and got_lengths == lengths[these]
        assert torch.equal(batches[0],
                           torch.as_tensor(np.stack(starts[these]), dtype=torch.float32))
        assert len(batches) == max(lengths[these])
        assert all(b.shape == (episodes, starts[0].shape[0]) for b in batches)
        assert evaluation.rng.bit_generator.state == streams[first + episodes - 1]
        batches.clear()
        if task == "hopper":  # each evaluation has episodes of both ends
            assert min(lengths[these]) < max_steps == max(lengths[these])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_tasks_steps_draw_nothing_from_the_evaluation_stream(task):
    """What lets the episodes run side by side: stepping an environment leaves its random
    stream alone, so the k-th reset draws the k-th initial state in either order."""
    env = make_env(task, seed=5)
    before = env.unwrapped.np_random.bit_generator.state
    actions = np.random.default_rng(0)
    for _ in range(20):
        _, _, terminated, truncated, _ = env.step(actions.uniform(-1, 1, env.action_space.shape))
        if terminated or truncated:
            break
    assert env.unwrapped.np_random.bit_generator.state == before


def test_evaluation_needs_an_episode():
    with pytest.raises(ValueError, match="at least 1, got 0"):
        Evaluation("hopper", 0, 0, 100)


class _Recorder:
    """A population's `tom.turns.Turns` that notes each turn passed among the policy calls."""

    passes = True

    def __init__(self, log: list) -> None:
        self.log = log

    def pass_turn(self) -> None:
        self.log.append("pass")


def test_in_a_population_an_evaluation_passes_the_turn_every_ten_steps():
    """As the other long loops of a run (`tom.turns`): after every tenth step of the
    episodes side by side, one policy call for all of them per step."""
    log: list = []
    turns.register(_Recorder(log))
    try:
        _, lengths = Evaluation("hopper", 3, 4, 60).run(
            lambda obs: log.append("call") or rowwise_policy(obs), CPU)
    finally:
        turns.register(None)
    steps = max(lengths)
    want = []
    for step in range(1, steps + 1):
        want += ["call", "pass"] if step % 10 == 0 else ["call"]
    assert log == want
