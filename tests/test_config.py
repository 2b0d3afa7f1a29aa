"""Configuration: presets, per-task and per-objective defaults, overrides, validation messages."""

import json

import pytest

from tom.config import ConfigError, RunConfig, all_keys, from_dict, resolve


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
    (["schedule.epochs=2.5"], "'schedule.epochs' = '2.5' is not a valid int"),
    (["sac.gamma=1.5"], "'sac.gamma' = 1.5 is not allowed: it must be <= 1.0"),
    (["sac.lr=0"], "'sac.lr' = 0.0 is not allowed: it must be > 0.0"),
    (["tom.w_max=nan"], "'tom.w_max' = nan must be a finite number"),
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
