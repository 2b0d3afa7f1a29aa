"""SAC checked against exact answers: densities, Bellman targets, Polyak and Adam arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from tom.buffer import Transition
from tom.config import SACConfig
from tom.sac import SAC, draw_squashed, soft_q_target, tanh_normal_log_prob

OBS_DIM, ACT_DIM = 3, 2


def make_agent(seed: int = 0, **overrides) -> SAC:
    torch.manual_seed(seed)
    cfg = SACConfig(**{"hidden_size": 32, "hidden_layers": 2, **overrides})
    return SAC(OBS_DIM, ACT_DIM, cfg)


def make_batch(n: int = 16, done: float | None = None, seed: int = 1) -> Transition:
    g = torch.Generator().manual_seed(seed)
    done_t = (torch.rand(n, generator=g) < 0.5).float() if done is None else torch.full((n,), done)
    return Transition(obs=torch.randn(n, OBS_DIM, generator=g),
                      act=torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
                      reward=torch.randn(n, generator=g),
                      next_obs=torch.randn(n, OBS_DIM, generator=g),
                      done=done_t)


# -- acting ------------------------------------------------------------------------------------


def test_act_shapes_bounds_and_determinism():
    agent = make_agent()
    obs = torch.randn(64, OBS_DIM) * 10  # large inputs push actions towards the bounds
    assert agent.act(obs[0]).shape == (ACT_DIM,)
    assert agent.act(obs[0], deterministic=True).shape == (ACT_DIM,)
    actions = agent.act(obs)
    assert actions.shape == (64, ACT_DIM)
    assert actions.abs().max() <= 1.0
    assert not actions.requires_grad

    det = agent.act(obs, deterministic=True)
    assert torch.equal(det, agent.act(obs, deterministic=True))
    assert torch.allclose(det, agent.actor(obs)[0].tanh())
    assert not torch.equal(actions, agent.act(obs))  # stochastic actions are resampled


def test_an_action_alone_is_the_sampled_action_bit_for_bit():
    """`sample_action` (acting, rollouts) skips the log-density, nothing else: from the same
    seed it gives `sample`'s action exactly and leaves the generator where `sample` does, so a
    run draws the same stream either way; `act` is that action, and so is an action drawn
    from the policy's Gaussian computed ahead (`draw_squashed`, TOM's dual)."""
    agent = make_agent()
    obs = torch.randn(32, OBS_DIM)
    torch.manual_seed(3)
    want, _ = agent.sample(obs)
    after = torch.get_rng_state()
    for draw in (agent.sample_action, agent.act, lambda o: draw_squashed(agent.gaussian(o))):
        torch.manual_seed(3)
        assert torch.equal(draw(obs), want)
        assert torch.equal(torch.get_rng_state(), after)


def test_xavier_init_draws_glorot_uniform_weights_and_zero_biases():
    """sac.init=xavier (default): every layer of actor, critics and target critics is U(+-b) with
    b = sqrt(6 / (fan_in + fan_out)) and has zero bias (the paper's code's initialisation)."""
    agent = make_agent(hidden_size=256)  # the default
    layers = [(agent.actor.net[i].weight.T, agent.actor.net[i].bias) for i in (0, 2, 4)]
    for net in (agent.critic, agent.critic_target):
        layers += [(net.net[i].weight[k], net.net[i].bias[k]) for i in (0, 2, 4) for k in (0, 1)]
    for weight, bias in layers:  # weight as [fan_in, fan_out]
        fan_in, fan_out = weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert torch.all(bias == 0)
        assert weight.abs().max() <= bound
        # The standard deviation of U(-b, b) is b / sqrt(3); with n >= 256 draws per layer the
        # sample value's relative standard error is sqrt(0.2 / n) < 3 %, so 15 % is 5 sigma.
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)
    assert torch.equal(agent.critic.net[0].weight, agent.critic_target.net[0].weight)


def test_torch_init_keeps_pytorch_default():
    agent = make_agent(hidden_size=256, init="torch")
    hidden = agent.actor.net[2]
    bound = 1.0 / math.sqrt(256)  # PyTorch's nn.Linear default, U(+-1/sqrt(fan_in))
    assert hidden.weight.abs().max() <= bound and hidden.bias.abs().max() > 0
    assert hidden.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_log_std_is_clamped():
    agent = make_agent()
    with torch.no_grad():
        agent.actor.net[-1].bias[ACT_DIM:] = 100.0  # raw log_std far above the bound
    assert torch.all(agent.actor(torch.zeros(1, OBS_DIM))[1] == 2.0)


def test_sample_log_prob_matches_torch_distribution():
    agent = make_agent()
    obs = torch.randn(256, OBS_DIM)
    act, logp = agent.sample(obs)
    assert act.shape == (256, ACT_DIM) and logp.shape == (256,)
    assert act.requires_grad and logp.requires_grad  # reparameterised: gradients reach the actor

    mean, log_std = (t.detach().double() for t in agent.actor(obs))
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    a = act.detach().double()
    keep = a.abs().max(-1).values < 0.999  # atanh of a rounded float32 action is ill-posed at ±1
    expected = dist.log_prob(a).sum(-1)
    assert keep.sum() > 200
    assert torch.allclose(logp.detach().double()[keep], expected[keep], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("mean, std", [(0.3, 0.8), (-0.7, 0.5), (0.0, 0.05)])
def test_squashed_density_integrates_to_one(mean: float, std: float):
    a = torch.linspace(-1, 1, 400_001, dtype=torch.float64)[1:-1]
    u = torch.atanh(a).unsqueeze(-1)
    density = tanh_normal_log_prob(u, torch.tensor([mean], dtype=torch.float64),
                                   torch.tensor([math.log(std)], dtype=torch.float64)).exp()
    assert torch.trapezoid(density, a).item() == pytest.approx(1.0, abs=1e-4)


def test_log_prob_stays_finite_where_tanh_saturates():
    u = torch.tensor([[-30.0], [30.0]])
    logp = tanh_normal_log_prob(u, torch.zeros(2, 1), torch.zeros(2, 1))
    # log N(±30; 0, 1) - log(1 - tanh^2(30)) with log(1 - tanh^2 u) = log 4 - 2|u| + O(e^-2|u|).
    expected = -0.5 * 30.0**2 - 0.5 * math.log(2 * math.pi) - (math.log(4) - 60.0)
    assert torch.allclose(logp, torch.full((2,), expected))


def test_q_and_value_definitions():
    agent = make_agent()
    obs, act = torch.randn(8, OBS_DIM), torch.rand(8, ACT_DIM) * 2 - 1
    both = agent.critic(obs, act)
    assert both.shape == (2, 8) and not torch.allclose(both[0], both[1])  # independent critics
    assert torch.equal(agent.q(obs, act), torch.minimum(both[0], both[1]))
    det = agent.actor(obs)[0].tanh()
    assert torch.allclose(agent.value(obs), agent.critic(obs, det).min(0).values)
    assert agent.value(obs[0]).shape == ()


def test_value_gradient_wrt_obs_is_exact():
    agent = make_agent()
    agent.actor.double()
    agent.critic.double()
    obs = torch.randn(4, OBS_DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(agent.value, (obs,))


# -- one update --------------------------------------------------------------------------------


def test_soft_q_target_by_hand():
    target = soft_q_target(reward=torch.tensor([1.0, 2.0]), done=torch.tensor([1.0, 0.0]),
                           next_q=torch.tensor([10.0, 5.0]), next_logp=torch.tensor([-1.0, 3.0]),
                           alpha=0.5, gamma=0.9)
    assert torch.allclose(target, torch.tensor([1.0, 2.0 + 0.9 * (5.0 - 0.5 * 3.0)]))


def test_terminal_critic_loss_regresses_on_reward():
    agent = make_agent()
    batch = make_batch(done=1.0)
    with torch.no_grad():
        q1, q2 = agent.critic(batch.obs, batch.act)
        expected = ((q1 - batch.reward) ** 2).mean() + ((q2 - batch.reward) ** 2).mean()
    assert agent.update(batch)["q_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_critic_loss_bootstraps_from_target_critics():
    agent = make_agent(gamma=0.9, init_alpha=0.3)
    with torch.no_grad():  # make the target critics differ from the online ones
        agent.critic_target.net[-1].bias.add_(torch.tensor([1.0, -2.0]).view(2, 1, 1))
    batch = make_batch()
    assert 0 < batch.done.sum() < batch.size
    torch.manual_seed(7)
    with torch.no_grad():
        next_act, next_logp = agent.sample(batch.next_obs)
        t1, t2 = agent.critic_target(batch.next_obs, next_act)
        soft_v = torch.minimum(t1, t2) - 0.3 * next_logp
        y = batch.reward + 0.9 * (1 - batch.done) * soft_v
        q1, q2 = agent.critic(batch.obs, batch.act)
        expected = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    torch.manual_seed(7)  # update draws a' ~ pi(s') first, with the same noise
    assert agent.update(batch)["q_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_polyak_update():
    agent = make_agent(tau=0.1)
    old_target = [p.clone() for p in agent.critic_target.parameters()]
    for p, q in zip(old_target, agent.critic.parameters(), strict=True):
        assert torch.equal(p, q)  # targets start as copies
    agent.update(make_batch())
    for old, new_target, online in zip(old_target, agent.critic_target.parameters(),
                                       agent.critic.parameters(), strict=True):
        assert not torch.equal(online, old)
        assert torch.allclose(new_target, 0.9 * old + 0.1 * online, atol=1e-7)
    assert agent.num_updates == 1


@pytest.mark.parametrize("target_entropy, direction", [(-50.0, -1), (50.0, 1)])
def test_temperature_moves_towards_target_entropy(target_entropy: float, direction: int):
    # Adam's first step moves a parameter by lr * sign(gradient); here the gradient is
    # entropy - target, so log alpha must move by exactly -lr (entropy above) or +lr (below).
    agent = make_agent(init_alpha=0.2, lr=1e-3, target_entropy=target_entropy)
    stats = agent.update(make_batch())
    assert stats["alpha"] == pytest.approx(0.2 * math.exp(direction * 1e-3), rel=1e-5)
    assert agent.alpha.item() == pytest.approx(stats["alpha"])


def test_fixed_temperature_and_stats():
    agent = make_agent(init_alpha=0.2, auto_entropy=False)
    stats = agent.update(make_batch())
    assert set(stats) == {"q_loss", "actor_loss", "alpha", "entropy"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert stats["alpha"] == pytest.approx(0.2)


# -- learning and checkpoints ------------------------------------------------------------------


def test_learns_continuous_bandit():
    """One-step task with reward -(a - 0.5)^2: the greedy action must approach 0.5."""
    agent = make_agent(seed=0, lr=3e-3)
    obs = torch.zeros(64, OBS_DIM)
    for _ in range(800):
        act = agent.act(obs)
        reward = -((act - 0.5) ** 2).sum(-1)
        agent.update(Transition(obs, act, reward, obs, torch.ones(64)))
    greedy = agent.act(obs[0], deterministic=True)
    assert torch.all((greedy - 0.5).abs() < 0.1), greedy


def test_state_dict_round_trip_resumes_exactly():
    agent = make_agent(seed=0)
    for i in range(4):
        agent.update(make_batch(seed=i))
    obs, act = torch.randn(8, OBS_DIM), torch.rand(8, ACT_DIM) * 2 - 1
    saved_act, saved_q = agent.act(obs, deterministic=True), agent.q(obs, act).detach()
    saved_alpha = agent.alpha
    state = agent.state_dict()
    agent.update(make_batch(seed=99))  # the snapshot must not follow later updates

    clone = make_agent(seed=123)
    clone.load_state_dict(state)
    agent.load_state_dict(state)
    for restored in (agent, clone):
        assert restored.num_updates == 4
        assert torch.equal(restored.act(obs, deterministic=True), saved_act)
        assert torch.equal(restored.q(obs, act), saved_q)
        assert torch.equal(restored.alpha, saved_alpha)

    # Optimiser moments and targets came along too: the next update is identical.
    batch = make_batch(seed=5)
    torch.manual_seed(11)
    stats_a = agent.update(batch)
    torch.manual_seed(11)
    stats_b = clone.update(batch)
    assert stats_a == stats_b
    for p, q in zip(agent.critic_target.parameters(), clone.critic_target.parameters(),
                    strict=True):
        assert torch.equal(p, q)
    assert torch.equal(clone.q(obs, act), agent.q(obs, act))


def test_a_block_of_updates_is_those_updates_one_after_another():
    """`update_block` (one graph on a GPU) against `update` per minibatch, from the same
    state and noise: the same weights, targets, temperature and Adam moments, bit for bit,
    and the last update's statistics. A block that skipped, repeated or reordered a minibatch
    would differ."""
    batches = [make_batch(seed=s) for s in range(5)]
    block = Transition(*(torch.stack(column) for column in zip(*batches, strict=True)))
    one_by_one, at_once = make_agent(seed=0), make_agent(seed=0)
    torch.manual_seed(7)
    for batch in batches:
        last = one_by_one.update(batch)
    torch.manual_seed(7)
    stats = at_once.update_block(block)
    assert dict(stats) == dict(last) and at_once.num_updates == one_by_one.num_updates == 5
    a, b = one_by_one.state_dict(), at_once.state_dict()
    for part in ("actor", "critic", "critic_target"):
        for name, tensor in a[part].items():
            assert torch.equal(b[part][name], tensor), (part, name)
    assert torch.equal(a["log_alpha"], b["log_alpha"])
    for opt in ("actor_opt", "critic_opt", "alpha_opt"):
        for i, moments in a[opt]["state"].items():
            for key, value in moments.items():
                assert torch.equal(b[opt]["state"][i][key], value), (opt, i, key)


def test_in_place_relus_change_no_bit_of_an_update():
    """The actor's and critics' ReLUs overwrite their layer's output (`tom.sac.mlp`): the same
    updates as with out-of-place ReLUs, bit for bit (weights, targets and Adam moments)."""
    in_place, out_of_place = make_agent(seed=0), make_agent(seed=0)
    relus = [m for net in (out_of_place.actor, out_of_place.critic) for m in net.modules()
             if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 4 and all(relu.inplace for relu in relus)
    for relu in relus:
        relu.inplace = False
    for agent in (in_place, out_of_place):
        torch.manual_seed(3)
        for seed in range(3):
            agent.update(make_batch(seed=seed))
    a, b = in_place.state_dict(), out_of_place.state_dict()
    for part in ("actor", "critic", "critic_target", "critic_opt", "actor_opt"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert len(flat_a) == len(flat_b) > 0
        assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True)), part


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, list | tuple):
        return [t for item in tree for t in _tensors(item)]
    return []
