"""FF on several processes: the pipeline equals sequential training; a dead rank never hangs."""

from __future__ import annotations

import time

import pytest
import torch

from mortalnet import config as cfgmod
from mortalnet.data.mnist import MnistConfig, synthetic_mnist
from mortalnet.optim import OptimizerConfig, schedule_factor
from mortalnet.parallel.ff_pipeline import _batches, data_parallel_rank, partition, pipeline_rank
from mortalnet.parallel.launch import RankFailedError, spawn
from mortalnet.rules.forward_forward import FFConfig, FFLearner

pytestmark = pytest.mark.multiprocess

RULE = FFConfig(negatives="random", optimizer=OptimizerConfig(lr=0.03, weight_decay=0.001))


def spec(**kw):
    base = {"hidden": [32, 24, 16], "rule": cfgmod.to_dict(RULE),
            "data": cfgmod.to_dict(MnistConfig(source="synthetic")), "epochs": 1, "batch_size": 50,
            "schedule": "half-then-linear", "shuffle": True, "seed": 3, "max_steps": 6}
    base.update(kw)
    return base


def test_partition_is_contiguous_and_balanced():
    assert partition(4, 2) == [[0, 1], [2, 3]]
    assert partition(4, 3) == [[0, 1], [2], [3]]
    assert partition(3, 3) == [[0], [1], [2]]
    with pytest.raises(ValueError):
        partition(2, 3)


@pytest.mark.parametrize("ranks", [2, 3])
def test_pipeline_computes_the_same_weights_as_one_process(ranks):
    results = spawn(pipeline_rank, ranks, args=(spec(return_state=True),), timeout_s=30)
    piped = {k: torch.tensor(v) for k, v in results[0]["state"].items()}
    assert [r["steps"] for r in results] == [6] * ranks

    data = synthetic_mnist()
    x, y = data.train.tensors()
    seq = FFLearner(RULE, (32, 24, 16), seed=3)
    seq.set_lr_scale(schedule_factor("half-then-linear", 1, 1))
    for idx in _batches(len(y), 50, 3, 1, True)[:6]:
        seq.train_batch(x[idx], y[idx])
    for i, layer in enumerate(seq.net.layers):
        torch.testing.assert_close(piped[f"layers.{i}.weight"], layer.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(piped[f"layers.{i}.bias"], layer.bias, rtol=1e-5, atol=1e-6)


def test_pipeline_learns_with_two_ranks():
    results = spawn(pipeline_rank, 2, args=(spec(hidden=[128, 128], epochs=3, max_steps=0),), timeout_s=60)
    assert results[0]["test"]["error_goodness"] < 0.5  # chance is 0.9; synthetic digits, 3 epochs
    assert results[1]["examples_per_s"] > 0


def test_data_parallel_learns_and_keeps_replicas_identical():
    results = spawn(data_parallel_rank, 2, args=(spec(hidden=[128, 128], epochs=3, max_steps=0),), timeout_s=60)
    assert results[0]["test"]["error_goodness"] < 0.5
    # per step: each layer's weight+bias, the readout weights and the peer-norm means, in float32
    steps = results[0]["steps"]
    per_step = 4 * ((784 * 128 + 128) + (128 * 128 + 128) + 128 * 10 + 2 * 128)
    assert results[0]["bytes_all_reduced"] == steps * per_step


def test_a_dead_rank_stops_the_others_quickly(monkeypatch):
    monkeypatch.setenv("MORTALNET_FAULT_KILL_RANK", "1:3")
    t0 = time.perf_counter()
    with pytest.raises(RankFailedError, match="rank 1 died|rank"):
        spawn(pipeline_rank, 3, args=(spec(max_steps=50),), timeout_s=10)
    assert time.perf_counter() - t0 < 45
