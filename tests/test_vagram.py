"""VaGraM in both versions: as the TOM paper's code computes it (signed, accumulated critic
gradients weighting the MDN's per-dimension NLL, its SAC data mix) and the VaGraM paper's loss
(value gradients of known value functions, the loss in closed form, bound clipping, the
mean-only model fit it switches on); and the end-to-end runs."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from tom.buffer import ReplayBuffer, Transition
from tom.cli import main
from tom.config import ModelConfig, resolve
from tom.dynamics import make_model
from tom.objectives import RefitContext, make_objective
from tom.objectives.vagram import (
    VaGraMObjective,
    clip_gradient_norms,
    critic_value_gradients,
    model_batch_probability,
    paper_code_gradient,
    paper_code_nll_weights,
    vagram_dim_weights,
    vagram_error,
    value_gradients,
)

OBS, ACT = 3, 2
C = torch.tensor([2.0, -0.5, 0.0])
A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]])  # symmetric



def linear_value(s: torch.Tensor) -> torch.Tensor:
    return s @ C


def quadratic_value(s: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((s @ A) * s).sum(-1)


def data(n: int, seed: int = 0) -> Transition:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, OBS, generator=g)
    a = torch.rand(n, ACT, generator=g) * 2 - 1
    s2 = 0.9 * s + 0.3 * a.sum(-1, keepdim=True) + 0.05 * torch.randn(n, OBS, generator=g)
    s2[:, 2] *= 20.0  # very different target scales, so the normalisation matters
    return Transition(s, a, s.sum(-1) - a.pow(2).sum(-1), s2, torch.zeros(n))


def small_model(kind: str, seed: int = 0, **changes):
    torch.manual_seed(seed)
    cfg = ModelConfig(kind=kind, hidden_layers=2, hidden_size=32, mdn_components=3,
                      ensemble_size=3, elites=2, batch_size=64, max_epochs=3,
                      steps_per_epoch=20, patience=3)
    cfg = dataclasses.replace(cfg, **changes)
    return make_model(cfg, OBS, ACT, lambda o, a, o2: torch.zeros(len(o), dtype=torch.bool))


# -- value gradients and the loss in closed form -------------------------------------------------


def test_value_gradients_of_known_functions():
    s = torch.randn(20, OBS)
    assert torch.allclose(value_gradients(linear_value, s, chunk=7), C.expand(20, OBS))
    assert torch.allclose(value_gradients(quadratic_value, s, chunk=7), s @ A, atol=1e-6)


def test_loss_equals_closed_form():
    s2, pred = torch.randn(10, OBS), torch.randn(10, OBS)
    e = pred - s2
    g_lin = value_gradients(linear_value, s2)
    assert torch.allclose(vagram_error(pred, s2, g_lin), (e ** 2) @ (C ** 2))
    g_quad = value_gradients(quadratic_value, s2)
    expected = torch.stack([sum(((A @ s2[i])[j] * e[i, j]) ** 2 for j in range(OBS))
                            for i in range(10)])
    assert torch.allclose(vagram_error(pred, s2, g_quad), expected, rtol=1e-5)
    # For linear V and an error along one axis the diagonal bound is the value error itself.
    one_axis = s2.clone()
    one_axis[:, 0] += e[:, 0]
    assert torch.allclose(vagram_error(one_axis, s2, g_lin),
                          (linear_value(one_axis) - linear_value(s2)) ** 2, rtol=1e-5)


def test_constant_gradients_reduce_to_scaled_squared_error():
    s2, pred = torch.randn(10, OBS), torch.randn(10, OBS)
    g = torch.full((10, OBS), 3.0)
    assert torch.allclose(vagram_error(pred, s2, g), 9.0 * ((pred - s2) ** 2).sum(-1))


# -- bound clipping -------------------------------------------------------------------------------


def test_bound_clipping_caps_norms_at_the_quantile_and_keeps_directions():
    directions = torch.nn.functional.normalize(torch.randn(10, OBS), dim=-1)
    norms = torch.arange(1.0, 11.0)
    grads = directions * norms[:, None]
    clipped, bound = clip_gradient_norms(grads, 0.5)
    assert bound == pytest.approx(5.5)  # linear interpolation, as numpy's default quantile
    out = clipped.norm(dim=-1)
    assert torch.allclose(out[:5], norms[:5]) and torch.allclose(out[5:], torch.full((5,), 5.5))
    assert torch.allclose(torch.nn.functional.normalize(clipped, dim=-1), directions, atol=1e-6)
    unclipped, top = clip_gradient_norms(grads, 1.0)
    assert top == pytest.approx(10.0) and torch.equal(unclipped, grads)
    default = resolve("hopper", "vagram", preset="paper").vagram.clip_quantile
    assert default == 0.95
    zeros, zero_bound = clip_gradient_norms(torch.zeros(4, OBS), 0.95)
    assert zero_bound == 0.0 and torch.equal(zeros, torch.zeros(4, OBS))


# -- the objective ---------------------------------------------------------------------------------


def _objective(quantile: float = 1.0, loss: str = "vagram-paper") -> VaGraMObjective:
    cfg = resolve("inverted_pendulum", "vagram", preset="smoke",
                  overrides={"vagram.clip_quantile": quantile, "vagram.loss": loss})
    obj = make_objective(cfg, OBS, ACT)
    assert isinstance(obj, VaGraMObjective)
    return obj


def _buffer(batch: Transition, capacity: int | None = None) -> ReplayBuffer:
    buf = ReplayBuffer(capacity or batch.size, OBS, ACT)
    buf.add_batch(batch)
    return buf


@pytest.mark.parametrize("value,grad", [(linear_value, lambda s: C.expand_as(s)),
                                        (quadratic_value, lambda s: s @ A)])
def test_objective_weights_are_squared_value_gradients_at_next_state(value, grad):
    batch = data(30)
    buf = _buffer(batch)
    obj = _objective(1.0)
    obj.update(RefitContext(buf, SimpleNamespace(value=value), 30, 30))
    w = obj.fit_dim_weights()
    assert w.shape == (30, 1 + OBS)
    assert torch.equal(w[:, 0], torch.ones(30))  # reward: plain squared error
    assert torch.allclose(w[:, 1:], grad(batch.next_obs) ** 2, rtol=1e-5, atol=1e-6)
    assert obj.fit_weights() is None and obj.start_weights() is None  # uniform data
    clipped = _objective(0.9)
    clipped.update(RefitContext(buf, SimpleNamespace(value=quadratic_value), 30, 30))
    norms = clipped.fit_dim_weights()[:, 1:].sum(-1).sqrt()
    assert norms.max().item() == pytest.approx(clipped.stats()["vagram_clip_bound"], rel=1e-5)


def test_objective_with_the_sac_value():
    from tom.sac import SAC

    cfg = resolve("inverted_pendulum", "vagram", preset="smoke",
                  overrides={"vagram.loss": "vagram-paper"})
    agent = SAC(OBS, ACT, cfg.sac)
    buf = _buffer(data(50))
    obj = make_objective(cfg, OBS, ACT)
    obj.update(RefitContext(buf, agent, 50, 50))
    w = obj.fit_dim_weights()
    assert w.shape == (50, 1 + OBS) and torch.isfinite(w).all() and (w[:, 1:] > 0).any()
    assert all(p.grad is None for p in agent.critic.parameters())  # nothing accumulated


# -- the mean-only model fit -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mdn", "ensemble"])
def test_model_mean_loss_is_the_raw_unit_closed_form(kind):
    batch = data(200)
    model = small_model(kind)
    model.fit(batch)  # sets a non-trivial normaliser (out_std far from 1)
    assert model.out_std.max() / model.out_std.min() > 10
    g = value_gradients(quadratic_value, batch.next_obs)
    w = vagram_dim_weights(g)
    reward, next_obs = model.predict_mean(batch.obs, batch.act)
    expected = vagram_error(next_obs, batch.next_obs, g) + (reward - batch.reward) ** 2
    assert torch.allclose(model.mean_loss(batch, w), expected.detach(), rtol=1e-4, atol=1e-5)
    # Constant gradients: a scaled squared error of the predicted next state, plus the reward's.
    const = vagram_dim_weights(torch.full((200, OBS), 3.0))
    se = ((next_obs - batch.next_obs) ** 2).sum(-1) * 9.0 + (reward - batch.reward) ** 2
    assert torch.allclose(model.mean_loss(batch, const), se.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["mdn", "ensemble"])
def test_mean_only_fit(kind):
    batch = data(300)
    w = vagram_dim_weights(value_gradients(quadratic_value, batch.next_obs))
    model = small_model(kind, seed=1)
    torch.manual_seed(5)
    fit = model.fit(batch, dim_weights=w)
    assert model.mean_only and math.isfinite(fit.holdout_loss)
    assert fit.holdout_loss < fit.initial_holdout_loss
    assert torch.isnan(model.nll(batch)).all()
    # Rollouts are the mean: MDN deterministic; ensemble one elite's mean per row.
    out = model.step(batch.obs[:20], batch.act[:20])
    x = (torch.cat([batch.obs[:20], batch.act[:20]], -1) - model.in_mean) / model.in_std
    if kind == "mdn":
        assert torch.equal(out.next_obs, model.step(batch.obs[:20], batch.act[:20]).next_obs)
        members = model._mean(x)[None]
    else:
        members = model.gaussian(x, model.elite_idx)[0]
    y = torch.cat([out.reward[:, None], out.next_obs - batch.obs[:20]], -1)
    y = (y - model.out_mean) / model.out_std
    assert ((members - y).abs().amax(-1) < 1e-4).any(0).all()
    # Only the relative weights matter: 10x the weights, same fit.
    again = small_model(kind, seed=1)
    torch.manual_seed(5)
    fit10 = again.fit(batch, dim_weights=10.0 * w)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)
    assert fit10.holdout_loss == pytest.approx(fit.holdout_loss, rel=1e-4)
    # A likelihood fit afterwards is a probabilistic model again.
    model.fit(batch)
    assert not model.mean_only and torch.isfinite(model.nll(batch)).all()


def test_mean_only_fit_weights_the_dimensions():
    """All weight on one Δs dimension: the fit learns it and ignores an unweighted one."""
    batch = data(400, seed=3)
    w = torch.zeros(400, 1 + OBS)
    w[:, 1] = 1.0  # only Δs_0 counts
    model = small_model("mdn", max_epochs=10, patience=10)
    model.fit(batch, dim_weights=w)
    _, next_obs = model.predict_mean(batch.obs, batch.act)
    err = ((next_obs - batch.next_obs) / batch.next_obs.std(0)).pow(2).mean(0).detach()
    assert err[0] < 0.2 and err[2] > err[0]


def test_bad_dim_weights_fail_loudly():
    batch = data(20)
    model = small_model("mdn")
    with pytest.raises(ValueError, match="shape"):
        model.fit(batch, dim_weights=torch.ones(20, OBS))
    with pytest.raises(ValueError, match="non-negative"):
        model.fit(batch, dim_weights=-torch.ones(20, 1 + OBS))
    with pytest.raises(ValueError, match="all zero"):
        model.fit(batch, dim_weights=torch.zeros(20, 1 + OBS))


def test_smoke_run_vagram_paper_loss(tmp_path):
    argv = ["train", "--env", "inverted_pendulum", "--objective", "vagram", "--preset", "smoke",
            "--out", str(tmp_path), "--quiet", "--set", "vagram.loss=vagram-paper"]
    assert main(argv) == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    for col in ("model_holdout_loss", "model_error_recent", "vagram_clip_bound"):
        assert metrics[col].map(math.isfinite).iloc[-1], col
    assert metrics["model_nll_recent"].isna().all()  # no density after a mean-only fit
    assert (metrics["weight_ess"] == 1.0).all()  # uniform data weights


# -- VaGraM as the TOM paper's code computes it ------------------------------------------------

CRITIC_SLOPES = torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.0, 1.0], [-1.0, 0.0, 2.0],
                              [3.0, 1.0, -1.0]])  # ∇_s' of Q1, Q2, Q1', Q2'


class LinearCritics:
    """Stands in for SAC: Q_i(s, a) = c_i·s + Σa (gradients c_i w.r.t. s), and an actor."""

    def __init__(self, slopes: torch.Tensor) -> None:
        self.slopes = slopes

    def actor(self, s: torch.Tensor):
        return s[:, :ACT], torch.zeros(len(s), ACT)

    def critic(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (s @ self.slopes[:2].T).T + a.sum(-1)

    def critic_target(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (s @ self.slopes[2:].T).T + a.sum(-1)


def test_paper_code_gradient_is_the_running_sum_of_the_four_critics():
    """The paper code's .grad is never zeroed between its four critics: the i-th gradient is
    the running sum, so the average weighs them 4:3:2:1, not equally."""
    s = torch.randn(10, OBS)
    grads = critic_value_gradients(LinearCritics(CRITIC_SLOPES), s, chunk=3)
    assert torch.allclose(grads, CRITIC_SLOPES[:, None, :].expand(4, 10, OBS))
    g, bound, clipped = paper_code_gradient(grads, 0.95)
    c1, c2, c3, c4 = CRITIC_SLOPES
    assert torch.allclose(g, ((4 * c1 + 3 * c2 + 2 * c3 + c4) / 4).expand(10, OBS))
    assert clipped == 0 and bound > 0


def test_paper_code_gradient_with_the_sac_critics():
    """The four gradients are each critic's own ∂Q_i(s', a̅)/∂s' at the mean action held fixed."""
    from tom.sac import SAC

    cfg = resolve("inverted_pendulum", "vagram", preset="smoke")
    agent = SAC(OBS, ACT, cfg.sac)
    s = torch.randn(6, OBS)
    grads = critic_value_gradients(agent, s)
    act = agent.actor(s)[0].tanh().detach()
    for i, net in enumerate([agent.critic, agent.critic, agent.critic_target,
                             agent.critic_target]):
        x = s.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(net(x, act)[i % 2].sum(), x)
        assert torch.allclose(grads[i], expected, atol=1e-6)
    assert all(p.grad is None for p in agent.critic.parameters())


def test_paper_code_clipping_binds_only_above_1e5():
    """``norms < quantile or norms < 100000`` keeps a row: only norms ≥ 1e5 that also exceed
    the quantile are scaled down to it."""
    directions = torch.nn.functional.normalize(torch.randn(20, OBS), dim=-1)
    small = directions * torch.linspace(1.0, 50.0, 20)[:, None]  # all above the 0.5 quantile
    g, _, clipped = paper_code_gradient(torch.stack([small, 0 * small, 0 * small, 0 * small]),
                                        0.5)
    assert clipped == 0 and torch.allclose(g, small)  # 4·G/4 with the later three zero
    huge = small.clone()
    huge[-1] = directions[-1] * 3e5
    g, bound, clipped = paper_code_gradient(torch.stack([huge, 0 * huge, 0 * huge, 0 * huge]),
                                            0.5)
    assert clipped == 4  # the same row, once in each of the four running sums
    assert torch.allclose(g[:-1], small[:-1])
    assert g[-1].norm().item() == pytest.approx(bound, rel=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(g[-1], dim=0), directions[-1], atol=1e-6)


@pytest.mark.parametrize("first_epoch", [False, True])
def test_paper_code_loss_equals_closed_form_of_vaml_py(first_epoch):
    """The fit's loss per transition is what ``vaml.py`` computes (mode use_scaling):

        (1/obs_dim) Σ_j ḡ_j · nll[:, j] + nll[:, -1]   (+ mean_d nll[:, d] in the first epoch)

    with nll the MDN's per-dimension NLL of the normalised targets [reward, Δs]: column j of
    the gradient weights column j of the targets (column 0 is the reward), and the
    "reward" term is the last Δs dimension. Computed here independently with
    torch.distributions, as vaml.py does. (This closed form was checked once against the
    paper code's own VAML.loss, run outside this repository on CPU with linear critics:
    equal to 6e-8; a plain average of the four gradients instead of the running sums, or
    aligned columns, differ by 0.8 and 0.2 there.)"""
    batch = data(200)
    model = small_model("mdn")
    model.fit(batch)  # a non-trivial normaliser
    g = torch.randn(200, OBS)  # signed, as critic gradients are
    weights = paper_code_nll_weights(g, first_epoch)
    x, y = model.normalised(batch)
    log_w, mean, var = model.mixture(x)
    dist = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_w),
        torch.distributions.Normal(mean, var.sqrt()))
    nll = -dist.log_prob(y).detach()  # [B, 1 + OBS]
    expected = (g * nll[:, :OBS]).mean(-1) + nll[:, -1]
    if first_epoch:
        expected = expected + nll.mean(-1)
    assert torch.allclose(model.weighted_nll(batch, weights), expected, rtol=1e-4, atol=1e-5)
    aligned = paper_code_nll_weights(g, first_epoch, aligned=True)
    expected_aligned = (g * nll[:, 1:]).mean(-1) + nll[:, 0] + (nll.mean(-1) if first_epoch
                                                                  else 0.0)
    assert torch.allclose(model.weighted_nll(batch, aligned), expected_aligned, rtol=1e-4,
                          atol=1e-5)


def test_paper_code_objective_and_signed_fit():
    """The objective hands the fit signed NLL weights (first learner epoch: plus the mean NLL);
    the fit keeps the density, so the model is still probabilistic afterwards."""
    batch = data(300)
    buf = _buffer(batch)
    obj = _objective(0.95, loss="paper-code")
    agent = LinearCritics(CRITIC_SLOPES)
    obj.update(RefitContext(buf, agent, env_steps=300, learner_steps=0))
    c1, c2, c3, c4 = CRITIC_SLOPES
    g = ((4 * c1 + 3 * c2 + 2 * c3 + c4) / 4).expand(300, OBS)
    assert torch.allclose(obj.fit_nll_dim_weights(), paper_code_nll_weights(g, True))
    assert obj.fit_dim_weights() is None and obj.fit_weights() is None
    assert obj.stats()["vagram_negative_share"] == pytest.approx(1 / 3)
    obj.update(RefitContext(buf, agent, env_steps=10**4, learner_steps=10**4))
    weights = obj.fit_nll_dim_weights()
    assert torch.allclose(weights, paper_code_nll_weights(g, False))
    model = small_model("mdn", seed=2)
    fit = model.fit(batch, nll_dim_weights=weights)
    assert not model.mean_only and math.isfinite(fit.holdout_loss)
    assert torch.isfinite(model.nll(batch)).all()
    with pytest.raises(ValueError, match="not both"):
        model.fit(batch, dim_weights=torch.ones(300, 1 + OBS), nll_dim_weights=weights)


def test_model_batch_probability_is_the_paper_codes_ramp():
    """truncated_linear(0, 20, 0, 0.95, epoch)."""
    got = [model_batch_probability(e) for e in (0, 1, 10, 19, 20, 60)]
    assert got == pytest.approx([0.0, 0.0475, 0.475, 0.9025, 0.95, 0.95])
    mbpo = resolve("hopper", "vagram", preset="smoke", overrides={"vagram.sac_mix": "mbpo"})
    assert make_objective(mbpo, OBS, ACT).model_batch_probability(0) == 1.0


def _after_first_refit(cfg):
    """A trainer 300 real steps in (200 random, 100 learner steps), its model just refit; and
    the current observation."""
    from tom.mbpo import Trainer

    trainer = Trainer(cfg)
    obs = trainer._reset()
    for _ in range(300):
        obs = trainer._real_step(obs)
    trainer._refit()
    return trainer, obs


def test_sac_minibatches_mix_model_data_with_the_objectives_probability(monkeypatch):
    """The loop asks the objective once per block and mixes model data into a minibatch with
    that probability; the others are their real part alone."""
    cfg = resolve("inverted_pendulum", "vagram", preset="smoke")
    trainer, obs = _after_first_refit(cfg)
    sizes, asked = [], []
    monkeypatch.setattr(trainer.agent, "update", lambda batch: sizes.append(batch.size) or {})
    monkeypatch.setattr(trainer.agent, "update_block",  # all real or all mixed: one shape
                        lambda block: sizes.extend([block.obs.shape[1]] * len(block.obs)) or {})
    monkeypatch.setattr(trainer.objective, "model_batch_probability",
                        lambda epoch: asked.append(epoch) or 0.3)
    torch.manual_seed(0)
    for _ in range(100):
        trainer._sac_block()
    n_real = int(cfg.sac.batch_size * cfg.rollout.real_ratio)
    assert set(sizes) == {n_real, cfg.sac.batch_size}
    share = sizes.count(cfg.sac.batch_size) / len(sizes)
    assert share == pytest.approx(0.3, abs=0.05)  # 1000 draws: 4 standard errors
    # 300 real steps after 200 random ones, 200 per epoch: the 100th learner step, epoch 0.
    assert (trainer.env_steps, cfg.schedule.init_steps, cfg.schedule.epoch_length) == (300, 200,
                                                                                        200)
    assert asked == [0] * 100
    for _ in range(101):  # the 201st learner step starts learner epoch 1
        obs = trainer._real_step(obs)
    trainer._sac_block()
    assert asked[-1] == 1


def test_sac_block_minibatches_are_real_rows_then_model_rows_and_all_differ(monkeypatch):
    """MBPO's mix (every minibatch): the first ⌊256 · 0.05⌋ rows are real transitions, the
    rest model transitions, and each update of a block gets minibatches of its own."""
    cfg = resolve("inverted_pendulum", "mle", preset="smoke")
    trainer, _ = _after_first_refit(cfg)
    batches = []

    def record(batch):
        batches.append(batch)
        return {}

    def record_block(block):  # a block of minibatches of one shape: [update, row, ...]
        for i in range(len(block.obs)):
            record(block.index(i))
        return {}

    monkeypatch.setattr(trainer.agent, "update", record)
    monkeypatch.setattr(trainer.agent, "update_block", record_block)
    trainer._sac_block()
    n_real = int(cfg.sac.batch_size * cfg.rollout.real_ratio)
    assert len(batches) == cfg.schedule.update_block
    real, imagined = trainer.real.all(), trainer.imagined.all()

    def flat(t):  # one row per transition: [obs, act, reward, next_obs, done]
        return torch.cat([t.obs, t.act, t.reward[:, None], t.next_obs, t.done[:, None]], 1)

    def rows_of(part, data):  # every row of part is one of data's rows
        dist = torch.cdist(flat(part), flat(data), compute_mode="donot_use_mm_for_euclid_dist")
        return bool((dist.min(1).values == 0).all())

    for batch in batches:
        assert batch.size == cfg.sac.batch_size
        head, tail = batch.index(slice(0, n_real)), batch.index(slice(n_real, None))
        assert rows_of(head, real) and rows_of(tail, imagined) and not rows_of(tail, real)
    assert len({tuple(b.reward.tolist()) for b in batches}) == len(batches)


def test_sac_block_reads_statistics_from_the_device_once(monkeypatch):
    """The updates of a block hand their statistics over without a host read each: the block
    reads them once, at its end, to check they are finite (a GPU synchronises once per block)."""
    trainer, _ = _after_first_refit(resolve("inverted_pendulum", "mle", preset="smoke"))
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or original(self))
    trainer._sac_block()
    assert len(reads) == 1
    assert set(trainer.sac_stats) == {"q_loss", "actor_loss", "alpha", "entropy"}
    assert all(isinstance(v, float) for v in trainer.sac_stats.values())


def test_smoke_run_paper_code(tmp_path):
    argv = ["train", "--env", "inverted_pendulum", "--objective", "vagram", "--preset", "smoke",
            "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    for col in ("model_holdout_loss", "model_error_recent", "model_nll_recent",
                "vagram_clip_bound", "vagram_negative_share"):
        assert metrics[col].map(math.isfinite).iloc[-1], col
    assert (metrics["vagram_clipped_rows"] == 0).all()
