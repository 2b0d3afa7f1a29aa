"""Configuration: presets, per-task and per-objective defaults, overrides, validation messages."""

import dataclasses
import json
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tom.cli import main
from tom.config import (
    ConfigError,
    ModelConfig,
    RunConfig,
    ScheduleConfig,
    all_keys,
    from_dict,
    resolve,
    set_value,
    validate,
)


def test_paper_preset_is_algorithm_section_7():
    cfg = resolve("walker2d", "mle", preset="paper")
    assert (cfg.sac.gamma, cfg.sac.tau, cfg.sac.lr, cfg.sac.batch_size) == (0.99, 0.005, 3e-4, 256)
    assert (cfg.model.kind, cfg.model.hidden_layers, cfg.model.hidden_size) == ("mdn", 4, 200)
    assert cfg.model.mdn_components == 10 and cfg.model.holdout_fraction == 0.2
    assert (cfg.rollout.every, cfg.rollout.starts, cfg.rollout.length) == (250, 100_000, 1)
    assert cfg.rollout.real_ratio == 0.05
    assert (cfg.schedule.init_steps, cfg.schedule.epochs, cfg.schedule.epoch_length) == (
        5000, 300, 1000)
    assert (cfg.schedule.updates_per_step, cfg.schedule.update_block) == (5.0, 20)
    t = cfg.tom
    assert (t.recent_window, t.disc_passes, t.dual_steps, t.w_max, t.divergence) == (
        1000, 100, 1000, 10.0, "chi2")
    assert (t.grad_penalty, t.replay_label, t.dual_lr, t.dual_weight_decay) == (
        10.0, 0.1, 3e-4, 1e-4)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_paper_preset_compiles_and_a_setting_turns_it_off(device):
    """Paper runs last hours and compile once (tom.compile); laptop presets stay eager."""
    assert resolve("hopper", "tom", preset="paper", device=device).compile
    assert not resolve("hopper", "tom", preset="quick", device=device).compile
    assert not resolve("hopper", "tom", preset="smoke", device=device).compile
    assert not resolve("hopper", "tom", preset="paper", device=device,
                       overrides=["compile=false"]).compile


def test_task_and_objective_overrides():
    assert resolve("hopper", "mle", preset="paper").schedule.epochs == 125
    assert resolve("humanoid", "mle", preset="paper").model.hidden_size == 400
    assert resolve("hopper", "tom", preset="paper").model.holdout_fraction == 0.1
    assert resolve("hopper", "tom-nodisc", preset="paper").tom.reward == "binary"
    assert resolve("hopper", "tom-kl", preset="paper").tom.divergence == "kl"
    assert resolve("hopper", "tom", preset="paper").tom.reward == "disc"


def test_quick_preset_task_budgets_sit_between_preset_and_command_line():
    pendulum = resolve("inverted_pendulum", "mle", preset="quick")
    hopper = resolve("hopper", "mle", preset="quick")
    assert (pendulum.schedule.epochs, pendulum.schedule.updates_per_step) == (6, 5.0)
    assert (hopper.schedule.epochs, hopper.schedule.updates_per_step) == (8, 2.0)
    assert resolve("inverted_pendulum", "mle", preset="quick",
                   overrides=["schedule.epochs=3"]).schedule.epochs == 3
    assert resolve("inverted_pendulum", "mle", preset="paper").schedule.epochs == 15


def test_overrides_from_strings_are_typed():
    cfg = resolve("hopper", "tom", preset="smoke",
                  overrides=["model.kind=ensemble", "schedule.epochs=3", "sac.lr=1e-3",
                             "sac.auto_entropy=false", "sac.target_entropy=none"])
    assert cfg.model.kind == "ensemble" and cfg.schedule.epochs == 3
    assert cfg.sac.lr == 1e-3 and cfg.sac.auto_entropy is False and cfg.sac.target_entropy is None


@pytest.mark.parametrize("override, message", [
    (["model.kind=gp"], "'model.kind' = 'gp' is not allowed: choose one of mdn, ensemble"),
    (["schedule.epochs=0"], "'schedule.epochs' = 0 is not allowed: it must be >= 1"),
    (["schedule.epochs=2.5"], "'schedule.epochs' = 2.5 is not allowed: it must be an integer"),
    (["sac.gamma=1.5"], "'sac.gamma' = 1.5 is not allowed: it must be <= 1.0"),
    (["sac.lr=0"], "'sac.lr' = 0.0 is not allowed: it must be > 0.0"),
    (["tom.w_max=nan"], "'tom.w_max' = nan is not allowed: it must be a finite number"),
    (["model.elites=9"], "'model.elites' = 9 is not allowed: it must be <= model.ensemble_size"),
    (["sac.gama=0.9"], "unknown config key 'sac.gama'. Did you mean sac.gamma"),
    (["epochs"], "override 'epochs' is not of the form key=value"),
])
def test_bad_values_name_key_value_and_rule(override, message):
    with pytest.raises(ConfigError) as err:
        resolve("hopper", "mle", preset="smoke", overrides=override)
    assert message in str(err.value)


def test_bad_env_objective_preset_are_named():
    with pytest.raises(ConfigError, match="'env' = 'hoper' is not allowed: choose one of"):
        resolve("hoper", "mle")
    with pytest.raises(ConfigError, match="'objective' = 'bogus'.*mle, tom"):
        resolve("hopper", "bogus")
    with pytest.raises(ConfigError, match="'preset' = 'huge'"):
        resolve("hopper", "mle", preset="huge")


def test_round_trip_through_json():
    cfg = resolve("hopper", "tom-kl", seed=3, preset="quick", overrides=["model.kind=ensemble"])
    again = from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_every_key_is_settable():
    keys = all_keys()
    assert "model.weighting" in keys and "tom.replay_label" in keys and "seed" in keys
    assert len(keys) == len(set(keys))
    assert isinstance(RunConfig(), RunConfig)


# -- types: values given as Python objects are checked as strictly as text --------------------

def _error(overrides) -> str:
    with pytest.raises(ConfigError) as err:
        resolve("hopper", "mle", preset="smoke", overrides=overrides)
    return str(err.value)


@pytest.mark.parametrize("key, value, shown, rule", [
    ("schedule.epochs", 2.5, "2.5", "it must be an integer"),
    ("schedule.epochs", 3.0, "3.0", "it must be an integer"),  # no integral floats from Python
    ("schedule.epochs", True, "True", "it must be an integer"),
    ("schedule.epochs", [1, 2], "[1, 2]", "it must be an integer"),
    ("schedule.epochs", "abc", "'abc'", "it must be an integer"),
    ("schedule.epochs", "2.5", "2.5", "it must be an integer"),  # text, parsed as --set
    ("schedule.epochs", None, "None", "it must be an integer"),
    ("schedule.epochs", -1, "-1", "it must be >= 1"),
    ("schedule.epochs", 0, "0", "it must be >= 1"),
    ("schedule.init_steps", -1, "-1", "it must be >= 0"),
    ("sac.gamma", "nan", "nan", "it must be a finite number"),
    ("sac.gamma", math.inf, "inf", "it must be a finite number"),
    ("sac.gamma", 0, "0", "it must be > 0.0"),  # the low end is open
    ("sac.gamma", 1.5, "1.5", "it must be <= 1.0"),
    ("sac.lr", True, "True", "it must be a number"),
    ("sac.lr", "fast", "'fast'", "it must be a number"),
    ("sac.lr", np.bool_(True), "np.True_", "it must be a number"),
    ("sac.lr", Decimal("0.1"), "Decimal('0.1')", "it must be a number"),
    ("sac.lr", Fraction(1, 3), "Fraction(1, 3)", "it must be a number"),
    ("schedule.epochs", np.int64(3), "np.int64(3)", "it must be an integer"),
    ("tom.w_max", math.inf, "inf", "it must be a finite number"),  # no upper bound to catch it
    ("sac.target_entropy", math.nan, "nan", "it must be a finite number or none"),
    ("sac.target_entropy", "low", "'low'", "it must be a number or none"),
    ("model.kind", "gp", "'gp'", "choose one of mdn, ensemble"),
    ("model.kind", 3, "3", "choose one of mdn, ensemble"),
    ("sac.init", None, "None", "choose one of xavier, torch"),
    ("sac.auto_entropy", "maybe", "'maybe'", "it must be true or false"),
    ("sac.auto_entropy", 1, "1", "it must be true or false"),
    ("sac.auto_entropy", 0.0, "0.0", "it must be true or false"),
    ("env", 3, "3", "it must be a string"),
])
def test_bad_python_values_give_one_line_naming_key_value_and_rule(key, value, shown, rule):
    assert _error({key: value}) == f"config key {key!r} = {shown} is not allowed: {rule}"


@pytest.mark.parametrize("key, hint", [
    ("schedule.epoch", "Did you mean schedule.epochs"),
    ("foo.bar", "See `tom envs --keys`."),
    ("sac", "Did you mean"),  # a section, not a key
    ("sac.gamma.x", "Did you mean sac.gamma"),
    ("sac.__class__", ""),
])
def test_unknown_keys_are_named_with_a_suggestion(key, hint):
    message = _error({key: 1})
    assert message.startswith(f"unknown config key {key!r}.") and hint in message
    assert "\n" not in message


def test_text_is_parsed_as_before():
    cfg = resolve("hopper", "mle", preset="smoke",
                  overrides=["schedule.epochs=1e3", "rollout.starts=3.0", "sac.auto_entropy=NO",
                             "sac.target_entropy=-3", "model.hidden_size= 64 ", "tom.w_max=5"])
    assert (cfg.schedule.epochs, cfg.rollout.starts, cfg.model.hidden_size) == (1000, 3, 64)
    assert cfg.sac.auto_entropy is False and cfg.sac.target_entropy == -3.0
    assert type(cfg.tom.w_max) is float and cfg.tom.w_max == 5.0
    for text in ("null", "none", ""):
        assert resolve("hopper", "mle", overrides=[f"sac.target_entropy={text}"]).sac \
            .target_entropy is None
    for text, value in [("true", True), ("Yes", True), ("1", True), ("false", False),
                        ("no", False), ("0", False)]:
        assert resolve("hopper", "mle", overrides=[f"sac.auto_entropy={text}"]).sac \
            .auto_entropy is value


def test_python_values_of_the_right_type_pass():
    cfg = resolve("hopper", "mle", preset="smoke",
                  overrides={"schedule.epochs": 4, "sac.lr": 1, "sac.auto_entropy": False,
                             "sac.target_entropy": None, "model.kind": "ensemble",
                             "tom.w_max": np.float64(2.5)})
    assert cfg.schedule.epochs == 4 and cfg.model.kind == "ensemble"
    assert type(cfg.tom.w_max) is float and cfg.tom.w_max == 2.5
    assert type(cfg.sac.lr) is float and cfg.sac.lr == 1.0  # an int for a float is stored as one
    assert cfg.sac.auto_entropy is False and cfg.sac.target_entropy is None


def test_from_dict_checks_the_types_of_a_config_json():
    good = json.loads(json.dumps(resolve("hopper", "tom", preset="smoke").to_dict()))
    for section, name, value, rule in [
            ("schedule", "epochs", "3", "it must be an integer"),  # text is not parsed here
            ("schedule", "epochs", 2.5, "it must be an integer"),
            ("sac", "auto_entropy", "false", "it must be true or false"),
            ("model", "kind", "gp", "choose one of mdn, ensemble"),
            ("tom", "w_max", None, "it must be a number")]:
        data = json.loads(json.dumps(good))
        data[section][name] = value
        with pytest.raises(ConfigError) as err:
            from_dict(data)
        assert str(err.value) == (f"config key '{section}.{name}' = {value!r} is not allowed: "
                                  f"{rule}")
    data = json.loads(json.dumps(good))
    data["model"]["kindd"] = "mdn"
    with pytest.raises(ConfigError, match="unknown config key 'model.kindd'. Did you mean"):
        from_dict(data)
    data = json.loads(json.dumps(good))
    data["model"] = "mdn"
    with pytest.raises(ConfigError, match="'model' = 'mdn' is not allowed"):
        from_dict(data)
    data = json.loads(json.dumps(good))
    data["sede"] = 3  # a misspelt top-level key is not ignored
    with pytest.raises(ConfigError, match="unknown config key 'sede'. Did you mean seed"):
        from_dict(data)


def test_constructors_and_assignments_raise_config_error_too():
    with pytest.raises(ConfigError, match=r"^config key 'model.kind' = 'gp' is not allowed: "
                                          r"choose one of mdn, ensemble$"):
        ModelConfig(kind="gp")
    with pytest.raises(ConfigError, match="'model.hidden_size' = 0 is not allowed: it must be >="):
        dataclasses.replace(ModelConfig(), hidden_size=0)
    with pytest.raises(ConfigError, match="unknown config key 'schedule.epoch'"):
        ScheduleConfig(epoch=3)
    cfg = resolve("hopper", "mle", preset="smoke")
    with pytest.raises(ConfigError, match="'schedule.epochs' = 2.5 is not allowed"):
        cfg.schedule.epochs = 2.5
    with pytest.raises(ConfigError, match="'schedule.epochs' = 2.5 is not allowed"):
        set_value(cfg, "schedule.epochs", 2.5)
    assert cfg.schedule.epochs == 2  # a rejected value leaves the old one
    assert dataclasses.replace(ModelConfig(), kind="ensemble").kind == "ensemble"


def test_validate_rechecks_values_set_around_the_checks():
    cfg = resolve("hopper", "mle", preset="smoke")
    object.__setattr__(cfg.schedule, "epochs", 2.5)
    with pytest.raises(ConfigError, match="'schedule.epochs' = 2.5 is not allowed: it must be an "
                                          "integer"):
        validate(cfg)
    object.__setattr__(cfg.schedule, "epochs", 2)
    validate(cfg)
    assert cfg.schedule.epochs == 2


def test_every_field_has_help_text():
    def components(cfg):
        yield cfg
        for f in dataclasses.fields(cfg):
            if dataclasses.is_dataclass(getattr(cfg, f.name)):
                yield from components(getattr(cfg, f.name))

    for component in components(RunConfig()):
        for f in dataclasses.fields(component):
            if not dataclasses.is_dataclass(getattr(component, f.name)):
                assert f.metadata["help"].strip(), f.name
    assert dataclasses.fields(ModelConfig)[0].metadata["help"].startswith("'mdn': the paper")


# -- properties: any object is accepted exactly when the rules say so, else a ConfigError ------

_TEXT = st.one_of(st.text(max_size=8), st.sampled_from(
    ["3", "3.0", "1e3", "-2", "0", "2.5", "nan", "inf", "-inf", "1e400", " 7 ", "true", "none",
     "0x10", "1_000", ""]))
_OBJECTS = st.one_of(
    st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.decimals(),
    st.fractions(), st.complex_numbers(), st.binary(max_size=2), st.tuples(st.integers()))
_SETTINGS = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _outcome(key: str, value):
    """('ok', value stored) or ('error', message); any other exception fails the test."""
    try:
        cfg = resolve("hopper", "mle", preset="smoke", overrides={key: value})
    except ConfigError as err:
        assert str(err).startswith(f"config key {key!r} = ") and "\n" not in str(err)
        return "error", str(err)
    section, name = key.split(".")
    return "ok", getattr(getattr(cfg, section), name)


def _whole_number(text: str):
    """The --set rule for integer keys: a number literal with a whole value."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _finite_float(value):
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return None
    return number if math.isfinite(number) else None


@_SETTINGS
@given(st.one_of(_OBJECTS, _TEXT))
def test_an_integer_key_takes_integers_from_one_and_nothing_else(value):
    outcome, stored = _outcome("schedule.epochs", value)
    if isinstance(value, str):
        expected = _whole_number(value.strip())
    else:
        expected = value if type(value) is int else None
    if expected is not None and expected >= 1:
        assert (outcome, stored, type(stored)) == ("ok", expected, int)
    else:
        assert outcome == "error"


@_SETTINGS
@given(st.one_of(_OBJECTS, _TEXT))
def test_a_real_key_takes_finite_positive_numbers_and_nothing_else(value):
    outcome, stored = _outcome("sac.lr", value)
    if isinstance(value, str):
        expected = _finite_float(value.strip()) if value.strip() else None
    else:
        expected = _finite_float(value) if type(value) in (int, float) else None
    if expected is not None and expected > 0:
        assert (outcome, stored, type(stored)) == ("ok", expected, float)
    else:
        assert outcome == "error"


def test_cli_rejects_a_bad_value_with_one_line_and_status_2(tmp_path, capsys):
    code = main(["train", "--env", "hopper", "--objective", "tom", "--preset", "smoke",
                 "--out", str(tmp_path / "run"), "--set", "schedule.epochs=2.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "tom: error: config key 'schedule.epochs' = 2.5 is not allowed: it must be an integer"]
    assert not (tmp_path / "run").exists()
