"""Typed, validated hyperparameters: one dataclass per component, composed into a run config.

Every field carries a one-line help text and, where it matters, the values it allows. The same
objects are validated before any compute, serialised into each run's ``config.json``, and
(later) printed as the hyperparameter table, so the table cannot disagree with the code.

Presets (``smoke``, ``quick``, ``paper``) are functions of the task: ``paper`` is
ALGORITHM.md §7 exactly; the others shrink budgets only. ``--set key=value`` overrides are
applied last, with dotted keys such as ``model.kind=ensemble`` or ``schedule.epochs=10``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

PRESETS = ("smoke", "quick", "paper")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the key, value and rule."""


def _f(default: Any, help: str, *, choices: tuple | None = None, low: float | None = None,
       high: float | None = None, low_open: bool = False) -> Any:
    """A dataclass field with help text and the constraint `validate` checks."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open}
    return field(default=default, metadata=meta)


@dataclass
class SACConfig:
    """Soft actor-critic (Haarnoja et al. 2018), MBPO's settings."""

    gamma: float = _f(0.99, "discount factor", low=0.0, high=1.0, low_open=True)
    tau: float = _f(0.005, "target network Polyak rate", low=0.0, high=1.0, low_open=True)
    lr: float = _f(3e-4, "Adam learning rate of actor, critics and temperature", low=0.0,
                   low_open=True)
    hidden_size: int = _f(256, "width of each hidden layer", low=1)
    hidden_layers: int = _f(2, "number of hidden layers", low=1)
    batch_size: int = _f(256, "minibatch size of one SAC update", low=1)
    init_alpha: float = _f(1.0, "initial entropy temperature", low=0.0, low_open=True)
    auto_entropy: bool = _f(True, "tune the temperature towards the target entropy")
    target_entropy: float | None = _f(None, "target entropy; None means -|A|")
    init: str = _f("xavier", "initialisation of actor and critics: 'xavier' (the paper's code: "
                   "Glorot-uniform weights, zero biases) or 'torch' (PyTorch's default, "
                   "U(+-1/sqrt(fan_in)) weights and biases)", choices=("xavier", "torch"))


@dataclass
class ModelConfig:
    """The learned dynamics model p(r, s' | s, a), fit every refit on the whole replay buffer."""

    kind: str = _f("mdn", "'mdn': the paper code's mixture-density network; "
                   "'ensemble': MBPO's probabilistic ensemble", choices=("mdn", "ensemble"))
    hidden_layers: int = _f(4, "number of hidden SiLU layers", low=1)
    hidden_size: int = _f(200, "width of each hidden layer (Humanoid: 400)", low=1)
    mdn_components: int = _f(10, "Gaussian components per output dimension (mdn)", low=1)
    ensemble_size: int = _f(7, "members of the ensemble (ensemble)", low=1)
    elites: int = _f(5, "members used for rollouts, best by holdout loss (ensemble)", low=1)
    lr: float = _f(1e-3, "Adam learning rate", low=0.0, low_open=True)
    batch_size: int = _f(256, "minibatch size", low=1)
    max_epochs: int = _f(30, "most 'epochs' of one fit", low=1)
    steps_per_epoch: int = _f(100, "minibatches per 'epoch' (so a fit's cost is bounded)", low=1)
    patience: int = _f(5, "stop after this many epochs without holdout improvement", low=1)
    min_improvement: float = _f(0.01, "relative holdout improvement that counts", low=0.0)
    holdout_fraction: float = _f(0.2, "fraction of the buffer held out (TOM presets: 0.1)",
                                 low=0.0, high=1.0, low_open=True)
    holdout_max: int = _f(5000, "cap on the holdout size", low=1)
    mdn_noise: str = _f("shared", "the MDN's learned variance floor softplus(noise): 'shared' is "
                        "the paper's code (one parameter, starting at softplus(0) = 0.69 in "
                        "normalised units); 'per-dim' is one per target dimension starting at "
                        "softplus(-6.9) = 1e-3", choices=("shared", "per-dim"))
    weighting: str = _f("resample", "how per-sample weights enter the fit: 'resample' draws "
                        "minibatches with probability proportional to w; 'loss' uses "
                        "sum(w*nll)/sum(w) on uniform minibatches", choices=("resample", "loss"))


@dataclass
class RolloutConfig:
    """Branched model rollouts that feed SAC (MBPO)."""

    every: int = _f(250, "real steps between model refits and rollouts (K)", low=1)
    starts: int = _f(100_000, "rollout start states per refit", low=1)
    length: int = _f(1, "rollout horizon h", low=1)
    retain_epochs: int = _f(1, "epochs of rollouts the model buffer holds", low=1)
    real_ratio: float = _f(0.05, "fraction of real transitions in each SAC minibatch",
                           low=0.0, high=1.0)


@dataclass
class ScheduleConfig:
    """Real-environment budget, SAC update budget and evaluation."""

    init_steps: int = _f(5000, "initial uniformly random real steps", low=0)
    epoch_length: int = _f(1000, "real steps per epoch (one evaluation each)", low=1)
    epochs: int = _f(300, "epochs (Hopper: 125)", low=1)
    updates_per_step: float = _f(5.0, "SAC updates per real step, on average", low=0.0)
    update_block: int = _f(20, "SAC updates taken together in one block", low=1)
    eval_episodes: int = _f(5, "deterministic evaluation episodes per epoch", low=1)
    max_episode_steps: int = _f(1000, "episode length limit (train and evaluation)", low=1)


@dataclass
class TOMConfig:
    """Transition occupancy matching weights (ALGORITHM.md §4–§5)."""

    recent_window: int = _f(1000, "N_pi: the most recent real transitions, sample of d^pi", low=1)
    divergence: str = _f("chi2", "f-divergence of the dual", choices=("chi2", "kl"))
    reward: str = _f("disc", "dual reward rho: 'disc' = discriminator log-odds, 'binary' = 1 on "
                     "the recent window, 0 elsewhere", choices=("disc", "binary"))
    disc_hidden: int = _f(256, "discriminator width", low=1)
    disc_passes: int = _f(100, "discriminator training passes over the recent window", low=1)
    disc_batch: int = _f(256, "discriminator minibatch size", low=1)
    disc_lr: float = _f(3e-4, "discriminator learning rate", low=0.0, low_open=True)
    grad_penalty: float = _f(10.0, "gradient-penalty coefficient lambda", low=0.0)
    replay_label: float = _f(0.1, "smoothed label of replay samples (paper code: 0.1)",
                             low=0.0, high=1.0)
    dual_steps: int = _f(1000, "Adam steps on the dual Q per refit (warm-started)", low=1)
    dual_batch: int = _f(256, "replay and initial-state batch size of the dual", low=1)
    dual_lr: float = _f(3e-4, "dual learning rate", low=0.0, low_open=True)
    dual_weight_decay: float = _f(1e-4, "dual weight decay", low=0.0)
    dual_hidden: int = _f(256, "dual Q width (two hidden layers)", low=1)
    w_max: float = _f(10.0, "the model fit's weights are clipped at this value (rollout starts "
                      "use the unclipped weights, as the paper's code)", low=0.0, low_open=True)
    dual_init: str = _f("xavier", "initialisation of the dual Q: 'xavier' (the paper's code: "
                        "Glorot-uniform weights, zero biases) or 'torch' (PyTorch's default)",
                        choices=("xavier", "torch"))
    next_action_samples: int = _f(1, "sampled a' ~ pi(s') averaged into V(s') = E Q(s', a') in "
                                  "the dual steps and the weights (paper's code: 1; one sample "
                                  "inside the convex conjugate biases the weights)", low=1)
    age_bins: int = _f(10, "transition-age bins of the recorded weight profile", low=1)


@dataclass
class PMACConfig:
    """PMAC's policy-adapted mixture weights (Wang et al. 2022, PDML; ALGORITHM.md §6)."""

    decay: float = _f(0.9, "decay per policy version (see pmac.version): 'block': a new "
                      "version scales all older mass by decay and takes 1 - decay itself; "
                      "'refit': a transition k versions old weighs decay^k times a fresh one; "
                      "1 = uniform ('refit' only)", low=0.0, high=1.0, low_open=True)
    version: str = _f("block", "'block': a new policy version at each block of SAC updates, as "
                      "the TOM paper's code (update_litm_prob); 'refit': one version per model "
                      "refit round, as the PDML paper's policy snapshots",
                      choices=("block", "refit"))


@dataclass
class VaGraMConfig:
    """VaGraM's value-gradient weighted model loss (Voelcker et al. 2022; ALGORITHM.md §6)."""

    loss: str = _f("paper-code", "'paper-code': the TOM paper's code (its VAML(MDN)): the MDN's "
                   "per-dimension NLL weighted by the signed value gradient of its four "
                   "critics, targets misaligned as there; 'paper-code-aligned': the same with "
                   "each gradient on its own dimension; 'vagram-paper': the VaGraM paper's "
                   "squared-gradient weighted squared error of the model mean",
                   choices=("paper-code", "paper-code-aligned", "vagram-paper"))
    clip_quantile: float = _f(0.95, "bound clipping: value gradients whose norm exceeds this "
                              "quantile of the buffer's norms are scaled down to it; 1 = none "
                              "(paper-code: only where the norm is also >= 1e5, as there)",
                              low=0.0, high=1.0, low_open=True)
    sac_mix: str = _f("paper-code", "SAC minibatches: 'paper-code' mixes model data in with "
                      "probability 0.95*min(epoch/20, 1) per minibatch (else its real part "
                      "alone), as the paper's code for VaGraM; 'mbpo': every minibatch mixed",
                      choices=("paper-code", "mbpo"))


@dataclass
class RunConfig:
    """One training run: a task, a model-learning objective, a seed, and every component."""

    env: str = _f("inverted_pendulum", "task short name (see `tom envs`)")
    objective: str = _f("mle", "model-learning objective (see `tom envs`)")
    seed: int = _f(0, "random seed", low=0)
    device: str = _f("cpu", "torch device", choices=("cpu", "cuda"))
    preset: str = _f("quick", "preset the run started from", choices=PRESETS)
    sac: SACConfig = field(default_factory=SACConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    tom: TOMConfig = field(default_factory=TOMConfig)
    pmac: PMACConfig = field(default_factory=PMACConfig)
    vagram: VaGraMConfig = field(default_factory=VaGraMConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Presets: paper is ALGORITHM.md §7; quick and smoke change budgets only.

_PAPER_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    "hopper": {"schedule.epochs": 125},
    "humanoid": {"model.hidden_size": 400},
    "inverted_pendulum": {"schedule.epochs": 15},
}

_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "paper": {},
    # A laptop run (the pipeline's default, `all` in under an hour on 2 CPU cores): MBPO's
    # loop with smaller networks, a tenth of the rollouts, 2 SAC updates per real step, a
    # refit every 500 steps, short fits and short TOM refits. Per-task budgets below.
    "quick": {
        "schedule.init_steps": 1000,
        "schedule.epochs": 8,
        "schedule.updates_per_step": 2.0,
        "schedule.eval_episodes": 3,
        "sac.hidden_size": 128,
        "rollout.every": 500,
        "rollout.starts": 10_000,
        "model.hidden_layers": 3,
        "model.hidden_size": 128,
        "model.max_epochs": 10,
        "model.steps_per_epoch": 50,
        "tom.disc_passes": 10,
        "tom.dual_steps": 200,
    },
    # Seconds: every code path runs once or twice, nothing learns.
    "smoke": {
        "schedule.init_steps": 200,
        "schedule.epoch_length": 200,
        "schedule.epochs": 2,
        "schedule.updates_per_step": 0.5,
        "schedule.update_block": 10,
        "schedule.eval_episodes": 1,
        "schedule.max_episode_steps": 100,
        "rollout.every": 100,
        "rollout.starts": 256,
        "rollout.length": 2,
        "sac.hidden_size": 32,
        "sac.batch_size": 64,
        "model.hidden_size": 32,
        "model.hidden_layers": 2,
        "model.mdn_components": 3,
        "model.ensemble_size": 3,
        "model.elites": 2,
        "model.max_epochs": 2,
        "model.steps_per_epoch": 5,
        "model.batch_size": 64,
        "tom.recent_window": 100,
        "tom.disc_hidden": 32,
        "tom.disc_passes": 2,
        "tom.dual_steps": 10,
        "tom.dual_hidden": 32,
        "tom.dual_batch": 64,
        "tom.disc_batch": 64,
    },
}


# Task budgets of the quick preset, applied after its common settings. With MBPO's 5 SAC
# updates per real step inverted pendulum is solved around 4 000-5 000 steps (at 2 updates it
# was not solved in 10 000); 6 epochs leave room for slower seeds, and a 64-wide SAC keeps
# those updates cheap.
_QUICK_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    "inverted_pendulum": {"schedule.epochs": 6, "schedule.updates_per_step": 5.0,
                          "sac.hidden_size": 64, "rollout.every": 250},
}
_PRESET_TASK_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {"quick": _QUICK_TASK_OVERRIDES}


def _objective_overrides(objective: str) -> dict[str, Any]:
    """Objective-specific defaults of the paper's code (TOM holds out 10 %, MLE 20 %)."""
    from tom.objectives import OBJECTIVES

    return dict(OBJECTIVES[objective].config_overrides)


def resolve(env: str, objective: str, seed: int = 0, preset: str = "quick",
            overrides: dict[str, Any] | list[str] | None = None, device: str = "cpu") -> RunConfig:
    """Build and validate the run config.

    Layers, later wins: defaults < task (paper) < objective < preset < preset's task budget
    < overrides.
    """
    from tom.envs import TASKS
    from tom.objectives import OBJECTIVES

    _check_choice("env", env, tuple(TASKS))
    _check_choice("objective", objective, tuple(OBJECTIVES))
    _check_choice("preset", preset, PRESETS)
    cfg = RunConfig(env=env, objective=objective, seed=seed, preset=preset, device=device)
    layers = [_PAPER_TASK_OVERRIDES.get(env, {}), _objective_overrides(objective),
              _PRESET_OVERRIDES[preset], _PRESET_TASK_OVERRIDES.get(preset, {}).get(env, {})]
    if isinstance(overrides, list):
        overrides = parse_assignments(overrides)
    layers.append(overrides or {})
    for layer in layers:
        for key, value in layer.items():
            set_value(cfg, key, value)
    validate(cfg)
    return cfg


def parse_assignments(items: list[str]) -> dict[str, str]:
    """Parse ``key=value`` strings (values stay strings; `set_value` converts them)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value "
                              f"(e.g. model.kind=ensemble)")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def all_keys(cfg: Any | None = None, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. ``['env', ..., 'sac.gamma', ...]``."""
    cfg = cfg if cfg is not None else RunConfig()
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def set_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Set a dotted key, converting strings to the field's type; unknown keys are errors."""
    *path, name = key.split(".")
    target: Any = cfg
    for part in path:
        sub = getattr(target, part, None)
        if not dataclasses.is_dataclass(sub):
            raise ConfigError(_unknown_key(key))
        target = sub
    fields = {f.name: f for f in dataclasses.fields(target)}
    if name not in fields or dataclasses.is_dataclass(getattr(target, name)):
        raise ConfigError(_unknown_key(key))
    setattr(target, name, _convert(key, value, getattr(type(target)(), name), fields[name]))


def _unknown_key(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, all_keys(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " See `tom envs --keys`."
    return f"unknown config key {key!r}.{hint}"


def _convert(key: str, value: Any, default: Any, f: dataclasses.Field) -> Any:
    type_name = str(f.type)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if "None" in type_name and text.lower() in ("none", "null", ""):
        return None
    try:
        if "bool" in type_name:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if "int" in type_name:
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if "float" in type_name:
            return float(text)
    except ValueError:
        kind = type_name.replace(" | None", "")
        raise ConfigError(f"config key {key!r} = {value!r} is not a valid {kind}") from None
    return text


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every field against its constraint; raise ConfigError naming key, value, rule."""
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        meta = f.metadata
        if meta.get("choices") is not None:
            _check_choice(key, value, meta["choices"])
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config key {key!r} = {value!r} must be a finite number")
            low, high = meta.get("low"), meta.get("high")
            if low is not None and (value < low or (meta.get("low_open") and value == low)):
                rel = ">" if meta.get("low_open") else ">="
                raise ConfigError(f"config key {key!r} = {value!r} is not allowed: "
                                  f"it must be {rel} {low}")
            if high is not None and value > high:
                raise ConfigError(f"config key {key!r} = {value!r} is not allowed: "
                                  f"it must be <= {high}")
    if isinstance(cfg, RunConfig):
        _validate_cross(cfg)


def _validate_cross(cfg: RunConfig) -> None:
    """Constraints that involve several keys."""
    m, s = cfg.model, cfg.schedule
    if m.elites > m.ensemble_size:
        raise ConfigError(f"config key 'model.elites' = {m.elites} is not allowed: it must be "
                          f"<= model.ensemble_size = {m.ensemble_size}")
    if cfg.objective == "pmac" and cfg.pmac.version == "block" and cfg.pmac.decay >= 1.0:
        raise ConfigError(f"config key 'pmac.decay' = {cfg.pmac.decay} is not allowed with "
                          "pmac.version = 'block' (a new version would get no mass): it must be "
                          "< 1, or use pmac.version=refit for uniform weights")
    if (cfg.objective == "vagram" and cfg.vagram.sac_mix == "paper-code"
            and int(cfg.sac.batch_size * cfg.rollout.real_ratio) < 1):
        raise ConfigError(f"config key 'rollout.real_ratio' = {cfg.rollout.real_ratio} is not "
                          "allowed with vagram.sac_mix = 'paper-code' (its real-only minibatches "
                          "would be empty): it must leave at least one real transition per "
                          "minibatch, or use vagram.sac_mix=mbpo")
    if cfg.rollout.every > s.epoch_length:
        raise ConfigError(f"config key 'rollout.every' = {cfg.rollout.every} is not allowed: "
                          f"it must be <= schedule.epoch_length = {s.epoch_length}")


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"config key {key!r} = {value!r} is not allowed: "
                          f"choose one of {', '.join(map(str, choices))}")


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict`` output (e.g. a run's config.json)."""
    cfg = RunConfig()
    for key, value in data.items():
        sub = getattr(cfg, key, None)
        if dataclasses.is_dataclass(sub):
            for name, v in value.items():
                set_value(cfg, f"{key}.{name}", v)
        elif key in {f.name for f in dataclasses.fields(cfg)}:
            set_value(cfg, key, value)
    validate(cfg)
    return cfg
