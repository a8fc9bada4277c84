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
    # A's nominal weights programmed onto B work on B, a little worse than on A (measured: A 0.514 on
    # the 500 images, copies 0.580 / 0.556); unprogrammed copies are at chance (0.908 / 0.936)
    assert s["copies_mean_error"] < s["a_error_eval_images"] + 0.15, (s["a_error_eval_images"], s["copy_errors"])
    assert s["copies_worst_error"] < s["a_error_eval_images"] + 0.2
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


def test_mortality_training_energy_leaves_out_the_relearning_and_relearns_on_new_images(tmp_path, monkeypatch):
    """The training energy was taken after the drift relearning (40% more learner MACs in the records), and
    the relearning at successive drift times uses disjoint blocks of images while they fit."""
    from safetensors.torch import load_file

    import mortalnet.experiments.mortality as mortality
    from mortalnet.api import run

    seen = []
    fit = mortality.fit

    def recording_fit(learner, train, *args, **kwargs):
        seen.append(train[0].clone())
        return fit(learner, train, *args, **kwargs)

    monkeypatch.setattr(mortality, "fit", recording_fit)
    out = tmp_path / "m"
    s = run("mortality", preset="fast", seed=0, out=out, progress=False,
            overrides=["data.source=synthetic", "training.epochs=1", "drift_times=0,60,3600", "relearn_batches=6"])
    trained = load_file(out / "checkpoint.safetensors")["module.learner_macs"].item()
    assert s["energy"]["train"]["learner_digital_macs"] == int(trained)
    assert len(seen) == 3 and all(len(x) == 600 for x in seen)
    rows = [{tuple(r.tolist()) for r in x} for x in seen]  # 2000 synthetic training images: 3 x 600 fit
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])


def test_mortality_refuses_no_relearning_before_training(capsys, tmp_path):
    from conftest import assert_refused

    assert_refused(capsys, tmp_path / "r", "mortality", ["data.source=synthetic", "relearn_batches=0"],
                   "relearn_batches must be >= 1")


def test_ff_device_report_compares_mild_and_ideal_of_the_same_net():
    """The 'mild − ideal' line compared whichever mild and ideal presets came last (short vs short-ideal),
    unlabelled, or different nets when only some presets were there."""
    def summary(preset, hardware, hidden, epochs, err):
        return {"experiment": "ff-device", "preset": preset, "seed": 0, "hardware": hardware, "hidden": hidden,
                "epochs": epochs, "test_error": err, "test/error_softmax": err, "energy_train_device_J": 1.0,
                "energy_train_mortal_total_J": 2.0, "energy_train_digital_fp32_J": 3.0,
                "energy_test_per_image_device_J": 1e-6, "energy_test_per_image_digital_fp32_J": 1e-5}

    section = get_experiment("ff-device").report_section([
        summary("paper", "mild", [1000] * 3, 20, 0.0167), summary("paper-ideal", "ideal", [1000] * 3, 20, 0.0166),
        summary("short", "mild", [500] * 3, 5, 0.0370), summary("short-ideal", "ideal", [500] * 3, 5, 0.0328)])
    assert "paper − paper-ideal (1000x1000x1000, 20 epochs): +0.01 points (within" in section
    assert "short − short-ideal (500x500x500, 5 epochs): +0.42 points (within" in section
    only = get_experiment("ff-device").report_section([
        summary("paper", "mild", [1000] * 3, 20, 0.0167), summary("short-ideal", "ideal", [500] * 3, 5, 0.0328)])
    assert "−" not in only.split("|")[-1]  # different nets: no comparison
