"""Stacked SAC updates (`tom.stacked_sac`) against each member's own `SAC.update_block`.

The reference is the single agent's update, run from the same state with the same
minibatches and the same random state; the stack must land within rounding of it (batched
matmuls and the written-out Adam round differently), for every parameter, Adam moment, step
count, target critic and temperature, and each member independently of the others.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tom.buffer import Transition
from tom.config import SACConfig
from tom.sac import SAC
from tom.stacked_sac import StackedPolicy, StackedSAC, draw_action_noise, draw_noise
from tom.stacking import actor_action, actor_sample

OBS_DIM, ACT_DIM, ROWS, UPDATES = 5, 3, 32, 4
TOL = dict(rtol=1e-4, atol=2e-6)


def make_agent(seed: int, warm_updates: int = 0, **overrides) -> SAC:
    """An agent of seed ``seed`` after ``warm_updates`` updates of its own (so that members
    differ in weights, moments and step counts)."""
    torch.manual_seed(seed)
    agent = SAC(OBS_DIM, ACT_DIM, SACConfig(hidden_size=32, hidden_layers=2, **overrides))
    for k in range(warm_updates):
        agent.update(make_block(seed * 100 + k, updates=1).index(0))
    return agent


def make_block(seed: int, updates: int = UPDATES) -> Transition:
    g = torch.Generator().manual_seed(seed)
    return Transition(obs=torch.randn(updates, ROWS, OBS_DIM, generator=g),
                      act=torch.rand(updates, ROWS, ACT_DIM, generator=g) * 2 - 1,
                      reward=torch.randn(updates, ROWS, generator=g),
                      next_obs=torch.randn(updates, ROWS, OBS_DIM, generator=g),
                      done=(torch.rand(updates, ROWS, generator=g) < 0.3).float())


def flat_state(agent: SAC) -> dict[str, torch.Tensor]:
    """Every tensor of the agent's state (weights, targets, Adam moments and step counts)."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, list):
            for key, item in enumerate(value):
                walk(f"{prefix}.{key}", item)

    walk("sac", agent.state_dict())
    return out


def single_and_stacked(agents: list[SAC], blocks: list[Transition], rng_seeds: list[int]):
    """Each agent's own block (its random state seeded with its rng seed), and copies of the
    agents updated as one stack from the same random states; both lists of agents and
    statistics."""
    stacked_agents = [copy.deepcopy(a) for a in agents]
    singles = []
    for agent, block, seed in zip(agents, blocks, rng_seeds, strict=True):
        torch.manual_seed(seed)
        singles.append(torch.tensor(list(agent.update_block(block).values())))
    noise = []
    for block, seed in zip(blocks, rng_seeds, strict=True):
        torch.manual_seed(seed)
        noise.append(draw_noise(block))
    stats = StackedSAC(stacked_agents).update_block(blocks, noise)
    return agents, torch.stack(singles), stacked_agents, stats


@pytest.mark.parametrize("warm", [[0, 0, 0], [0, 3, 7]])
def test_a_stacked_block_is_each_members_own_block(warm):
    agents = [make_agent(seed, w) for seed, w in zip([0, 1, 2], warm, strict=True)]
    blocks = [make_block(10 + i) for i in range(3)]
    singles, single_stats, stacked, stats = single_and_stacked(agents, blocks, [5, 6, 7])
    assert stats.shape == (3, 4)
    torch.testing.assert_close(stats, single_stats, **TOL)
    for single, member in zip(singles, stacked, strict=True):
        assert member.num_updates == single.num_updates
        expected, got = flat_state(single), flat_state(member)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], **TOL, msg=key)


def test_a_member_alone_in_a_stack_and_without_temperature_tuning():
    agents = [make_agent(3, 2, auto_entropy=False, init_alpha=0.3)]
    singles, single_stats, stacked, stats = single_and_stacked(agents, [make_block(4)], [9])
    torch.testing.assert_close(stats, single_stats, **TOL)
    for key, value in flat_state(singles[0]).items():
        torch.testing.assert_close(flat_state(stacked[0])[key], value, **TOL, msg=key)
    assert stacked[0].alpha.item() == pytest.approx(0.3)


def test_the_noise_is_what_the_single_update_draws():
    """After the stacked block each member's random state is where its single block leaves
    it: it drew the same numbers of the same sizes."""
    block = make_block(1)
    agent = make_agent(0)
    torch.manual_seed(2)
    agent.update_block(block)
    after_single = torch.get_rng_state()
    torch.manual_seed(2)
    draw_noise(block)
    assert torch.equal(torch.get_rng_state(), after_single)


def test_members_written_back_resume_as_single_agents():
    """A member's state after stacked blocks is a single agent's state: it loads into a fresh
    agent, which then updates as the member does."""
    agents = [make_agent(0), make_agent(1)]
    stack = StackedSAC(agents)
    for k in range(2):
        blocks = [make_block(20 + k), make_block(30 + k)]
        stack.update_block(blocks, [draw_noise(b) for b in blocks])
    fresh = make_agent(7)
    fresh.load_state_dict(agents[1].state_dict())
    block = make_block(40)
    torch.manual_seed(11)
    agents[1].update_block(block)
    torch.manual_seed(11)
    fresh.update_block(block)
    for key, value in flat_state(agents[1]).items():
        assert torch.equal(flat_state(fresh)[key], value), key


def test_bad_blocks_are_refused():
    agents = [make_agent(0), make_agent(1)]
    stack = StackedSAC(agents)
    blocks = [make_block(1), make_block(2, updates=2)]
    with pytest.raises(ValueError, match="one block of one shape per member"):
        stack.update_block(blocks, [draw_noise(b) for b in blocks])
    with pytest.raises(ValueError, match="one SAC config"):
        StackedSAC([make_agent(0), make_agent(1, gamma=0.9)])


def test_stacked_policy_acts_as_each_members_own_policy():
    """One batched forward for every member's action of a real step: each member's action is
    its own `SAC.act` (not deterministic) from the same random state, to rounding, and the
    noise drawn is what `act` draws."""
    agents = [make_agent(seed, warm) for seed, warm in ((0, 0), (1, 2), (2, 5))]
    obs = [torch.randn(OBS_DIM) * (i + 1) for i in range(3)]
    own, noise = [], []
    for i, (agent, o) in enumerate(zip(agents, obs, strict=True)):
        torch.manual_seed(40 + i)
        own.append(agent.act(o))
        after = torch.get_rng_state()
        torch.manual_seed(40 + i)
        noise.append(draw_action_noise(agent))
        assert torch.equal(torch.get_rng_state(), after)
    actions = StackedPolicy(agents).act(obs, noise)
    assert actions.shape == (3, ACT_DIM) and actions.device.type == "cpu"
    torch.testing.assert_close(actions, torch.stack(own), **TOL)
    assert not torch.allclose(actions[0], actions[1])


def test_an_action_alone_is_the_sampled_action_bit_for_bit():
    """`actor_action` (stacked acting) is `actor_sample`'s action exactly, also where the
    log-standard deviations are clamped (large inputs)."""
    torch.manual_seed(0)
    layers = [(torch.randn(2, 5, 16), torch.randn(2, 1, 16)),
              (torch.randn(2, 16, 2 * ACT_DIM), torch.randn(2, 1, 2 * ACT_DIM))]
    obs, noise = torch.randn(2, 8, 5) * 10, torch.randn(2, 8, ACT_DIM)
    assert torch.equal(actor_action(layers, obs, noise), actor_sample(layers, obs, noise)[0])
