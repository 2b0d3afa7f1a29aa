"""The GPU path: the inner steps captured as CUDA graphs (``cuda_graph: true``: SAC updates,
model-fit steps, TOM's discriminator and dual steps) compute what eager steps compute, SAC's
survive a checkpoint, and the whole loop runs with them.

The tests marked ``cuda`` need a CUDA device and are skipped elsewhere (CI has none); run them
where one is lent (benchmarks/gpu_check.sh). The configuration checks run everywhere.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from tom.buffer import ReplayBuffer, Transition
from tom.config import ConfigError, SACConfig, resolve
from tom.cuda_graph import GraphedStep
from tom.dynamics import make_model
from tom.envs import get_task
from tom.mbpo import Trainer
from tom.objectives import RefitContext, make_objective
from tom.sac import SAC

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# A capture that fails falls back to eager steps with a warning; here it must fail the test,
# or the comparisons below would compare eager with eager.
pytestmark = pytest.mark.filterwarnings("error:capturing .* as a CUDA graph failed")
OBS_DIM, ACT_DIM = 11, 3


def test_cuda_graph_is_on_by_default_on_cuda_only():
    assert resolve("hopper", "mle", preset="smoke", device="cuda").cuda_graph
    assert not resolve("hopper", "mle", preset="smoke", device="cuda",
                       overrides=["cuda_graph=false"]).cuda_graph
    assert not resolve("hopper", "mle", preset="smoke").cuda_graph


def test_cuda_graph_needs_device_cuda():
    with pytest.raises(ConfigError, match="'cuda_graph' = true is not allowed with device = "
                                          "'cpu'"):
        resolve("hopper", "mle", preset="smoke", overrides=["cuda_graph=true"])
    with pytest.raises(ConfigError, match="'cuda_graph_steps' = 10 is not allowed with "
                                          "cuda_graph = false: it must be 1"):
        resolve("hopper", "mle", preset="smoke", overrides=["cuda_graph_steps=10"])
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device, got device 'cpu'"):
        SAC(OBS_DIM, ACT_DIM, SACConfig(), cuda_graph=True)
    cfg = resolve("hopper", "mle", preset="smoke").model
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device, got device 'cpu'"):
        make_model(cfg, OBS_DIM, ACT_DIM, get_task("hopper").termination, cuda_graph=True)


def _batches(rows: list[int], seed: int = 0) -> list[Transition]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in rows:
        obs = torch.randn(n, OBS_DIM, generator=g)
        out.append(Transition(obs, torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
                              torch.randn(n, generator=g),
                              obs + 0.1 * torch.randn(n, OBS_DIM, generator=g),
                              (torch.rand(n, generator=g) < 0.1).float()).to("cuda"))
    return out


def _agent(cuda_graph: bool) -> SAC:
    torch.manual_seed(0)
    return SAC(OBS_DIM, ACT_DIM, SACConfig(hidden_size=64, hidden_layers=2), "cuda",
               cuda_graph=cuda_graph)


def _state(agent: SAC) -> list[torch.Tensor]:
    return [*agent.actor.parameters(), *agent.critic.parameters(),
            *agent.critic_target.parameters(), agent.log_alpha]


def _assert_same(a: SAC, b: SAC) -> None:
    for p, q in zip(_state(a), _state(b), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.filterwarnings("default:capturing .* as a CUDA graph failed")
def test_a_failed_capture_leaves_the_random_generator_as_it_was():
    """A step that synchronises with the host fails under capture: it runs eagerly from then
    on, and the CUDA generator then draws outside captures what it would have drawn had no
    capture been tried. (A failed capture's end raised before it took the generator out of
    capture mode, and every later draw raised; seen in a population of 10 on an H200.)"""
    def syncing(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        float(y.sum())  # a copy to the host: not allowed while capturing
        return y

    x = torch.arange(4.0, device="cuda")
    torch.manual_seed(0)
    step = GraphedStep(syncing, warmup=1)
    step(x)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed; it runs eagerly"):
        torch.testing.assert_close(step(x), 2 * x)
    torch.testing.assert_close(step(x + 1), 2 * x + 2)
    drawn = torch.randn(5, device="cuda")
    torch.manual_seed(0)
    torch.testing.assert_close(drawn, torch.randn(5, device="cuda"), rtol=0, atol=0)


@cuda
def test_a_step_warmed_up_in_one_thread_is_captured_in_another():
    """As a stacked step in a population (run by whichever member arrives last): a step of
    matrix products, warmed up in one thread, then called in a fresh thread on the same
    stream, runs eagerly there once, then is captured there without a failure, and its
    replays compute what eager calls compute."""
    weight = torch.randn(3, 64, 64, device="cuda")

    def products(x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(x, x, weight).relu().sum(dim=0)

    stream = torch.cuda.Stream()
    x = torch.randn(3, 32, 64, device="cuda")
    step = GraphedStep(products, warmup=1)
    with torch.cuda.stream(stream):
        want = step(x)
    got: list = []

    def elsewhere() -> None:
        try:
            with torch.cuda.stream(stream):
                got.extend(step(x) for _ in range(3))
            stream.synchronize()
        except BaseException as err:  # noqa: BLE001 (raised again below, in the test)
            got.append(err)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    for out in got:
        if isinstance(out, BaseException):
            raise out
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert step.captured == 1


@cuda
def test_graphed_updates_match_eager_updates():
    """Two minibatch shapes (MBPO's full minibatch and a real-only one), interleaved: each
    shape's first updates run eagerly, the rest replay its graph. Same weights, temperature
    and statistics as eager updates from the same seed; a replay that drew other noise, read
    a stale minibatch or skipped an optimiser would differ by far more than rounding."""
    rows = [256] * 6 + [12] * 5 + [256] * 4 + [12] * 2
    batches = _batches(rows)
    stats = {}
    for graphed in (False, True):
        agent = _agent(graphed)
        torch.manual_seed(1)
        stats[graphed] = [dict(agent.update(b)) for b in batches]
        if graphed:
            assert agent._step.captured == 2
            graphed_agent = agent
        else:
            eager_agent = agent
    _assert_same(eager_agent, graphed_agent)
    for e, g in zip(stats[False], stats[True], strict=True):
        assert g == pytest.approx(e, rel=1e-5, abs=1e-6)
    assert graphed_agent.num_updates == len(rows)


@cuda
def test_compiled_graphed_updates_match_eager_updates():
    """``compile: true`` on top of CUDA graphs (one run's fastest way on an H100, sixth
    session; off by default): two minibatch shapes, each captured after its eager updates,
    land within rounding of plain eager updates from the same seed (compiled kernels sum in
    another order). Noise drawn from another stream, or a graph replaying stale inputs,
    would differ by far more."""
    torch._dynamo.reset()
    rows = [256] * 6 + [12] * 5 + [256] * 4
    batches = _batches(rows)
    agents = []
    for fast in (False, True):
        torch.manual_seed(0)
        agent = SAC(OBS_DIM, ACT_DIM, SACConfig(hidden_size=64, hidden_layers=2), "cuda",
                    compile=fast, cuda_graph=fast)
        torch.manual_seed(1)
        for batch in batches:
            agent.update(batch)
        agents.append(agent)
    eager, fast = agents
    assert fast._step.captured == 2
    for p, q in zip(_state(eager), _state(fast), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=5e-5)


@cuda
def test_graphed_blocks_match_eager_blocks_and_single_updates():
    """Blocks of 4 updates of two minibatch shapes, interleaved: each shape's first block runs
    eagerly, the rest replay its graph (`SAC.update_block`). Same weights and statistics as
    eager blocks, and as the same updates one by one, from the same seed."""
    rows = [256] * 8 + [12] * 8 + [256] * 8 + [12] * 4
    batches = _batches(rows)

    def blocks():
        at = 0
        for size in (4,) * (len(rows) // 4):
            yield Transition(*(torch.stack(c) for c in zip(*batches[at:at + size],
                                                              strict=True)))
            at += size

    agents, stats = {}, {}
    for mode in ("one by one", "eager blocks", "graphed blocks"):
        agent = _agent(mode == "graphed blocks")
        torch.manual_seed(1)
        if mode == "one by one":
            stats[mode] = [dict(agent.update(b)) for b in batches][3::4]
        else:
            stats[mode] = [dict(agent.update_block(b)) for b in blocks()]
        agents[mode] = agent
    assert agents["graphed blocks"]._block_step.captured == 2
    for mode in ("eager blocks", "graphed blocks"):
        _assert_same(agents["one by one"], agents[mode])
        for e, g in zip(stats["one by one"], stats[mode], strict=True):
            assert g == pytest.approx(e, rel=1e-5, abs=1e-6)
        assert agents[mode].num_updates == len(rows)


@cuda
def test_graphed_agent_resumes_a_checkpoint_exactly():
    """Twelve updates straight, against seven, a load of the snapshot taken after five (with
    the generator's state) and seven more: the same agent. Loading must drop the captured
    graphs, which would otherwise keep updating the optimiser's old moment tensors."""
    batches = _batches([256] * 12, seed=2)
    straight = _agent(True)
    torch.manual_seed(3)
    for b in batches:
        straight.update(b)

    resumed = _agent(True)
    torch.manual_seed(3)
    for i, b in enumerate(batches[:7]):
        resumed.update(b)
        if i == 4:
            snapshot, rng = resumed.state_dict(), torch.cuda.get_rng_state()
    assert resumed._step.captured
    resumed.load_state_dict(snapshot)
    torch.cuda.set_rng_state(rng)
    for b in batches[5:]:
        resumed.update(b)
    _assert_same(straight, resumed)
    assert resumed.num_updates == straight.num_updates == 12


def _fit_data(task, n: int = 600) -> tuple[Transition, torch.Tensor]:
    """``n`` random transitions of ``task``'s sizes on the GPU, and random weights."""
    g = torch.Generator().manual_seed(4)
    obs = torch.randn(n, task.obs_dim, generator=g)
    data = Transition(obs, torch.rand(n, task.act_dim, generator=g) * 2 - 1,
                      torch.randn(n, generator=g), obs + 0.1 * torch.randn(
                          n, task.obs_dim, generator=g), torch.zeros(n)).to("cuda")
    return data, torch.rand(n, generator=g).cuda()


@cuda
@pytest.mark.parametrize("kind,graph_steps", [("mdn", 1), ("ensemble", 1), ("mdn", 4)])
def test_graphed_model_fit_matches_eager(kind, graph_steps):
    """Two weighted fits (the second warm-starts Adam, as refits do, and captures new
    graphs): the same epochs, losses and parameters as eager fits from the same seed. With
    4 steps per graph, an epoch's 10 steps are two replays of 4 and two single steps."""
    cfg = resolve("hopper", "mle", preset="smoke").model
    cfg.kind, cfg.hidden_size, cfg.max_epochs, cfg.steps_per_epoch = kind, 32, 4, 10
    task = get_task("hopper")
    data, weights = _fit_data(task)
    results = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        model = make_model(cfg, task.obs_dim, task.act_dim, task.termination, "cuda",
                           cuda_graph=graphed, graph_steps=graph_steps if graphed else 1)
        fits = [model.fit(data, weights), model.fit(data, weights)]
        results[graphed] = (fits, [p.detach().clone() for p in model.parameters()])
    (eager_fits, eager_p), (graph_fits, graph_p) = results[False], results[True]
    for e, f in zip(eager_fits, graph_fits, strict=True):
        assert f.epochs == e.epochs
        assert f.train_loss == pytest.approx(e.train_loss, rel=1e-5)
        assert f.holdout_loss == pytest.approx(e.holdout_loss, rel=1e-5)
    for p, q in zip(eager_p, graph_p, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.parametrize("graph_steps", [1, 6])
def test_graphed_tom_refit_matches_eager(graph_steps):
    """Two TOM refits (discriminator with a partial last minibatch, dual warm-started; with 6
    dual steps per graph, 20 steps are three replays of 6 and two single steps): the same
    weights as eager refits from the same seed."""
    task = get_task("hopper")
    n = 700
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(n, task.obs_dim, generator=g)
    data = Transition(obs, torch.rand(n, task.act_dim, generator=g) * 2 - 1,
                      torch.randn(n, generator=g),
                      obs + 0.1 * torch.randn(n, task.obs_dim, generator=g), torch.zeros(n))
    weights = []
    for graphed in (False, True):
        buf = ReplayBuffer(n, task.obs_dim, task.act_dim, "cuda")
        buf.add_batch(data)
        for s0 in obs[:20]:
            buf.add_initial_state(s0)
        cfg = resolve("hopper", "tom", preset="smoke", device="cuda",
                      overrides=[f"cuda_graph={str(graphed).lower()}", "tom.dual_steps=20",
                                 f"cuda_graph_steps={graph_steps if graphed else 1}",
                                 "tom.disc_passes=4", "tom.recent_window=150",
                                 "tom.disc_batch=64"])
        torch.manual_seed(0)
        agent = SAC(task.obs_dim, task.act_dim, SACConfig(hidden_size=32, hidden_layers=2),
                    "cuda")
        objective = make_objective(cfg, task.obs_dim, task.act_dim)
        for _ in range(2):
            objective.update(RefitContext(buf, agent, env_steps=n, learner_steps=n))
        weights.append(objective.start_weights())
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-5, atol=1e-6)


@cuda
@pytest.mark.parametrize("objective", ["mle", "tom"])
def test_loop_on_cuda_with_graphs(objective):
    """The whole loop on the GPU at the smoke preset, eager and with graphs: both finish with
    finite metrics, the graphed one replays its SAC updates, and their first evaluation's
    return agrees to rounding where both are deterministic (reported, not required: some
    CUDA kernels accumulate in a nondeterministic order)."""
    returns = {}
    for graphed in (False, True):
        cfg = resolve("hopper", objective, preset="smoke", device="cuda",
                      overrides=[f"cuda_graph={str(graphed).lower()}"])
        trainer = Trainer(cfg)
        metrics = trainer.run().metrics
        assert metrics and all(math.isfinite(row["return_mean"]) for row in metrics)
        returns[graphed] = [row["return_mean"] for row in metrics]
        if graphed:
            # Its SAC blocks have one minibatch shape each: each block is one graph.
            assert trainer.agent._block_step.captured and trainer.model.cuda_graph
    print(f"{objective}: eager returns {returns[False]}, graphed {returns[True]}")


@cuda
@pytest.mark.parametrize("seeds,graph_steps", [(2, 1), (6, 1), (2, 10)])
def test_seeds_in_turns_on_cuda_equal_their_single_runs(seeds, graph_steps):
    """`tom.population` on the GPU: each member in its own thread and CUDA stream, with
    graphs, with its own state object of the CUDA generator, gives its single run's
    evaluation returns. Two races this caught (benchmarks/RESULTS.md): members' graphs
    shared the generator's seed and offset tensors (2 % off at the second evaluation), and
    then, captured on one stream, cuBLAS's workspace (0.1-0.4 % off, a different value each
    time). Six members also exercise memory freed and reused across streams; 10 model-fit
    and dual steps per graph, graphs of several steps."""
    from tom.population import Population

    def cfg(seed: int):
        return resolve("hopper", "tom", seed=seed, preset="smoke", device="cuda",
                       overrides=[f"cuda_graph_steps={graph_steps}"])

    single = {seed: [row["return_mean"] for row in Trainer(cfg(seed)).run().metrics]
              for seed in range(seeds)}
    population = Population()
    for seed in range(seeds):
        population.add(lambda seed=seed: Trainer(cfg(seed)))
    for seed, result in zip(range(seeds), population.run(), strict=True):
        assert [row["return_mean"] for row in result.metrics] == pytest.approx(
            single[seed], rel=1e-5)


@cuda
def test_members_on_cuda_run_in_threads():
    from tom.population import Population

    population = Population(threads=False)
    population.add(lambda: Trainer(resolve("hopper", "tom", preset="smoke", device="cuda")))
    with pytest.raises(ValueError, match="threads=False. is not allowed with members on a GPU"):
        population.run()


@cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_stacked_sac_on_cuda_matches_each_members_own_blocks(cuda_graph):
    """`tom.stacked_sac` on the GPU, eager and replayed from one graph per block after the
    first: three members' blocks as one land within rounding of each member's own blocks
    from the same noise (its random state seeded alike), over three rounds."""
    from tom.stacked_sac import StackedSAC, draw_noise

    def agents() -> list[SAC]:
        out = []
        for seed in range(3):
            torch.manual_seed(seed)
            out.append(SAC(OBS_DIM, ACT_DIM, SACConfig(hidden_size=64, hidden_layers=2),
                           "cuda"))
        return out

    own, stacked = agents(), agents()
    stack = StackedSAC(stacked, cuda_graph=cuda_graph)
    batches = _batches([256] * 36)
    for round_ in range(3):
        blocks = [Transition(*(torch.stack(c) for c in zip(
            *batches[(round_ * 3 + i) * 4:(round_ * 3 + i + 1) * 4], strict=True)))
            for i in range(3)]
        noise = []
        for i, (agent, block) in enumerate(zip(own, blocks, strict=True)):
            torch.manual_seed(100 * round_ + i)
            agent.update_block(block)
            torch.manual_seed(100 * round_ + i)
            noise.append(draw_noise(block))
        stack.update_block(blocks, noise)
    assert stack._block.captured == (1 if cuda_graph else 0)
    # Adam moves a parameter by up to about its learning rate (3e-4) each update whatever
    # the gradient's size: where a gradient is near zero, the batched products' rounding can
    # change a step by a fraction of that (seen: 1.2e-5 on one of 4 096 weights after 12
    # updates, eager and graphed alike). A member given another's batches or noise is off by
    # far more.
    for a, b in zip(own, stacked, strict=True):
        for p, q in zip(_state(a), _state(b), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=5e-5)
        assert a.num_updates == b.num_updates == 12


@cuda
@pytest.mark.parametrize("fits", [[], ["model.max_epochs=8", "model.patience=2",
                                       "model.steps_per_epoch=3"]])
def test_stacked_seeds_on_cuda_are_reproducible(fits):
    """Seeds in threads and streams with ``stack_seeds`` and graphs: the stacked block runs on
    the population's own stream, between the members' work. Run twice, every member's
    returns are the same: a race between streams would make them differ. With early stopping
    (the second case), members' fits can stop after different numbers of epochs, and the
    fit's stack then runs some of its members only."""
    from tom.population import Population

    returns = []
    for _ in range(2):
        population = Population()
        for seed in range(3):
            population.add(lambda seed=seed: Trainer(resolve(
                "hopper", "tom", seed=seed, preset="smoke", device="cuda",
                overrides=["stack_seeds=true", *fits])))
        results = population.run()
        returns.append([[row["return_mean"] for row in r.metrics] for r in results])
        assert all(math.isfinite(x) for r in returns[-1] for x in r)
    assert returns[0] == returns[1]
    assert returns[0][0] != returns[0][1]


@cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_stacked_dual_on_cuda_matches_each_members_own_training(cuda_graph):
    """`tom.stacked_tom` on the GPU, eager and with a graph per step: three members' dual
    trainings as one land within rounding of each member's own eager training from the same
    random state."""
    import copy

    from tom.objectives.tom import PolicyGaussians, TOMObjective, draw_dual_work
    from tom.stacked_tom import StackedDual

    cfg = resolve("hopper", "tom", preset="smoke", device="cuda", overrides=[
        "cuda_graph=false", "tom.dual_steps=8"])
    buf = ReplayBuffer(500, OBS_DIM, ACT_DIM, "cuda")
    for batch in _batches([100] * 5):
        buf.add_batch(batch)
        buf.add_initial_state(batch.obs[0])
    rho = torch.randn(len(buf), device="cuda")
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append((TOMObjective(cfg, OBS_DIM, ACT_DIM),
                        SAC(OBS_DIM, ACT_DIM, cfg.sac, "cuda")))
    stacked = copy.deepcopy(members)
    losses, work = [], []
    for seed, (objective, agent) in enumerate(members):
        torch.manual_seed(10 + seed)
        losses.append(objective._train_dual_alone(buf, PolicyGaussians.of(agent, buf), rho))
    for seed, (objective, agent) in enumerate(stacked):
        torch.manual_seed(10 + seed)
        work.append(draw_dual_work(buf, rho, PolicyGaussians.of(agent, buf), objective.tom))
    stack = StackedDual([m[0] for m in stacked], cuda_graph=cuda_graph)
    got = stack.train(work)
    torch.testing.assert_close(got, torch.stack(losses), rtol=1e-4, atol=1e-5)
    for (own, _), (mine, _) in zip(members, stacked, strict=True):
        for p, q in zip(own.q.parameters(), mine.q.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("kind,cuda_graph", [("mdn", False), ("mdn", True),
                                             ("ensemble", True)])
def test_stacked_fit_epochs_on_cuda_match_each_members_own(kind, cuda_graph):
    """`tom.stacked_model` on the GPU, eager and with a graph per step: three members' first
    fit epochs (resampled by weights) as one land within rounding of each member's own eager
    epoch from the same random state."""
    from test_stacked_model import fit_epochs, flat_state

    from tom.stacked_model import StackedFit

    cfg = resolve("hopper", "mle", preset="smoke").model
    cfg.kind, cfg.hidden_size, cfg.max_epochs, cfg.steps_per_epoch = kind, 32, 1, 12
    task = get_task("hopper")
    data, weights = _fit_data(task)
    kept = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = make_model(cfg, task.obs_dim, task.act_dim, task.termination, "cuda")
        kept.append(fit_epochs(model, data, weights=weights)[0])
    befores = [before for before, *_ in kept]
    totals = StackedFit(befores, cuda_graph=cuda_graph).train([epoch for _, epoch, *_ in kept])
    for i, (mine, (_, _, after, total)) in enumerate(zip(befores, kept, strict=True)):
        torch.testing.assert_close(totals[i], total, rtol=1e-4, atol=1e-5)
        want = flat_state(after)
        for key, value in flat_state(mine).items():
            torch.testing.assert_close(value, want[key], rtol=1e-4, atol=1e-5, msg=key)


@cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_stacked_discriminators_on_cuda_match_each_members_own(cuda_graph):
    """`tom.stacked_tom.StackedDiscriminator` on the GPU, eager and with a graph per step
    shape (the gradient penalty's double backward captured): three members' discriminators
    trained as one land within rounding of each trained alone, eagerly."""
    from tom.objectives.tom import Discriminator, draw_disc_work, train_discriminator
    from tom.optim import adam
    from tom.stacked_tom import StackedDiscriminator

    cfg = resolve("hopper", "tom", preset="smoke", device="cuda").tom
    buf = ReplayBuffer(500, OBS_DIM, ACT_DIM, "cuda")
    for batch in _batches([100] * 5):
        buf.add_batch(batch)
    recent = buf.recent_mask(150)
    own, discs, opts, works = [], [], [], []
    for seed in range(3):
        torch.manual_seed(seed)
        own.append(train_discriminator(buf, recent, cfg, OBS_DIM, ACT_DIM))
        torch.manual_seed(seed)
        discs.append(Discriminator(OBS_DIM, ACT_DIM, cfg.disc_hidden, buf.all()).to("cuda"))
        opts.append(adam(discs[-1].parameters(), lr=cfg.disc_lr, capturable=cuda_graph))
        works.append(draw_disc_work(buf, torch.nonzero(recent).squeeze(-1), cfg))
    StackedDiscriminator(discs, opts, cfg, cuda_graph=cuda_graph).train(works)
    for mine, disc in zip(own, discs, strict=True):
        for p, q in zip(mine.parameters(), disc.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
