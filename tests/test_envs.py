"""Task registry: declared dims and action range, and termination rules agreeing with the envs.

Agreement is checked three ways: on random-action rollouts (what a model-based learner sees), on
states put exactly at, and a hair either side of, every healthy-range threshold (where a `<` vs
`<=` slip would show), and on one-step transitions started next to those thresholds.
"""

from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from tom import envs
from tom.envs import TASKS, get_task, make_env

ALL = ["inverted_pendulum", "hopper", "walker2d", "halfcheetah", "ant", "humanoid"]
TERMINATING = [name for name in ALL if name != "halfcheetah"]
ROLLOUT_STEPS = {"humanoid": 2000}  # others: 3000

# (qpos index, threshold) pairs of every healthy-range edge, per task.
EDGES: dict[str, list[tuple[int, float]]] = {
    "inverted_pendulum": [(1, -0.2), (1, 0.2)],
    "hopper": [(1, 0.7), (2, -0.2), (2, 0.2), (3, -100.0), (3, 100.0)],
    "walker2d": [(1, 0.8), (1, 2.0), (2, -1.0), (2, 1.0)],
    "ant": [(2, 0.2), (2, 1.0)],
    "humanoid": [(2, 1.0), (2, 2.0)],
}


def _terminated_by_rule(
    name: str,
    obs: np.ndarray,
    act: np.ndarray,
    next_obs: np.ndarray,
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    fn = get_task(name).termination
    out = fn(
        torch.as_tensor(obs, dtype=dtype),
        torch.as_tensor(act, dtype=dtype),
        torch.as_tensor(next_obs, dtype=dtype),
    )
    assert out.dtype == torch.bool and out.shape == (len(next_obs),)
    return out.numpy()


def _rollout(name: str, steps: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random-action transitions with resets: (obs, act, next_obs, terminated)."""
    env = make_env(name, seed=seed)
    obs, _ = env.reset(seed=seed)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
    for _ in range(steps):
        act = env.action_space.sample()
        next_obs, _, terminated, truncated, _ = env.step(act)
        rows.append((obs, act, next_obs, terminated))
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    o, a, n, t = zip(*rows, strict=True)
    return np.array(o), np.array(a), np.array(n), np.array(t, dtype=bool)


def test_registry_names() -> None:
    assert list(TASKS) == ALL
    for name, spec in TASKS.items():
        assert spec.name == name and spec.description and "\n" not in spec.description


def test_unknown_task_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match="hoper") as info:
        get_task("hoper")
    for name in ALL:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="walker2d"):
        make_env("walker")


@pytest.mark.parametrize("name", ALL)
def test_env_dims_and_action_range(name: str) -> None:
    spec = get_task(name)
    env = make_env(name, seed=1)
    assert env.observation_space.shape == (spec.obs_dim,)
    assert env.action_space.shape == (spec.act_dim,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    native = env.unwrapped.action_space
    np.testing.assert_allclose(env.action(np.ones(spec.act_dim)), native.high, rtol=1e-6)
    np.testing.assert_allclose(env.action(-np.ones(spec.act_dim)), native.low, rtol=1e-6)
    obs, _ = env.reset()
    assert obs.shape == (spec.obs_dim,)
    next_obs = env.step(env.action_space.sample())[0]
    assert next_obs.shape == (spec.obs_dim,)
    assert env.spec is not None and env.spec.max_episode_steps == 1000


def test_seed_makes_env_and_action_sampling_reproducible() -> None:
    def trace(seed: int) -> list[np.ndarray]:
        env = make_env("hopper", seed=seed, max_episode_steps=50)
        out = []
        for _ in range(5):
            act = env.action_space.sample()
            out += [act, env.step(act)[0]]
        return out

    for a, b in zip(trace(3), trace(3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(trace(3)[0], trace(4)[0])
    assert make_env("hopper", max_episode_steps=7).spec.max_episode_steps == 7


def test_thresholds_are_gymnasium_defaults() -> None:
    def default(cls: type, arg: str) -> tuple[float, float]:
        return inspect.signature(cls.__init__).parameters[arg].default

    assert envs.HOPPER_HEALTHY_STATE_RANGE == default(HopperEnv, "healthy_state_range")
    assert envs.HOPPER_HEALTHY_Z_RANGE == default(HopperEnv, "healthy_z_range")
    assert envs.HOPPER_HEALTHY_ANGLE_RANGE == default(HopperEnv, "healthy_angle_range")
    assert envs.WALKER2D_HEALTHY_Z_RANGE == default(Walker2dEnv, "healthy_z_range")
    assert envs.WALKER2D_HEALTHY_ANGLE_RANGE == default(Walker2dEnv, "healthy_angle_range")
    assert envs.ANT_HEALTHY_Z_RANGE == default(AntEnv, "healthy_z_range")
    assert envs.HUMANOID_HEALTHY_Z_RANGE == default(HumanoidEnv, "healthy_z_range")


@pytest.mark.parametrize("name", ALL)
def test_termination_matches_env_on_random_rollouts(name: str) -> None:
    obs, act, next_obs, terminated = _rollout(name, ROLLOUT_STEPS.get(name, 3000))
    assert len(terminated) >= 1000
    if name in TERMINATING:
        assert terminated.sum() > 0 and (~terminated).sum() > 0
    else:
        assert not terminated.any()
    predicted = _terminated_by_rule(name, obs, act, next_obs)
    mismatches = np.flatnonzero(predicted != terminated)
    assert mismatches.size == 0, f"{name}: rule disagrees at steps {mismatches[:10]}"
    # float32 inputs (as a learner stores them) agree too on these states, none of which lies
    # within float32 rounding of a threshold.
    np.testing.assert_array_equal(
        _terminated_by_rule(name, obs, act, next_obs, torch.float32), terminated
    )


def _edge_values(threshold: float) -> list[float]:
    below, above = np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf)
    return [
        threshold - 1e-3,
        threshold - 1e-9,
        below,
        threshold,
        above,
        threshold + 1e-9,
        threshold + 1e-3,
    ]


@pytest.mark.parametrize("name", ["hopper", "walker2d", "ant", "humanoid"])
def test_termination_at_thresholds_matches_is_healthy(name: str) -> None:
    """Put one coordinate at, or one float either side of, each threshold; ask the env's own check.

    These envs compute `terminated = not is_healthy` from qpos/qvel, so setting the state and
    reading `is_healthy` tests the boundary exactly, with no dynamics in between.
    """
    env = make_env(name, seed=0)
    sim = env.unwrapped
    qpos0, qvel0 = sim.data.qpos.copy(), sim.data.qvel.copy()
    act = np.zeros((1, get_task(name).act_dim))
    cases: list[tuple[np.ndarray, np.ndarray]] = []
    for index, threshold in EDGES[name]:
        for value in _edge_values(threshold):
            qpos = qpos0.copy()
            qpos[index] = value
            cases.append((qpos, qvel0))
    cases.append((qpos0, np.where(np.arange(len(qvel0)) == 0, np.nan, qvel0)))
    if name == "ant":
        cases.append((np.where(np.arange(len(qpos0)) == 3, np.inf, qpos0), qvel0))
    labels, predicted = [], []
    for qpos, qvel in cases:
        sim.set_state(qpos, qvel)
        obs = sim._get_obs()[None]
        labels.append(not sim.is_healthy)
        predicted.append(_terminated_by_rule(name, obs, act, obs)[0])
    labels_arr = np.array(labels)
    assert labels_arr.sum() > 0 and (~labels_arr).sum() > 0
    for index, threshold in EDGES[name]:  # every edge has a healthy and an unhealthy side
        rows = [i for i, (q, _) in enumerate(cases) if abs(q[index] - threshold) <= 1e-3]
        assert labels_arr[rows].any() and not labels_arr[rows].all(), (index, threshold)
    np.testing.assert_array_equal(np.array(predicted), labels_arr)


def test_hopper_velocity_gap_is_documented() -> None:
    """Known gap: Hopper ends on raw |qvel| >= 100, which the ±10-clipped observation hides."""
    sim = make_env("hopper", seed=0).unwrapped
    qpos, qvel = sim.data.qpos.copy(), sim.data.qvel.copy()
    act = np.zeros((1, 3))
    for speed, env_healthy in [(99.0, True), (100.0, False), (150.0, False)]:
        fast = qvel.copy()
        fast[3] = speed
        sim.set_state(qpos, fast)
        obs = sim._get_obs()[None]
        assert obs[0, 5 + 3] == 10.0
        assert sim.is_healthy == env_healthy
        assert not _terminated_by_rule("hopper", obs, act, obs)[0]  # rule always says healthy


def test_inverted_pendulum_threshold_is_strict() -> None:
    rule = get_task("inverted_pendulum").termination
    obs = torch.tensor(
        [
            [0.0, a, 0.0, 0.0]
            for a in (0.2, -0.2, np.nextafter(0.2, 1.0), -np.nextafter(0.2, 1.0), 0.0)
        ]
        + [[0.0, 0.0, np.nan, 0.0], [np.inf, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    out = rule(obs, torch.zeros(len(obs), 1), obs)
    assert out.tolist() == [False, False, True, True, False, True, True]


# Where to search the starting offset from the threshold so that one step lands on it. Ant's
# torso (a sphere of radius 0.25) can only end below z = 0.2 when started deep in the floor.
SEARCH: dict[tuple[str, int, float], tuple[float, float]] = {("ant", 2, 0.2): (-2.5, 0.3)}
# Hopper's ±100 state-range edges are left to the is_healthy test: a joint put 100 rad outside
# its limits is thrown so hard in one step that the torso angle always leaves (-0.2, 0.2).
STEP_EDGES = {name: [(i, t) for i, t in edges if abs(t) < 100] for name, edges in EDGES.items()}


def _step_from(env: gym.Env, start: tuple, delta: float, rows: list) -> tuple[float, bool]:
    """Set qpos[index] = threshold + delta, step once, log the transition; return the landing."""
    qpos0, qvel0, act, index, threshold = start
    sim = env.unwrapped
    qpos = qpos0.copy()
    qpos[index] = threshold + delta
    sim.set_state(qpos, qvel0)
    obs = sim._get_obs()
    next_obs, _, terminated, _, _ = env.step(act)
    rows.append((obs, act, next_obs, terminated))
    return sim.data.qpos[index] - threshold, terminated


@pytest.mark.parametrize("name", TERMINATING)
def test_termination_matches_env_one_step_onto_edges(name: str) -> None:
    """Bisect the start state so one real step lands within 1e-9 either side of each threshold.

    Every transition simulated during the search is compared, and for every threshold the two
    final brackets must land on opposite sides of it (one terminated, one not).
    """
    env = make_env(name, seed=0)
    sim = env.unwrapped
    rng = np.random.default_rng(0)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
    for index, threshold in STEP_EDGES[name]:
        lo0, hi0 = SEARCH.get((name, index, threshold), (-0.3, 0.3))
        scale = max(1.0, abs(threshold))
        landed: list[bool] = []
        for base in range(3):
            env.reset(seed=base)
            qpos0, qvel0 = sim.data.qpos.copy(), sim.data.qvel.copy()
            act = rng.uniform(-1, 1, size=env.action_space.shape).astype(np.float32)
            start = (qpos0, qvel0, act, index, threshold)

            lo, hi = lo0 * scale, hi0 * scale
            f_lo, f_hi = _step_from(env, start, lo, rows)[0], _step_from(env, start, hi, rows)[0]
            assert f_lo < 0 < f_hi, (index, threshold, f_lo, f_hi)
            for _ in range(45):
                mid = 0.5 * (lo + hi)
                if _step_from(env, start, mid, rows)[0] < 0:
                    lo = mid
                else:
                    hi = mid
            for delta in (lo, hi):
                off, terminated = _step_from(env, start, delta, rows)
                assert abs(off) < 1e-9 * scale
                landed.append(terminated)
        assert any(landed) and not all(landed), (index, threshold, landed)
    obs, act, next_obs, terminated = (np.array(x) for x in zip(*rows, strict=True))
    terminated = terminated.astype(bool)
    assert terminated.sum() > 0 and (~terminated).sum() > 0
    mismatches = np.flatnonzero(_terminated_by_rule(name, obs, act, next_obs) != terminated)
    assert mismatches.size == 0, f"{name}: {mismatches.size} of {len(rows)} transitions disagree"


def test_halfcheetah_never_terminates() -> None:
    rule = get_task("halfcheetah").termination
    obs = torch.full((3, 17), float("nan"))
    assert rule(obs, torch.zeros(3, 6), obs).tolist() == [False] * 3
