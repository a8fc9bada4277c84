"""Smoke tests of the perturbation experiments on their fast presets (real MNIST), with bounds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mortalnet.cli import main
from tests.conftest import needs_mnist


def _run(name: str, tmp_path, *sets: str) -> dict:
    out = tmp_path / name
    args = ["run", name, "--preset", "fast", "--seed", "0", "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


@needs_mnist
def test_perturbation_variance_fast(tmp_path):
    s = _run("perturbation-variance", tmp_path)
    pts = {(p["sweep"], p["width"], p["depth"], p["estimator"]): p for p in s["points"]}
    # relative variance grows about linearly with the number of perturbed variables (width sweep)
    assert 0.7 < s["exponents"]["width/weight"] < 1.4, s["exponents"]
    assert 0.5 < s["exponents"]["width/activity-layerwise"] < 1.6, s["exponents"]
    for r in s["wp_over_ap"]:  # weight perturbation is noisier by more than the fan-in factor's order
        assert r["wp_over_ap"] > 10, r
    for key, p in pts.items():
        if key[3] == "weight":
            ap = pts[key[:3] + ("activity-layerwise",)]
            assert ap["cos_mean"] > p["cos_mean"] + 0.1, (key, ap["cos_mean"], p["cos_mean"])
    assert 0.0 < s["test_error"] < 1.0
    assert (tmp_path / "perturbation-variance" / "plots" / "variance_scaling.png").exists()


@needs_mnist
def test_small_lr_equivalence_fast(tmp_path):
    s = _run("small-lr-equivalence", tmp_path)
    ap, wp = np.array(s["averaging_cos"]["activity"]), np.array(s["averaging_cos"]["weight"])
    assert np.all(np.diff(ap) > -0.02) and ap[-1] > 0.9 and ap[0] < 0.6, ap  # averaging converges to backprop
    assert wp[-1] < ap[-1] - 0.3, (wp, ap)  # weight perturbation needs far more samples
    cos = [t["cos"] for t in s["trajectories"]]  # lrs decrease: cosines grow
    assert cos[-1] > cos[0] + 0.1, cos
    assert s["test_error"] == 1.0 - cos[-1]


@needs_mnist
def test_perturbation_mnist_fast(tmp_path):
    s = _run("perturbation-mnist", tmp_path)
    err = {a["label"]: a["test_error"] for a in s["arms"]}
    assert set(err) == {"backprop", "weight-perturbation-w8", "backprop-w8", "weight-perturbation-w32",
                        "backprop-w32", "activity-perturbation", "local-losses"}
    # 2 epochs on 5k digits: every rule far from chance (90%), perturbation behind backprop
    assert err["backprop"] < 0.2, err
    assert err["activity-perturbation"] < 0.35 and err["local-losses"] < 0.35, err
    assert err["weight-perturbation-w32"] < 0.65, err
    assert s["test_error"] == err["backprop"]  # the first arm is the headline
    run = tmp_path / "perturbation-mnist"
    for label in err:  # one record per arm, through the shared loop
        assert len((run / "arms" / label / "metrics.jsonl").read_text().splitlines()) == 2
    from mortalnet.experiments import get_experiment

    section = get_experiment("perturbation-mnist").report_section([s])
    assert "| fast | activity-perturbation | 784-64-64-10 | digital | 2 | 0 |" in section


@pytest.mark.slow
def test_perturbation_mnist_resumes_arm_by_arm_after_kill_9(tmp_path):
    """kill -9 after epoch 1 of each arm; --resume continues arm by arm and gives the uninterrupted numbers."""
    import os
    import subprocess
    import sys

    sets = ["--set", "arms=backprop,activity-perturbation", "--set", "data.source=synthetic",
            "--set", "training.epochs=2"]

    def cli(*args, kill=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if kill:
            env["MORTALNET_FAULT_KILL_AFTER_EPOCH"] = str(kill)
        return subprocess.run([sys.executable, "-m", "mortalnet", *args], env=env, capture_output=True, text=True)

    base = ["run", "perturbation-mnist", "--preset", "fast", "--quiet"]
    assert cli(*base, "--out", str(tmp_path / "whole"), *sets).returncode == 0
    out = tmp_path / "killed"
    assert cli(*base, "--out", str(out), *sets, kill=1).returncode == -9  # dies in backprop's epoch 1
    assert cli("run", "--resume", str(out), "--quiet", kill=1).returncode == -9  # backprop done, AP dies at 1
    assert (out / "arms" / "backprop" / "result.json").exists()
    assert cli("run", "--resume", str(out), "--quiet").returncode == 0
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    again = json.loads((out / "summary.json").read_text())
    assert [a["test_error"] for a in again["arms"]] == [a["test_error"] for a in whole["arms"]]
