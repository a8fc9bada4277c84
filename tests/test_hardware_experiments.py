"""Smoke tests of the device experiments on their `fast` presets (real MNIST, seconds)."""

from __future__ import annotations

import json

import pytest

from mortalnet.cli import main
from mortalnet.experiments import get_experiment

from conftest import needs_mnist


@needs_mnist
def test_ff_device_fast_preset_reports_error_and_energy(tmp_path, capsys):
    out = tmp_path / "ffd"
    assert main(["run", "ff-device", "--preset", "fast", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    # 3 epochs on 10k real digits, 2x300 mild device layers: far from chance (90%)
    assert s["test_error"] < 0.35 and s["test/error_softmax"] < 0.2, s
    assert s["hardware"] == "mild" and s["device_seed"] == 0
    # energy: the device's forward passes are far cheaper than fp32 MACs; the learner's own digital work counts
    assert 0 < s["energy_train_device_J"] < s["energy_train_mortal_total_J"] < s["energy_train_digital_fp32_J"]
    assert 0 < s["energy_test_per_image_device_J"] < s["energy_test_per_image_digital_fp32_J"]
    counts = s["energy"]["train"]["counts"]
    assert counts["macs"] > 0 and counts["write_pulses"] > 0 and counts["adc_conversions"] > 0
    assert {p.name for p in (out / "plots").iterdir()} == {"learning_curves.png", "energy_train.png"}
    # re-testing from the checkpoint (device state restored from its sealed blob) gives the same number
    assert main(["eval", str(out)]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["test_error"] == pytest.approx(s["test_error"], abs=1e-6)
    section = get_experiment("ff-device").report_section([s])
    assert "| fast | mild |" in section


@needs_mnist
def test_mortality_fast_preset_copies_and_drift(tmp_path):
    out = tmp_path / "mort"
    assert main(["run", "mortality", "--preset", "fast", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["test_error"] < 0.7, s
    assert len(s["copy_errors"]) == 2 and s["copy_seeds"] == [1001, 1002]
    assert s["copies_worst_error"] >= s["copies_mean_error"] >= s["copies_best_error"]
    assert len(s["drift_error_frozen"]) == len(s["drift_error_relearn"]) == 3
    assert s["drift_error_frozen"][0] == pytest.approx(s["a_error_eval_images"])  # t = 0: A as trained
    assert s["drift_error_frozen"][-1] > s["drift_error_frozen"][0]  # a year of mild drift hurts
    assert {p.name for p in (out / "plots").iterdir()} == {
        "learning_curves.png", "error_vs_device_seed.png", "error_vs_drift_time.png"}
    section = get_experiment("mortality").report_section([s])
    assert "| fast | mild | 0 |" in section and "1 year" in section


def test_mortality_on_the_ideal_device_copies_perfectly(tmp_path):
    """Ideal instances are all the same device: copied weights behave exactly as on A."""
    from mortalnet.api import run

    s = run("mortality", preset="fast", seed=0, out=tmp_path / "ideal", progress=False,
            overrides=["rule.hardware=ideal", "data.source=synthetic", "training.epochs=1", "drift_times=0,3600"])
    assert s["copy_errors"] == [s["a_error_eval_images"]] * 2
    assert s["drift_error_frozen"][0] == s["drift_error_frozen"][1]  # no drift on ideal
