"""Experiments that train several models refuse a bad setting of a later model before the first trains.

`Experiment.check` builds every model of a run once (`mortalnet.api.run` calls it before the run
directory is made); here a refused setting must exit 2 with one line naming the model, leave no
run directory, and never reach the experiment's `run` (so nothing trained).
"""

from __future__ import annotations

import pytest
import torch

import mortalnet as mn
from mortalnet.api import preset_config
from mortalnet.config import ConfigError
from mortalnet.experiments import get_experiment, list_experiments
from mortalnet.experiments.base import RunContext

from conftest import assert_refused

PRESETS = [(name, preset) for name in list_experiments() for preset in get_experiment(name).presets]


@pytest.fixture
def no_training(monkeypatch):
    """Make `run` of the experiment named fail the test: a refusal must come before it starts."""

    def forbid(experiment: str) -> None:
        def run(self, config, ctx):
            raise AssertionError(f"{experiment}.run started: the refusal came after the run began")

        monkeypatch.setattr(type(get_experiment(experiment)), "run", run)

    return forbid


@pytest.mark.parametrize("experiment, preset", PRESETS)
def test_every_preset_passes_the_check(experiment, preset):
    """The check refuses no shipped preset (it builds each model on the CPU, nothing more)."""
    exp = get_experiment(experiment)
    exp.check(preset_config(experiment, preset), RunContext(experiment, preset, 0, torch.device("cpu"),
                                                            progress=False))


@pytest.mark.parametrize(
    "experiment, settings, message",
    [
        # the brief's examples: backprop (or the other arms) would have trained first
        ("label-noise", ["ff.readout_from=5"], "the forward-forward learner: readout_from=5 must index a hidden layer"),
        ("perturbation-mnist", ["wp_widths=0"], "net weight-perturbation-w0: hidden widths must be positive"),
        # an optimizer refusing a value (a ValueError from torch or ours) is a ConfigError naming the model
        ("label-noise", ["ff.optimizer.momentum=2"], "the forward-forward learner: smoothing must be in [0, 1)"),
        ("perturbation-mnist", ["ll.optimizer.lr=-1"], "arm local-losses, net local-losses: Invalid learning rate"),
        ("perturbation-mnist", ["arms=backprop,weight-perturbation", "wp_widths="], "wp_widths, which is empty"),
        ("blackbox", ["backprop.optimizer.lr=-1"], "model backprop: Invalid learning rate"),
        ("ff-cifar10", ["models=backprop,ff", "rule.optimizer.momentum=2"], "model ff-2: smoothing must be"),
        ("ff-sequence", ["models=backprop,ff-teacher-forcing", "rule.readout_from=7"],
         "model ff-teacher-forcing: readout_from=7"),
        ("fast-weights", ["hidden_sizes=50,0"], "hidden_sizes needs at least one number of recurrent units"),
        ("fast-weights", ["models=rnn,lstm", "embed=0"], "embed is a width, >= 1"),
        ("distill-mnist", ["student.optimizer.lr=-1"], "the student: Invalid learning rate"),
        ("distill-mnist", ["student_hidden=0"], "the student: hidden widths must be positive"),
        ("community", ["agent.device.sigma=0"], "a mortal agent: sigma (perturbation scale) must be > 0"),
        ("community", ["agent.hidden=0"], "hidden widths must be positive integers; got (0,)"),
        ("small-lr-equivalence", ["lrs=0.1,0"], "lrs must all be > 0"),
        ("perturbation-variance", ["widths=8,0"], "widths must be >= 1"),
        ("perturbation-variance", ["depths=2"], "depths needs at least two values"),
        ("perturbation-mnist", ["arms=backprop,activity-perturbation", "ap.estimator=jvp", "ap.hardware=mild"],
         "net activity-perturbation: estimator='jvp' needs an exact model"),
        ("perturbation-variance", ["widths=8,16,8"], "widths lists a value twice"),
        ("perturbation-mnist", ["arms=backprop,backprop"], "arms lists a model twice"),
        ("perturbation-mnist", ["arms=weight-perturbation", "wp_widths=8,8"], "wp_widths lists a width twice"),
    ],
)
def test_a_later_models_setting_is_refused_before_anything_trains(experiment, settings, message, capsys,
                                                                    tmp_path, no_training):
    no_training(experiment)
    assert_refused(capsys, tmp_path / "r", experiment, settings, message)


def test_the_python_api_refuses_it_too_and_leaves_no_run(tmp_path, no_training):
    no_training("label-noise")
    out = tmp_path / "r"
    with pytest.raises(ConfigError, match="readout_from=5"):
        mn.run("label-noise", preset="fast", overrides=["ff.readout_from=5"], out=out, device="cpu",
               progress=False)
    assert not out.exists()


def test_compression_builds_every_model_before_any_trains(capsys, tmp_path, monkeypatch):
    """compression has no check of its own: its run builds all its models before the first trains."""

    def fit(*args, **kwargs):
        raise AssertionError("a model trained before the refusal")

    monkeypatch.setattr("mortalnet.experiments.compression.fit", fit)
    assert_refused(capsys, tmp_path / "r", "compression", ["models=backprop,ff", "rule.readout_from=5"],
                   "readout_from=5 must index a hidden layer")
