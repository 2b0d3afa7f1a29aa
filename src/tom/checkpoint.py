"""A run's checkpoint: everything needed to continue a `tom train` run exactly.

``checkpoint.pt`` in the run directory holds the trainer's state (networks, every optimiser,
both replay buffers, counters, the metrics and weight rows so far), the RNG states of Python,
NumPy and torch, and the environments' states: the training episode's whole MuJoCo data, its
step count and both env RNGs, so a resumed run continues the same episode the same way. It is
written atomically and read with ``torch.load(weights_only=True)``: plain containers and
tensors only, no pickled code (the MuJoCo data is MuJoCo's own byte string, read back by an
unpickler that admits only MjData).

A checkpoint is refused, never silently discarded, when it is unreadable or was written under
another resolved config or code version; ``--restart`` deletes it and starts over.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

from tom.atomic import atomic_write
from tom.config import ConfigError

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message says why and how to start over."""


# -- what a checkpoint captures beyond the trainer's tensors --------------------------------------


def rng_state(cuda: bool = True) -> dict[str, Any]:
    """The global RNGs the training loop draws from (with ``cuda``, torch's CUDA ones where
    present)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]  # nested tuples as random.getstate gives them: used as they are
    random.setstate(python if isinstance(python, tuple) and isinstance(python[1], tuple)
                    else _tuples(python))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """Python's RNG state is nested tuples; a round trip through torch.load keeps them, but a
    list anywhere (e.g. from another serialiser) must become a tuple again. (Converting is
    most of the cost of `set_rng_state`, which `tom.population` calls at every turn.)"""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit:
    wrapper = env
    while not isinstance(wrapper, gym.wrappers.TimeLimit):
        if not hasattr(wrapper, "env"):
            raise TypeError(f"{env} has no TimeLimit wrapper to checkpoint")
        wrapper = wrapper.env
    return wrapper


class _MjDataUnpickler(pickle.Unpickler):
    """MuJoCo pickles its MjData as the class plus a byte string; nothing else may load."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("mujoco._structs", "MjData"):
            return mujoco.MjData
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's "
                                     "MuJoCo state")


def env_state(env: gym.Env) -> dict[str, Any]:
    """The whole MuJoCo data (MuJoCo's own serialisation), the episode's step count, and the
    env's and action space's RNGs (the latter draws the random phase's actions).

    The whole data, not only the integration state (mj_getState): after a step, MuJoCo's
    derived quantities (body positions, contact forces) still describe the last substep's
    start, and some tasks read them before the next step (Ant's and Humanoid's forward
    reward); recomputing them at the new positions would change that reward."""
    sim = env.unwrapped
    data = torch.frombuffer(bytearray(pickle.dumps(sim.data)), dtype=torch.uint8)
    return {"mujoco": data, "elapsed_steps": _time_limit(env)._elapsed_steps,
            "np_random": sim.np_random.bit_generator.state,
            "action_space": env.action_space.np_random.bit_generator.state}


def set_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    sim = env.unwrapped
    saved = _MjDataUnpickler(io.BytesIO(state["mujoco"].numpy().tobytes())).load()
    mujoco.mj_copyData(sim.data, sim.model, saved)
    _time_limit(env)._elapsed_steps = state["elapsed_steps"]
    sim.np_random.bit_generator.state = state["np_random"]
    env.action_space.np_random.bit_generator.state = state["action_space"]


# -- the file -------------------------------------------------------------------------------------


def save(path: Path, config: dict[str, Any], code: str, trainer: dict[str, Any]) -> None:
    """Write the checkpoint atomically: a reader sees the previous one or this one, whole."""
    payload = {"format": FORMAT, "config": config, "code": code, "trainer": trainer}
    atomic_write(path, lambda fh: torch.save(payload, fh), binary=True)


def load(path: Path, config: dict[str, Any], code: str) -> dict[str, Any]:
    """The trainer state saved in ``path``, after checking it belongs to this run."""
    restart = f"pass --restart to delete {path} and start the run over"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupted: "
                              f"{type(err).__name__}: {_first_line(err)}); it is left in place: "
                              f"{restart}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a tom checkpoint of format {FORMAT}; "
                              f"{restart}")
    differences = config_differences(payload["config"], config)
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise CheckpointError(f"checkpoint {path} was written under another config ({shown}); "
                              f"resume with the same settings, or {restart}")
    if payload["code"] != code:
        raise CheckpointError(f"checkpoint {path} was written by code version {payload['code']}, "
                              f"this is {code}; resume with that version, or {restart}")
    return payload["trainer"]


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no message"


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       prefix: str = "") -> list[str]:
    """``key = saved there, current here`` for every dotted key whose values differ."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} = {a!r} there, {b!r} here")
    return out
