"""The perturbation rules on simulated devices: they learn on `ideal` and `mild`, hold no hidden state,
`ideal` gives the digital numbers, and a device run resumes exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mortalnet.hardware import list_devices
from mortalnet.hardware.boundary import assert_no_hidden_state
from mortalnet.rules import RULES, create_rule
from mortalnet.training import TrainingConfig, fit

# perturbation scales for a noisy device: larger than the per-pass noise (see README, "Learning by perturbation")
MILD_SIGMA = {"weight-perturbation": 0.03, "activity-perturbation": 0.3, "local-losses": 0.1}
RULE_NAMES = list(MILD_SIGMA)


def make(name: str, hardware: str, seed: int = 0, hidden=(48, 48)):
    cfg = RULES.get(name).quick_config()
    cfg = replace(cfg, hardware=hardware, sigma=MILD_SIGMA[name] if hardware == "mild" else cfg.sigma)
    return create_rule(name, cfg, hidden=hidden, input_dim=784, num_classes=10, seed=seed)


def quiet(epochs: int) -> TrainingConfig:
    return TrainingConfig(epochs=epochs, batch_size=50, progress=False, tensorboard=False, schedule="constant")


@pytest.mark.parametrize("hardware", ["ideal", "mild"])
@pytest.mark.parametrize("name", RULE_NAMES)
def test_rule_learns_on_a_device(name, hardware, tiny_data):
    learner = make(name, hardware)
    assert learner.hardware is not None and learner.hardware.preset_name == hardware
    valid = tiny_data.valid.tensors()
    before = learner.evaluate(*valid)["error"]
    result = fit(learner, tiny_data.train.tensors(), None, quiet(3), seed=0)
    after = learner.evaluate(*valid)["error"]
    assert after < 0.5 * before and after < 0.3, (before, after)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert_no_hidden_state(learner)  # only nominal weights, estimates and opaque handles
    energy = learner.energy()
    assert energy["device_total_J"] > 0 and energy["learner_digital_macs"] > 0
    assert energy["counts"]["write_requests"] == 3 * 40 * len(learner.layers)  # one request per layer per step


@pytest.mark.parametrize("name", RULE_NAMES)
def test_ideal_device_gives_the_digital_numbers(name, tiny_data):
    x, y = tiny_data.train.tensors()
    a, b = make(name, "digital"), make(name, "ideal")
    for i in range(0, 200, 50):
        a.train_batch(x[i : i + 50], y[i : i + 50])
        b.train_batch(x[i : i + 50], y[i : i + 50])
    for la, lb in zip(a.layers, b.layers):
        for ta, tb in zip(la.nominal_weights(), lb.nominal_weights()):
            assert torch.allclose(ta, tb, atol=1e-5), (ta - tb).abs().max()


def test_device_run_resumes_bit_exactly(tiny_data, tmp_path):
    """The sealed device state travels in the checkpoint: 1 + 1 epochs == 2 epochs on a noisy device."""
    from mortalnet.runs import RunDir

    train = tiny_data.train.tensors()
    whole = make("activity-perturbation", "mild")
    fit(whole, train, None, quiet(2), seed=0)
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    first = make("activity-perturbation", "mild")
    fit(first, train, None, quiet(1), seed=0, run=run)
    second = make("activity-perturbation", "mild")  # a fresh handle on the same instance (same seed)
    fit(second, train, None, quiet(2), seed=0, run=run, resume=True)
    for la, lb in zip(whole.layers, second.layers):
        for ta, tb in zip(la.nominal_weights(), lb.nominal_weights()):
            assert torch.equal(ta, tb)
    x = tiny_data.valid.tensors()[0][:20]
    assert torch.equal(whole.logits(x), second.logits(x))  # same physical state, same noise stream


@pytest.mark.parametrize("name", RULE_NAMES)
def test_evaluation_does_not_change_training_on_a_device(name, tiny_data):
    """evaluate() runs isolated: the same weights and device counters whether or not a run evaluates."""
    x, y = tiny_data.train.tensors()
    xv, yv = tiny_data.valid.tensors()
    a, b = make(name, "mild", hidden=(16,)), make(name, "mild", hidden=(16,))
    for i in range(0, 150, 50):
        a.train_batch(x[i : i + 50], y[i : i + 50])
        b.train_batch(x[i : i + 50], y[i : i + 50])
        b.evaluate(xv[:100], yv[:100])
    for wa, wb in zip(a.mirror.weights, b.mirror.weights):
        assert torch.equal(wa, wb)
    for la, lb in zip(a.layers, b.layers):
        for ta, tb in zip(la.nominal_weights(), lb.nominal_weights()):
            assert torch.equal(ta, tb)
    assert a.hardware.counts() == b.hardware.counts()  # the reported energy holds training alone
    assert a.energy() == b.energy()
    assert b.last_eval_counts.forward_rows >= 100  # what evaluation cost is kept apart
    assert torch.equal(a.logits(xv[:20]), b.logits(xv[:20]))  # same physical state, same noise stream


def test_unknown_hardware_lists_the_presets():
    from mortalnet.rules.activity_perturbation import ActivityPerturbationConfig

    with pytest.raises(ValueError, match="valid: digital, harsh, ideal, mild"):
        create_rule("activity-perturbation", ActivityPerturbationConfig(hardware="quantum"), hidden=(8,))


@pytest.mark.parametrize("hardware", list_devices())
@pytest.mark.parametrize("name", RULE_NAMES)
def test_every_rule_on_every_preset_keeps_no_hidden_state_and_no_graph(name, hardware, tiny_data, monkeypatch):
    """The boundary on every registered preset (the learning tests above use ideal and mild): a few
    steps with autograd refused anywhere, then no tensor of the learner shares the device's hidden state."""
    learner = make(name, hardware)

    def no_backward(*args, **kwargs):
        raise AssertionError("a perturbation rule on a device called autograd")

    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    x, y = tiny_data.train.tensors()
    for step in range(3):
        learner.train_batch(x[step * 50 : (step + 1) * 50], y[step * 50 : (step + 1) * 50])
    assert all(not p.requires_grad or p.grad is None for p in learner.parameters())
    assert_no_hidden_state(learner)
