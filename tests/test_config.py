"""Configs: overrides, validation errors that name the valid keys, docs on every field."""

from __future__ import annotations

import dataclasses

import pytest

from mortalnet import config as cfgmod
from mortalnet.experiments import EXPERIMENTS, get_experiment


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_every_config_field_has_a_docstring(name):
    exp = get_experiment(name)

    def walk(cls, prefix=""):
        docs = cfgmod.field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{name}: config field {prefix}{f.name} of {cls.__name__} has no docstring"
            tp = cfgmod._hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, prefix + f.name + ".")

    walk(exp.Config)


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_presets_exist_and_round_trip_through_json(name):
    exp = get_experiment(name)
    assert "fast" in exp.presets and "paper" in exp.presets
    for preset in exp.presets.values():
        cfg = preset()
        assert cfgmod.from_dict(type(cfg), cfgmod.to_dict(cfg)) == cfg


def test_override_sets_nested_values_with_types():
    from mortalnet.api import preset_config

    cfg = preset_config("ff-supervised", "fast", ["training.epochs=7", "hidden=50,60", "rule.optimizer.lr=0.5",
                                                   "rule.negatives=random", "training.shuffle=false"])
    assert cfg.training.epochs == 7 and cfg.hidden == (50, 60) and cfg.rule.optimizer.lr == 0.5
    assert cfg.rule.negatives == "random" and cfg.training.shuffle is False


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("training.epoch=3", "unknown config key 'training.epoch'; valid keys: "),
        ("nonsense=1", "valid keys: "),
        ("training.epochs=three", "training.epochs expects an integer"),
        ("rule.optimizer.lr=fast", "expects a number"),
        ("training.epochs=2.5", "expects an integer"),
        ("rule.negatives=sometimes", "is not one of 'hard', 'random'"),
        ("training.shuffle=maybe", "expects true or false"),
        ("training", "must look like key=value"),
        ("training=3", "is a section"),
        ("training.batch_size=0", "training.batch_size must be >= 1"),
        ("training.eval_every=0", "training.eval_every must be >= 1"),
        ("training.epochs=-1", "training.epochs must be >= 0"),
        ("rule.optimizer.lr=nan", "expects a finite number"),
        ("rule.optimizer.lr=inf", "expects a finite number"),
    ],
)
def test_bad_overrides_give_clear_errors(assignment, message):
    from mortalnet.api import preset_config

    with pytest.raises(cfgmod.ConfigError) as err:
        preset_config("ff-supervised", "fast", [assignment])
    assert message in str(err.value)
    if "valid keys" in message:
        assert "training.epochs" in str(err.value)  # the valid keys are listed


@pytest.mark.parametrize("value", [None, [3], {}, "x"])
def test_a_hand_edited_number_in_stored_config_is_a_config_error(value):
    from mortalnet.training import TrainingConfig

    with pytest.raises(cfgmod.ConfigError, match="training.epochs expects an integer"):
        cfgmod.from_dict(TrainingConfig, {"epochs": value}, "training.")


def test_unknown_preset_lists_valid_ones():
    from mortalnet.api import preset_config

    with pytest.raises(cfgmod.ConfigError, match="valid: fast"):
        preset_config("ff-supervised", "huge", [])


def test_from_dict_rejects_unknown_keys():
    from mortalnet.experiments.ff_supervised import FFSupervisedConfig

    with pytest.raises(cfgmod.ConfigError, match="unknown config key 'rule.lr'"):
        cfgmod.from_dict(FFSupervisedConfig, {"rule": {"lr": 0.1}})


def test_configs_are_frozen():
    from mortalnet.experiments.ff_supervised import FFSupervisedConfig

    cfg = FFSupervisedConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden = (1,)  # type: ignore[misc]
