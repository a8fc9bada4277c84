"""The FF rule's open variants (Hinton 2022, sec. 2): goodness sign and activation, as options."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mortalnet.nets.ff import activate, activation_slope, embed_label, one_hot
from mortalnet.rules.ff_passes import ff_layer_signal, ff_probs
from mortalnet.rules.forward_forward import FFConfig, FFLearner


def tiny(seed=0, **cfg) -> FFLearner:
    return FFLearner(replace(FFConfig(), **cfg), hidden=(12, 10, 8), input_dim=30, num_classes=10, seed=seed)


@pytest.mark.parametrize("goodness", ["sum-squares", "neg-sum-squares"])
@pytest.mark.parametrize("activation", ["relu", "leaky-relu", "softplus"])
def test_signal_is_the_derivative_of_the_layer_objective(goodness, activation):
    """ff_layer_signal = temp/2 * d/dz [sum log p(pos) + sum log(1 - p(neg))] for every variant."""
    sign = 1.0 if goodness == "sum-squares" else -1.0
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 6, generator=g, requires_grad=True)
    temp, theta, B = 1.5, 2.0, 4
    s = activate(z, activation)
    logit = sign * (s.square().sum(1) - theta) / temp
    obj = F.logsigmoid(logit[:B]).sum() + F.logsigmoid(-logit[B:]).sum()
    (dz,) = torch.autograd.grad(obj, z)
    signal, p_pos, p_neg = ff_layer_signal(s.detach(), B, theta, temp, sign=sign, activation=activation)
    torch.testing.assert_close(signal, temp / 2 * dz, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([p_pos, p_neg]), ff_probs(s.detach(), theta, temp, sign))


def test_activation_slopes_are_read_off_the_outputs():
    z = torch.linspace(-4, 4, 101, requires_grad=True)
    for name in ("relu", "leaky-relu", "softplus"):
        (dz,) = torch.autograd.grad(activate(z, name).sum(), z)
        slope = activation_slope(activate(z, name).detach(), name)
        slope = torch.full_like(z, slope) if isinstance(slope, float) else slope
        mask = z.detach() != 0  # relu's slope at 0 is a convention
        torch.testing.assert_close(slope[mask] * (activate(z, name).detach()[mask] if name == "relu" else 1),
                                   dz[mask] * (activate(z, name).detach()[mask] if name == "relu" else 1))
    with pytest.raises(ValueError, match="valid: relu"):
        activate(z, "tanh")


def test_neg_sum_squares_prefers_the_label_with_least_activity():
    learner = tiny(seed=2, goodness="neg-sum-squares")
    x = torch.rand(12, 30, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        learner.train_batch(x, torch.arange(12) % 10)
    scores = learner.goodness_scores(x)
    brute = torch.stack([
        -sum(s.square().sum(1) for s in learner.net.forward_states(embed_label(x, one_hot(torch.full((12,), k))))[1:])
        for k in range(10)], 1)
    torch.testing.assert_close(scores, brute, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(learner.goodness_scores_reference(x), brute, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", [dict(goodness="neg-sum-squares"), dict(activation="softplus"),
                                     dict(activation="leaky-relu")])
def test_variants_keep_the_fast_and_straightforward_paths_equal(variant):
    a, b = tiny(seed=5, **variant), tiny(seed=5, fast=False, **variant)
    x = torch.rand(32, 30, generator=torch.Generator().manual_seed(3))
    y = torch.arange(32) % 10
    for _ in range(3):
        a.train_batch(x, y)
        b.train_batch(x, y)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", [dict(goodness="neg-sum-squares"), dict(activation="softplus")])
def test_variants_learn_the_toy_problem(variant, tiny_data):
    from mortalnet.training import TrainingConfig, fit

    cfg = replace(FFLearner.quick_config(), **variant)
    learner = FFLearner(cfg, hidden=(64, 64), seed=0)
    fit(learner, tiny_data.train.tensors(), None,
        TrainingConfig(epochs=6, batch_size=50, progress=False, tensorboard=False, schedule="constant"), seed=0)
    err = learner.evaluate(*tiny_data.valid.tensors())
    assert err["error_goodness"] < 0.1 and err["error_softmax"] < 0.1, err


def test_labels_wider_than_ten_pixels_embed_and_evaluate():
    """num_classes = 30 (the sequence experiment): the label takes the first 30 inputs."""
    learner = FFLearner(FFConfig(), hidden=(16, 16), input_dim=60, num_classes=30, seed=0)
    x = torch.rand(8, 60)
    y = torch.arange(8) * 3
    learner.train_batch(x, y)
    out = learner.evaluate(x, y)
    assert set(out) == {"error_goodness", "error_softmax"}
    torch.testing.assert_close(learner.goodness_scores(x), learner.goodness_scores_reference(x), rtol=1e-4, atol=1e-4)
    emb = embed_label(x, one_hot(y, 1.0, 30))
    assert torch.equal(emb[:, :30].argmax(1), y) and torch.equal(emb[:, 30:], x[:, 30:])
