"""`compile: true` (tom.compile): the compiled steps compute what the eager ones do, draw from
the same seeded random stream, are deterministic, and fall back to eager where compiling fails.

Compiling takes tens of seconds on two cores, so these tests use small networks and few steps.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch._dynamo
import torch._dynamo.exc

from tom.buffer import ReplayBuffer, Transition
from tom.compile import compiled, seconds_compiling
from tom.config import SACConfig, resolve
from tom.dynamics import make_model
from tom.envs import get_task
from tom.mbpo import Trainer
from tom.objectives import RefitContext, make_objective
from tom.objectives.tom import discriminator_step, train_discriminator
from tom.sac import SAC

OBS_DIM, ACT_DIM = 3, 2
# The steps compiled whole (no CUDA graphs) on the CPU, and on a GPU where one is lent
# (benchmarks/gpu_check.sh runs this file there): the same code, the device a parameter.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


def _batch(n: int, seed: int) -> Transition:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, OBS_DIM, generator=g)
    return Transition(obs, torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
                      torch.randn(n, generator=g), obs + 0.1 * torch.randn(n, OBS_DIM, generator=g),
                      (torch.rand(n, generator=g) < 0.2).float())


def test_disabled_returns_the_function_itself():
    def fn(x):
        return x + 1
    assert compiled(fn, False) is fn


def test_compilation_failure_falls_back_to_eager_once_with_a_warning(monkeypatch):
    calls = {"compiled": 0, "eager": 0}

    def eager(x):
        calls["eager"] += 1
        return x * 2

    def broken(*args, **kwargs):
        calls["compiled"] += 1
        raise torch._dynamo.exc.BackendCompilerFailed(eager, RuntimeError("no C compiler"),
                                                     None)

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    fn = compiled(eager, True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed for .*eager"):
        assert fn(torch.tensor(3.0)) == 6.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        assert fn(torch.tensor(4.0)) == 8.0
    assert calls == {"compiled": 1, "eager": 2}


def test_a_failed_compilation_runs_the_fallback_in_its_place(monkeypatch):
    """A step compiled whole falls back to the plain eager step (`fallback`), which takes the
    same arguments, rather than to its own function run eagerly."""
    def broken(*args, **kwargs):
        raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("no C compiler"),
                                                     None)

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    fn = compiled(lambda x, state: x * state, True, fallback=lambda x, state: x + 1)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        assert fn(torch.tensor(3.0), 10.0) == 4.0
    assert fn(torch.tensor(5.0), 10.0) == 6.0


def _settings() -> tuple[object, ...]:
    """The compiler settings that `compiled` sets while its functions compile."""
    import torch._dynamo.config
    import torch._inductor.config

    return (torch._inductor.config.fallback_random,
            getattr(torch._dynamo.config, "trace_autograd_ops", True),
            torch._inductor.config.size_asserts,
            getattr(torch._inductor.config.cpp, "use_decompose_tanh", True))


OURS = (True, True, False, True)


def test_compiler_settings_hold_only_while_our_functions_compile(monkeypatch):
    """Eager random draws, traced `torch.autograd.grad`, no size asserts and the decomposed
    tanh while our function compiles, at its first call and again when a new shape
    recompiles it; not after, and not for a user's own `torch.compile` in the same process.
    (A backend that records the settings stands in for inductor.)"""
    outside = _settings()
    assert outside[0] is False and outside != OURS  # PyTorch's defaults
    seen = []

    def recording(gm, example_inputs):
        seen.append(_settings())
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kwargs: real_compile(fn, backend=recording, **kwargs))
    fn = compiled(lambda x: x * 2 + 1, True)
    torch._dynamo.reset()  # drops every compile callback: the call reinstalls ours
    assert fn(torch.ones(3)).tolist() == [3.0] * 3 and seen == [OURS]
    assert _settings() == outside
    assert fn(torch.ones(3)).tolist() == [3.0] * 3 and seen == [OURS]  # no recompile
    assert fn(torch.ones(4)).tolist() == [3.0] * 4 and seen == [OURS, OURS]  # a new shape
    assert _settings() == outside
    users = real_compile(lambda x: x * 3 + 1, backend=recording)
    assert users(torch.ones(3)).tolist() == [4.0] * 3 and seen[-1] == outside


def test_without_compile_callbacks_the_settings_hold_while_our_function_runs(monkeypatch):
    """Where PyTorch has no compile callbacks, each compiled call sets the settings for its
    duration, and restores them after."""
    outside = _settings()
    seen = []
    monkeypatch.setattr("tom.compile._install_hooks", lambda: False)
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kwargs: lambda *a: seen.append(_settings()) or fn(*a))
    fn = compiled(lambda x: x + 1, True)
    assert fn(torch.tensor(1.0)) == 2.0 and seen == [OURS]
    assert _settings() == outside


def test_a_compiled_tanh_is_within_3e_7_of_the_exact_one():
    """Compiled steps take a CPU kernel's tanh as 2 / (1 + exp(-2x)) - 1 (faster than
    Sleef's): over the whole range, saturation and tiny inputs included, it stays within
    3e-7 of tanh in float64 (float32's own rounding of values near 1 is 6e-8)."""
    x = torch.cat([torch.linspace(-12, 12, 240_001), torch.logspace(-30, 1, 3_001),
                   -torch.logspace(-30, 1, 3_001),
                   torch.tensor([0.0, -0.0, 50.0, -50.0, float("inf"), float("-inf")])])
    fn = compiled(torch.tanh, True)
    err = (fn(x).double() - torch.tanh(x.double())).abs()
    assert err.max().item() <= 3e-7


def test_no_torch_compile_on_this_python_means_eager_with_a_warning(monkeypatch):
    def unavailable(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported on Python 3.99+")

    monkeypatch.setattr(torch, "compile", unavailable)

    def fn(x):
        return x + 1
    with pytest.warns(RuntimeWarning, match="not available"):
        assert compiled(fn, True) is fn


def test_errors_of_the_function_itself_are_not_swallowed(monkeypatch):
    def bad(*args, **kwargs):
        raise ValueError("shape mismatch")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: bad)
    with pytest.raises(ValueError, match="shape mismatch"):
        compiled(lambda x: x, True)(torch.zeros(1))


def test_seconds_compiling_count_the_forward_and_the_lazy_backward_compile_only():
    """The clock runs while a function compiles at its first call and while its backward
    graph compiles at the first backward pass, and stands still once both are compiled.
    (Without the on-disk caches: where they hold the graphs, both load at the first call.)"""
    import torch._functorch.config
    import torch._inductor.config

    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    fn = compiled(lambda x: net(x).square().mean(), True)
    x = torch.randn(5, 3)
    before = seconds_compiling()
    with (torch._functorch.config.patch(enable_autograd_cache=False),
          torch._inductor.config.patch(fx_graph_cache=False)):
        loss = fn(x)
        forward = seconds_compiling()
        loss.backward()
        backward = seconds_compiling()
    assert before < forward < backward
    fn(x).backward()
    fn(x + 1).backward()
    assert seconds_compiling() == backward


def _agents(device: str = "cpu", **cfg) -> tuple[SAC, SAC]:
    out = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        out.append(SAC(OBS_DIM, ACT_DIM, SACConfig(hidden_size=32, hidden_layers=2, **cfg),
                       device, compile=compile_))
    return out[0], out[1]


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_sac_updates_match_eager_and_use_the_same_random_draws(device):
    """Three updates from the same weights and seed: the same statistics and weights up to
    rounding. A compiled step drawing its own noise (not the seeded eager stream) would
    differ at the first update's a' ~ π(s') by far more than rounding."""
    torch._dynamo.reset()
    eager, fast = _agents(device)
    for agent in (eager, fast):
        torch.manual_seed(1)
        agent.stats = [agent.update(_batch(64, seed).to(device)) for seed in range(3)]
    for a, b in zip(eager.stats, fast.stats, strict=True):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    for p, q in zip([*eager.actor.parameters(), *eager.critic.parameters()],
                    [*fast.actor.parameters(), *fast.critic.parameters()], strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
    assert fast.log_alpha.item() == pytest.approx(eager.log_alpha.item(), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["mdn", "ensemble"])
def test_compiled_model_fit_matches_eager(kind, device):
    torch._dynamo.reset()
    cfg = resolve("inverted_pendulum", "mle", preset="smoke").model
    cfg.kind, cfg.hidden_size, cfg.max_epochs, cfg.steps_per_epoch = kind, 32, 2, 5
    task = get_task("hopper")
    data = _batch(500, 3)
    data = Transition(torch.randn(500, task.obs_dim), torch.rand(500, task.act_dim),
                      data.reward, torch.randn(500, task.obs_dim), data.done).to(device)
    weights = torch.rand(500, device=device)
    results = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = make_model(cfg, task.obs_dim, task.act_dim, task.termination, device,
                           compile=compile_)
        results.append((model.fit(data, weights), model))
    (fit_e, eager), (fit_c, fast) = results
    assert fit_c.epochs == fit_e.epochs
    assert fit_c.holdout_loss == pytest.approx(fit_e.holdout_loss, rel=1e-4)
    assert fit_c.train_loss == pytest.approx(fit_e.train_loss, rel=1e-4)
    for p, q in zip(eager.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_tom_dual_matches_eager(device):
    torch._dynamo.reset()
    task = get_task("hopper")
    n = 600
    buf = ReplayBuffer(n, task.obs_dim, task.act_dim, device)
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(n, task.obs_dim, generator=g)
    buf.add_batch(Transition(obs, torch.rand(n, task.act_dim, generator=g) * 2 - 1,
                             torch.randn(n, generator=g), obs + 0.1 * torch.randn(
                                 n, task.obs_dim, generator=g), torch.zeros(n)).to(device))
    for s in obs[:20]:
        buf.add_initial_state(s.to(device))
    weights = []
    for compile_ in (False, True):
        cfg = resolve("hopper", "tom-nodisc", preset="smoke", device=device,
                      overrides=[f"compile={str(compile_).lower()}", "cuda_graph=false",
                                 "tom.dual_steps=20", "tom.recent_window=100",
                                 "tom.dual_hidden=32"])
        torch.manual_seed(0)
        agent = SAC(task.obs_dim, task.act_dim, SACConfig(hidden_size=32, hidden_layers=2),
                    device)
        objective = make_objective(cfg, task.obs_dim, task.act_dim)
        objective.update(RefitContext(buf, agent, env_steps=n, learner_steps=n))
        weights.append(objective.start_weights())
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_discriminator_training_matches_eager(device):
    """Two passes of minibatches of two sizes, the gradient penalty's double backward inside
    the compiled step: the same weights up to rounding, from the same random draws (each
    step's replay rows and interpolates; a different draw would move the weights by far more)."""
    torch._dynamo.reset()
    task = get_task("hopper")
    n = 300
    g = torch.Generator().manual_seed(7)
    obs = torch.randn(n, task.obs_dim, generator=g)
    buf = ReplayBuffer(n, task.obs_dim, task.act_dim, device)
    buf.add_batch(Transition(obs, torch.rand(n, task.act_dim, generator=g) * 2 - 1,
                             torch.randn(n, generator=g), obs + 0.1 * torch.randn(
                                 n, task.obs_dim, generator=g), torch.zeros(n)).to(device))
    cfg = resolve("hopper", "tom", preset="smoke",
                  overrides=["tom.disc_hidden=32", "tom.disc_passes=2", "tom.disc_batch=64"]).tom
    recent = buf.recent_mask(100)
    step_whole = compiled(discriminator_step, True,
                          fallback=lambda *args: discriminator_step(*args[:-1]))
    discs = []
    for step in (None, step_whole):
        torch.manual_seed(0)
        discs.append(train_discriminator(buf, recent, cfg, task.obs_dim, task.act_dim,
                                         step_whole=step))
    for p, q in zip(discs[0].parameters(), discs[1].parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
    assert not torch.equal(discs[0].head[0].weight, discs[1].head[0].weight)  # compiled


def test_compiled_run_is_deterministic_and_compiles_its_steps():
    """A short compiled run of the whole loop (TOM: SAC, model fit, dual) twice: identical
    metrics. Dynamo's counters show that graphs were compiled (the switch is wired)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    rows = []
    for _ in range(2):
        cfg = resolve("inverted_pendulum", "tom-nodisc", preset="smoke",
                      overrides=["compile=true"])
        rows.append(Trainer(cfg).run().metrics)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 3
    drop = {"wall_time", "sps"} | {k for k in rows[0][0] if k.startswith("time_")}
    strip = [[{k: v for k, v in row.items() if k not in drop} for row in run] for run in rows]
    assert strip[0] == strip[1]
