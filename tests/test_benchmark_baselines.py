"""The baselines the benchmarks time ours against compute what they claim to."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import torch

from mortalnet.nets.ff import embed_label, one_hot
from mortalnet.rules.forward_forward import FFConfig, FFLearner


def _benchmark(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_ff_layer_gradients_equal_the_library_s():
    """NaiveFF's layer loss was the sum of the positive and negative means: twice the library's gradient."""
    naive_ff = _benchmark("ff_throughput").NaiveFF
    g = torch.Generator().manual_seed(0)
    hidden, B = (50, 40), 16
    x, y = torch.rand(B, 784, generator=g), torch.arange(B) % 10
    y_neg = (y + 3) % 10
    lib = FFLearner(replace(FFConfig(), peer_norm=0.0), hidden, seed=0)
    naive = naive_ff(hidden)
    with torch.no_grad():
        for lin, layer in zip(naive.layers, lib.net.layers):
            lin.weight.copy_(layer.weight.T)
            lin.bias.copy_(layer.bias)
    grads_w, _ = lib.local_gradients(embed_label(x, one_hot(y, 1.0, 10)), embed_label(x, one_hot(y_neg, 1.0, 10)))
    for lin in naive.layers:
        lin.weight.grad = None
    naive.ff_backward(x, y, y_neg)
    for lin, gw in zip(naive.layers, grads_w):
        torch.testing.assert_close(lin.weight.grad.T, gw, rtol=1e-4, atol=1e-6)
