"""Typed, validated hyperparameters: one dataclass per component, composed into a run config.

Every field carries a one-line help text (``dataclasses.fields(cls)[i].metadata["help"]``) and,
in its type, the values it allows. The same objects are validated before any compute,
serialised into each run's ``config.json``, and (later) printed as the hyperparameter table,
so the table cannot disagree with the code.

Presets (``smoke``, ``quick``, ``paper``) are functions of the task: ``paper`` is
ALGORITHM.md §7 exactly; the others shrink budgets only. ``--set key=value`` overrides are
applied last, with dotted keys such as ``model.kind=ensemble`` or ``schedule.epochs=10``.

The classes are pydantic (v2) dataclasses in strict mode, validated when built and on every
assignment, so a config object never holds a bad value. A value given as a Python object (an
overrides dict, ``from_dict``, a constructor, an attribute) must already have the field's type:

- an integer field takes an ``int`` only: not a ``bool``, and not a ``float`` even if it is
  integral (3.0, 1e5): JSON, YAML and Python keep whole numbers as ints, so a float there is a
  computed or mistyped value, and nothing is rounded or truncated silently;
- a real-valued field takes an ``int`` or a ``float`` (stored as a float; numpy's float64 is
  one), not a ``bool`` nor another kind of number (Decimal, Fraction, numpy's float32 or
  bool_), and only finite values (no nan, no inf);
- a boolean field takes ``True`` or ``False`` only (not 1 or 0);
- a choice field takes one of its strings; a ``X | None`` field also takes ``None``.

Text (each ``--set key=value``, and any ``str`` given to `set_value` or `resolve` for a field
that is not a string) is parsed first, as before: an integer field takes any number literal
whose value is whole (``10``, ``1e3``, ``3.0``), a real field any float literal, a boolean
field true/false/yes/no/1/0 (any case), and ``none``, ``null`` or nothing means None where None
is allowed. Text that does not parse is passed on unchanged, and the type check rejects it.

Every bad value, unknown key or broken cross-key rule raises `ConfigError`, one line naming the
key, the value and what is allowed, e.g. ``config key 'schedule.epochs' = 2.5 is not allowed:
it must be an integer``; the command line turns it into exit status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import field
from typing import Annotated, Any, Literal

import pydantic.dataclasses
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ArgsKwargs, PydanticCustomError

_Preset = Literal["smoke", "quick", "paper"]
PRESETS: tuple[str, ...] = typing.get_args(_Preset)


def _int_or_float(value: Any) -> Any:
    """Strict pydantic takes anything with ``__float__`` for a float: numpy's bool_, Decimal."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    return value


# The types of the fields; pydantic's messages name the bound (">= 1", "> 0.0", ...).
_Real = Annotated[float, BeforeValidator(_int_or_float)]
_AtLeast0 = Annotated[int, Field(ge=0)]
_AtLeast1 = Annotated[int, Field(ge=1)]
_NonNegative = Annotated[_Real, Field(ge=0.0)]
_Positive = Annotated[_Real, Field(gt=0.0)]
_Fraction = Annotated[_Real, Field(gt=0.0, le=1.0)]  # (0, 1]
_Probability = Annotated[_Real, Field(ge=0.0, le=1.0)]  # [0, 1]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the key, value and rule."""


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its help text (``field.metadata["help"]``)."""
    return field(default=default, metadata={"help": help})


def _component(cls: type) -> type:
    """A strict pydantic dataclass whose constructor and assignments raise `ConfigError`."""
    cls = pydantic.dataclasses.dataclass(config=_STRICT)(cls)
    init, setattr_ = cls.__init__, cls.__setattr__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as err:
            raise _config_error(err, cls, _PREFIX.get(cls, "")) from None

    @functools.wraps(setattr_)
    def __setattr__(self: Any, name: str, value: Any) -> None:
        try:
            setattr_(self, name, value)
        except ValidationError as err:
            raise _config_error(err, cls, _PREFIX.get(cls, "")) from None

    cls.__init__, cls.__setattr__ = __init__, __setattr__
    return cls


@_component
class SACConfig:
    """Soft actor-critic (Haarnoja et al. 2018), MBPO's settings."""

    gamma: _Fraction = _f(0.99, "discount factor")
    tau: _Fraction = _f(0.005, "target network Polyak rate")
    lr: _Positive = _f(3e-4, "Adam learning rate of actor, critics and temperature")
    hidden_size: _AtLeast1 = _f(256, "width of each hidden layer")
    hidden_layers: _AtLeast1 = _f(2, "number of hidden layers")
    batch_size: _AtLeast1 = _f(256, "minibatch size of one SAC update")
    init_alpha: _Positive = _f(1.0, "initial entropy temperature")
    auto_entropy: bool = _f(True, "tune the temperature towards the target entropy")
    target_entropy: _Real | None = _f(None, "target entropy; None means -|A|")
    init: Literal["xavier", "torch"] = _f(
        "xavier", "initialisation of actor and critics: 'xavier' (the paper's code: "
        "Glorot-uniform weights, zero biases) or 'torch' (PyTorch's default, "
        "U(+-1/sqrt(fan_in)) weights and biases)")


@_component
class ModelConfig:
    """The learned dynamics model p(r, s' | s, a), fit every refit on the whole replay buffer."""

    kind: Literal["mdn", "ensemble"] = _f(
        "mdn", "'mdn': the paper code's mixture-density network; "
        "'ensemble': MBPO's probabilistic ensemble")
    hidden_layers: _AtLeast1 = _f(4, "number of hidden SiLU layers")
    hidden_size: _AtLeast1 = _f(200, "width of each hidden layer (Humanoid: 400)")
    mdn_components: _AtLeast1 = _f(10, "Gaussian components per output dimension (mdn)")
    ensemble_size: _AtLeast1 = _f(7, "members of the ensemble (ensemble)")
    elites: _AtLeast1 = _f(5, "members used for rollouts, best by holdout loss (ensemble)")
    lr: _Positive = _f(1e-3, "Adam learning rate")
    batch_size: _AtLeast1 = _f(256, "minibatch size")
    max_epochs: _AtLeast1 = _f(30, "most 'epochs' of one fit")
    steps_per_epoch: _AtLeast1 = _f(100, "minibatches per 'epoch' (so a fit's cost is bounded)")
    patience: _AtLeast1 = _f(5, "stop after this many epochs without holdout improvement")
    min_improvement: _NonNegative = _f(0.01, "relative holdout improvement that counts")
    holdout_fraction: _Fraction = _f(0.2, "fraction of the buffer held out (TOM presets: 0.1)")
    holdout_max: _AtLeast1 = _f(5000, "cap on the holdout size")
    mdn_noise: Literal["shared", "per-dim"] = _f(
        "shared", "the MDN's learned variance floor softplus(noise): 'shared' is "
        "the paper's code (one parameter, starting at softplus(0) = 0.69 in "
        "normalised units); 'per-dim' is one per target dimension starting at "
        "softplus(-6.9) = 1e-3")
    weighting: Literal["resample", "loss"] = _f(
        "resample", "how per-sample weights enter the fit: 'resample' draws "
        "minibatches with probability proportional to w; 'loss' uses "
        "sum(w*nll)/sum(w) on uniform minibatches")


@_component
class RolloutConfig:
    """Branched model rollouts that feed SAC (MBPO)."""

    every: _AtLeast1 = _f(250, "real steps between model refits and rollouts (K)")
    starts: _AtLeast1 = _f(100_000, "rollout start states per refit")
    length: _AtLeast1 = _f(1, "rollout horizon h")
    retain_epochs: _AtLeast1 = _f(1, "epochs of rollouts the model buffer holds")
    real_ratio: _Probability = _f(0.05, "fraction of real transitions in each SAC minibatch")


@_component
class ScheduleConfig:
    """Real-environment budget, SAC update budget and evaluation."""

    init_steps: _AtLeast0 = _f(5000, "initial uniformly random real steps")
    epoch_length: _AtLeast1 = _f(1000, "real steps per epoch (one evaluation each)")
    epochs: _AtLeast1 = _f(300, "epochs (Hopper: 125)")
    updates_per_step: _NonNegative = _f(5.0, "SAC updates per real step, on average")
    update_block: _AtLeast1 = _f(20, "SAC updates taken together in one block")
    eval_episodes: _AtLeast1 = _f(5, "deterministic evaluation episodes per epoch")
    max_episode_steps: _AtLeast1 = _f(1000, "episode length limit (train and evaluation)")


@_component
class TOMConfig:
    """Transition occupancy matching weights (ALGORITHM.md §4–§5)."""

    recent_window: _AtLeast1 = _f(1000, "N_pi: the most recent real transitions, sample of d^pi")
    divergence: Literal["chi2", "kl"] = _f("chi2", "f-divergence of the dual")
    reward: Literal["disc", "binary"] = _f(
        "disc", "dual reward rho: 'disc' = discriminator log-odds, 'binary' = 1 on "
        "the recent window, 0 elsewhere")
    disc_hidden: _AtLeast1 = _f(256, "discriminator width")
    disc_passes: _AtLeast1 = _f(100, "discriminator training passes over the recent window")
    disc_batch: _AtLeast1 = _f(256, "discriminator minibatch size")
    disc_lr: _Positive = _f(3e-4, "discriminator learning rate")
    grad_penalty: _NonNegative = _f(10.0, "gradient-penalty coefficient lambda")
    replay_label: _Probability = _f(0.1, "smoothed label of replay samples (paper code: 0.1)")
    dual_steps: _AtLeast1 = _f(1000, "Adam steps on the dual Q per refit (warm-started)")
    dual_batch: _AtLeast1 = _f(256, "replay and initial-state batch size of the dual")
    dual_lr: _Positive = _f(3e-4, "dual learning rate")
    dual_weight_decay: _NonNegative = _f(1e-4, "dual weight decay")
    dual_hidden: _AtLeast1 = _f(256, "dual Q width (two hidden layers)")
    w_max: _Positive = _f(10.0, "the model fit's weights are clipped at this value (rollout "
                          "starts use the unclipped weights, as the paper's code)")
    dual_init: Literal["xavier", "torch"] = _f(
        "xavier", "initialisation of the dual Q: 'xavier' (the paper's code: "
        "Glorot-uniform weights, zero biases) or 'torch' (PyTorch's default)")
    next_action_samples: _AtLeast1 = _f(
        1, "sampled a' ~ pi(s') averaged into V(s') = E Q(s', a') in "
        "the dual steps and the weights (paper's code: 1; one sample "
        "inside the convex conjugate biases the weights)")
    age_bins: _AtLeast1 = _f(10, "transition-age bins of the recorded weight profile")


@_component
class PMACConfig:
    """PMAC's policy-adapted mixture weights (Wang et al. 2022, PDML; ALGORITHM.md §6)."""

    decay: _Fraction = _f(0.9, "decay per policy version (see pmac.version): 'block': a new "
                          "version scales all older mass by decay and takes 1 - decay itself; "
                          "'refit': a transition k versions old weighs decay^k times a fresh "
                          "one; 1 = uniform ('refit' only)")
    version: Literal["block", "refit"] = _f(
        "block", "'block': a new policy version at each block of SAC updates, as "
        "the TOM paper's code (update_litm_prob); 'refit': one version per model "
        "refit round, as the PDML paper's policy snapshots")


@_component
class VaGraMConfig:
    """VaGraM's value-gradient weighted model loss (Voelcker et al. 2022; ALGORITHM.md §6)."""

    loss: Literal["paper-code", "paper-code-aligned", "vagram-paper"] = _f(
        "paper-code", "'paper-code': the TOM paper's code (its VAML(MDN)): the MDN's "
        "per-dimension NLL weighted by the signed value gradient of its four "
        "critics, targets misaligned as there; 'paper-code-aligned': the same with "
        "each gradient on its own dimension; 'vagram-paper': the VaGraM paper's "
        "squared-gradient weighted squared error of the model mean")
    clip_quantile: _Fraction = _f(0.95, "bound clipping: value gradients whose norm exceeds "
                                  "this quantile of the buffer's norms are scaled down to it; "
                                  "1 = none (paper-code: only where the norm is also >= 1e5, "
                                  "as there)")
    sac_mix: Literal["paper-code", "mbpo"] = _f(
        "paper-code", "SAC minibatches: 'paper-code' mixes model data in with "
        "probability 0.95*min(epoch/20, 1) per minibatch (else its real part "
        "alone), as the paper's code for VaGraM; 'mbpo': every minibatch mixed")


@_component
class RunConfig:
    """One training run: a task, a model-learning objective, a seed, and every component."""

    env: str = _f("inverted_pendulum", "task short name (see `tom envs`)")
    objective: str = _f("mle", "model-learning objective (see `tom envs`)")
    seed: _AtLeast0 = _f(0, "random seed")
    device: Literal["cpu", "cuda"] = _f("cpu", "torch device")
    compile: bool = _f(False, "torch.compile the training steps (tom.compile: without CUDA "
                       "graphs each SAC update, model-fit, dual and discriminator step whole; "
                       "with them the losses alone; results equal to eager up to rounding); "
                       "on in the paper preset")
    cuda_graph: bool = _f(False, "replay the SAC updates, model-fit steps and TOM's "
                          "discriminator and dual steps from CUDA graphs (tom.cuda_graph: the "
                          "same computation without hundreds of kernel launches per step); "
                          "device cuda only, where it is on unless set to false")
    cuda_graph_steps: _AtLeast1 = _f(1, "with cuda_graph: model-fit and TOM dual steps "
                                     "replayed per launch of one CUDA graph (the same steps "
                                     "in the same order; fewer launches, but on an H100 10 "
                                     "made runs slower: benchmarks/RESULTS.md)")
    stack_seeds: bool = _f(False, "seeds trained together (`tom train --seeds`, tom.population) "
                           "do their actions, SAC updates, TOM's discriminator and dual steps "
                           "and model-fit epochs as one, with a member axis "
                           "(tom.stacked_sac, tom.stacked_tom, tom.stacked_model); equal to "
                           "each seed's own up to rounding only. On 2 CPU cores 5 seeds made "
                           "0.61x one compiled run's throughput (0.94x in turns without it); "
                           "on an H200 10 seeds made 1.66x, against 2.15x in turns without it "
                           "(benchmarks/RESULTS.md). A seed alone is then a population of one")
    preset: _Preset = _f("quick", "preset the run started from")
    sac: SACConfig = field(default_factory=SACConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    tom: TOMConfig = field(default_factory=TOMConfig)
    pmac: PMACConfig = field(default_factory=PMACConfig)
    vagram: VaGraMConfig = field(default_factory=VaGraMConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The dotted prefix of each component's keys, for error messages ("model." for ModelConfig).
_PREFIX: dict[type, str] = {RunConfig: "", **{
    f.default_factory: f.name + "." for f in dataclasses.fields(RunConfig)
    if f.default_factory is not dataclasses.MISSING}}


# ---------------------------------------------------------------------------------------------
# Presets: paper is ALGORITHM.md §7; quick and smoke change budgets only.

_PAPER_TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    "hopper": {"schedule.epochs": 125},
    "humanoid": {"model.hidden_size": 400},
    "inverted_pendulum": {"schedule.epochs": 15},
}

_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    # Compiled (tom.compile): a run of hours pays its seconds of compiling back within its
    # first epochs, on a GPU (110 -> 158 real steps/s with CUDA graphs) and on a CPU (a model
    # step 9-22 % cheaper; the loop a median 5-8 % faster); benchmarks/RESULTS.md.
    "paper": {"compile": True},
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
    < overrides. On ``device='cuda'`` the default of ``cuda_graph`` is true (the same
    computation, about 6× faster there: benchmarks/RESULTS.md).
    """
    from tom.envs import TASKS
    from tom.objectives import OBJECTIVES

    _check_choice("env", env, tuple(TASKS))
    _check_choice("objective", objective, tuple(OBJECTIVES))
    _check_choice("preset", preset, PRESETS)
    cfg = RunConfig(env=env, objective=objective, seed=seed, preset=preset, device=device,
                    cuda_graph=device == "cuda")
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
    """Set a dotted key, parsing text (a ``str`` for a field that is not a string) as ``--set``
    does and checking the value; unknown keys and bad values raise `ConfigError`."""
    _set(cfg, key, value, text=True)


def _set(cfg: Any, key: str, value: Any, text: bool) -> None:
    *path, name = key.split(".")
    target = cfg
    for part in path:
        sub = getattr(target, part) if part in _field_names(target) else None
        if not dataclasses.is_dataclass(sub):
            raise ConfigError(_unknown_key(key))
        target = sub
    if name not in _field_names(target) or dataclasses.is_dataclass(getattr(target, name)):
        raise ConfigError(_unknown_key(key))
    cls = type(target)
    if text and isinstance(value, str):
        value = _parse_text(value, cls.__pydantic_fields__[name].annotation)
    try:
        cls.__pydantic_validator__.validate_assignment(target, name, value)
    except ValidationError as err:
        raise _config_error(err, cls, key[: len(key) - len(name)]) from None


def _field_names(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _unknown_key(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, all_keys(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else " See `tom envs --keys`."
    return f"unknown config key {key!r}.{hint}"


def _parse_text(value: str, annotation: Any) -> Any:
    """Text as the field's type where it reads as one; else the text, for the check to reject."""
    text = value.strip()
    args = typing.get_args(annotation)
    if type(None) in args:  # X | None
        if text.lower() in ("none", "null", ""):
            return None
        (annotation,) = (a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Annotated:
        annotation = annotation.__origin__
    if annotation is bool:
        return {"true": True, "yes": True, "1": True,
                "false": False, "no": False, "0": False}.get(text.lower(), text)
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return text
        # 1e3 and 3.0 name whole numbers; 2.5, nan and inf go on as floats and are rejected.
        return int(number) if number.is_integer() else number
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            return text
    return text


# How each of pydantic's error types reads as a rule ("it must be ...").
_KINDS = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
          "float_type": "a number", "float_parsing": "a number",
          "finite_number": "a finite number", "bool_type": "true or false",
          "bool_parsing": "true or false", "string_type": "a string"}
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _config_error(err: ValidationError, cls: type, prefix: str) -> ConfigError:
    """pydantic's first error as one line: the dotted key, the value given, and the rule."""
    errors = err.errors(include_url=False)
    e = errors[0]
    name = ".".join(str(part) for part in e["loc"])
    key = prefix + name
    if e["type"] in ("unexpected_keyword_argument", "no_such_attribute"):
        message = _unknown_key(key)
    else:
        message = f"config key {key!r} = {e.get('input')!r} is not allowed: {_rule(e, cls, name)}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return ConfigError(message)


def _rule(e: Any, cls: type, name: str) -> str:
    fields = getattr(cls, "__pydantic_fields__", {})
    annotation = fields[name].annotation if name in fields else None
    args = typing.get_args(annotation)
    if e["type"] == "literal_error":
        if typing.get_origin(annotation) is Literal:
            return f"choose one of {', '.join(map(str, args))}"
        return f"choose one of {e['ctx']['expected']}"
    if e["type"] in _BOUNDS:
        op, bound = _BOUNDS[e["type"]]
        return f"it must be {op} {e['ctx'][bound]}"
    if e["type"] in _KINDS:
        nullable = type(None) in args
        return f"it must be {_KINDS[e['type']]}" + (" or none" if nullable else "")
    if e["type"] == "dataclass_exact_type":
        return f"it must be a {e['ctx']['class_name']}"
    return e["msg"]


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every field against its type and constraint, and the cross-key rules; raise
    ConfigError naming key, value, rule."""
    cls = type(cfg)
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    try:  # a throwaway instance: the checks of the constructor, nothing changed in cfg
        cls.__pydantic_validator__.validate_python(ArgsKwargs((), values),
                                                   self_instance=object.__new__(cls))
    except ValidationError as err:
        raise _config_error(err, cls, prefix) from None
    for name, value in values.items():
        if dataclasses.is_dataclass(value):
            validate(value, prefix + name + ".")
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
    if cfg.cuda_graph and cfg.device != "cuda":
        raise ConfigError(f"config key 'cuda_graph' = true is not allowed with device = "
                          f"{cfg.device!r}: CUDA graphs need device cuda (or set cuda_graph=false)")
    if cfg.cuda_graph_steps > 1 and not cfg.cuda_graph:
        raise ConfigError(f"config key 'cuda_graph_steps' = {cfg.cuda_graph_steps} is not "
                          "allowed with cuda_graph = false: it must be 1 (steps per CUDA graph "
                          "launch need CUDA graphs)")
    if cfg.rollout.every > s.epoch_length:
        raise ConfigError(f"config key 'rollout.every' = {cfg.rollout.every} is not allowed: "
                          f"it must be <= schedule.epoch_length = {s.epoch_length}")


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"config key {key!r} = {value!r} is not allowed: "
                          f"choose one of {', '.join(map(str, choices))}")


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict`` output (e.g. a run's config.json).

    The values must have the fields' types, as ``to_dict`` writes them: text is not parsed
    here (a "3" for an integer field is an error), unlike `set_value`."""
    cfg = RunConfig()
    for key, value in data.items():
        sub = getattr(cfg, key) if key in _field_names(cfg) else None
        if dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} = {value!r} is not allowed: it must be "
                                  f"a mapping of the {key}.* keys")
            for name, v in value.items():
                _set(cfg, f"{key}.{name}", v, text=False)
        else:  # an unknown key is an error too (with the nearest known one), not ignored
            _set(cfg, key, value, text=False)
    validate(cfg)
    return cfg
