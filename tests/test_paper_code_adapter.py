"""The adapter under which benchmarks/paper_code.py runs the paper's code: gym's old API over
Gymnasium v5 (what the paper's loop relies on), and CUDA devices meaning the CPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_code.py"


def _adapter():
    spec = importlib.util.spec_from_file_location("paper_code", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_old_gym_api_over_gymnasium_ends_episodes_at_termination_and_time_limit():
    adapter = _adapter()
    env = adapter._OldGymEnv(gymnasium.make("Hopper-v5", max_episode_steps=30))
    assert env._max_episode_steps == 30
    env.seed(3)
    first = env.reset()
    assert isinstance(first, np.ndarray) and first.shape == (11,)
    reference = gymnasium.make("Hopper-v5", max_episode_steps=30)
    assert np.array_equal(first, reference.reset(seed=3)[0])  # seed() seeds the next reset
    steps, done = 0, False
    while not done:
        obs, reward, done, info = env.step(np.zeros(3))
        ref = reference.step(np.zeros(3))
        steps += 1
        assert np.array_equal(obs, ref[0]) and reward == ref[1] and isinstance(info, dict)
        assert done == (ref[2] or ref[3])
    assert steps <= 30
    assert not np.array_equal(env.reset(), first)  # later resets are not reseeded


def test_the_paper_codes_task_ids_map_to_v5_and_others_are_refused():
    adapter = _adapter()
    adapter._install_gym_module()
    gym = sys.modules["gym"]
    try:
        assert gym.make("Walker2d-v2").observation_space.shape == (17,)
        with pytest.raises(ValueError, match="maps only"):
            gym.make("Ant-v2")
    finally:
        del sys.modules["gym"]


def test_cuda_devices_mean_the_cpu_under_the_adapter():
    """In a child process (the redirection patches torch for the whole process)."""
    code = (
        "import runpy, torch, sys\n"
        f"adapter = runpy.run_path({str(SCRIPT)!r})\n"
        "adapter['_redirect_cuda_to_cpu']()\n"
        "x = torch.zeros(2, device='cuda')\n"
        "net = torch.nn.Linear(2, 2).to(torch.device('cuda'))\n"
        "y = net(torch.ones(2).to('cuda:0')).cuda()\n"
        "a = torch.tensor([1.0], device=torch.device('cuda:0'), requires_grad=True)\n"
        "assert {x.device.type, y.device.type, a.device.type} == {'cpu'}\n"
        "assert torch.ones(1).to(torch.float64).dtype == torch.float64\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_paper_code_keeps_cuda_only_when_asked_and_present(monkeypatch):
    """`--device cuda` only: on a GPU machine the default still runs the paper's code on the
    CPU, where ours runs."""
    import torch

    adapter = _adapter()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(adapter.DEVICE_VARIABLE, raising=False)
    assert not adapter._on_cuda()
    monkeypatch.setenv(adapter.DEVICE_VARIABLE, "cpu")
    assert not adapter._on_cuda()
    monkeypatch.setenv(adapter.DEVICE_VARIABLE, "cuda")
    assert adapter._on_cuda()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not adapter._on_cuda()
