"""Recurrent FF (Hinton 2022, sec. 4): the damped synchronous update and the local updates."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mortalnet.nets.ff import normalize_rows
from mortalnet.nets.recurrent import RecurrentFFNet
from mortalnet.rules.ff_recurrent import FFRecurrentConfig, FFRecurrentLearner


def test_damped_synchronous_update_equals_a_hand_computation():
    """Image of 2 pixels, hidden layers of 2 and 2 units, 2 labels; every number written out."""
    net = RecurrentFFNet(input_dim=2, hidden=(2, 2), num_classes=2, damping=0.3)
    with torch.no_grad():
        net.up[0].copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # image -> h1
        net.up[1].copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))  # h1 -> h2
        net.down[0].copy_(torch.tensor([[0.5, 0.0], [0.0, 0.5]]))  # h2 -> h1
        net.down[1].copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # label -> h2
        net.bias[0].copy_(torch.tensor([0.0, -1.0]))
        net.bias[1].copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[3.0, 4.0]])  # rms = sqrt(12.5); norm(x) = x / 3.5355
    history = net.run(x, torch.tensor([1]), steps=1)
    r = (12.5) ** 0.5
    nx = torch.tensor([3.0, 4.0]) / r  # [0.8485, 1.1314]
    # step 0: bottom-up only
    h1_0 = torch.relu(torch.tensor([nx[0] * 1.0, nx[1] * 2.0 - 1.0]))  # [0.8485, 1.2627]
    n1 = h1_0 / h1_0.square().mean().sqrt()
    h2_0 = torch.relu(torch.tensor([n1[0] + n1[1] + 0.5, -n1[0] + n1[1]]))
    torch.testing.assert_close(history[0][0][0], h1_0)
    torch.testing.assert_close(history[0][1][0], h2_0)
    # step 1: every layer from the step-0 states of its neighbours, then 0.3 old + 0.7 new
    n2 = h2_0 / h2_0.square().mean().sqrt()
    label = torch.tensor([0.0, 1.0]) / (0.5**0.5)  # one-hot normalized to mean square 1: [0, 1.414]
    z1 = torch.tensor([nx[0], 2 * nx[1]]) + 0.5 * n2 + torch.tensor([0.0, -1.0])
    z2 = torch.tensor([n1[0] + n1[1], -n1[0] + n1[1]]) + torch.tensor([label[0], 3 * label[1]]) + torch.tensor([0.5, 0.0])
    h1_1 = 0.3 * h1_0 + 0.7 * torch.relu(z1)
    h2_1 = 0.3 * h2_0 + 0.7 * torch.relu(z2)
    torch.testing.assert_close(history[1][0][0], h1_1)
    torch.testing.assert_close(history[1][1][0], h2_1)


def test_updates_are_the_derivative_of_each_layer_and_steps_own_objective():
    """With damping, dC/dz_l(t) is the derivative of layer l's FF log-likelihood at step t with the
    old state and the neighbours' states held fixed; the rule averages it over the trained steps."""
    cfg = replace(FFRecurrentConfig(), peer_norm=0.0, negatives="random", iterations=3, test_to=3,
                  threshold_per_unit=0.5)
    learner = FFRecurrentLearner(cfg, (6, 5), input_dim=12, num_classes=4, seed=0)
    fresh = FFRecurrentLearner(cfg, (6, 5), input_dim=12, num_classes=4, seed=0)
    x = torch.rand(8, 12, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 4
    state = learner.generator.get_state()
    learner.train_batch(x, y)
    fresh.generator.set_state(state)
    y_neg = (y + torch.randint(1, 4, y.shape, generator=fresh.generator)) % 4
    net = fresh.net
    params = [p.detach().clone().requires_grad_(True) for p in [*net.up, *net.down, *net.bias]]
    up, down, bias = params[0:2], params[2:4], params[4:6]
    B = 8
    xx = normalize_rows(torch.cat([x, x]))
    top = torch.cat([net.label_layer(y), net.label_layer(y_neg)])
    with torch.no_grad():
        init = net.bottom_up(net.image_input(x))
    states = [torch.cat([s, s]) for s in init]
    total = 0.0
    for _ in range(3):
        normed = [normalize_rows(s) for s in states]
        z = [xx @ up[0] + normed[1] @ down[0] + bias[0], normed[0] @ up[1] + top @ down[1] + bias[1]]
        new = [0.3 * s + 0.7 * torch.relu(zl) for s, zl in zip(states, z)]
        for h in new:
            logit = h.square().sum(1) - 0.5 * h.shape[1]
            total = total + F.logsigmoid(logit[:B]).sum() + F.logsigmoid(-logit[B:]).sum()
        states = [h.detach() for h in new]  # no derivative through time
    grads = torch.autograd.grad(total, params)
    got = [p.grad for p in [*learner.net.up, *learner.net.down, *learner.net.bias]]
    for g_rule, g_auto in zip(got, grads):
        torch.testing.assert_close(g_rule, -0.5 * g_auto / (B * 3), rtol=1e-3, atol=1e-6)


def test_label_strength_scales_the_normalized_label_layer():
    net = RecurrentFFNet(input_dim=2, hidden=(2, 2), num_classes=4, label_strength=2.5)
    top = net.label_layer(torch.tensor([1, 3]))
    torch.testing.assert_close(top, 2.5 * 2.0 * F.one_hot(torch.tensor([1, 3]), 4).float())  # sqrt(4) * 2.5
    weak = RecurrentFFNet(input_dim=2, hidden=(2, 2), num_classes=4, label_strength=0.5)
    assert not torch.equal(weak.label_layer(torch.tensor([1])), net.label_layer(torch.tensor([1])))


def test_goodness_test_averages_iterations_three_to_five():
    learner = FFRecurrentLearner(FFRecurrentConfig(), (20, 10), input_dim=30, seed=0)
    x = torch.rand(4, 30)
    g = learner.goodness_by_step(x, 8)  # (4, 10, 8)
    torch.testing.assert_close(learner.goodness_scores(x), g[:, :, 2:5].mean(2))
    direct = learner.net.run(x[:1], torch.tensor([7]), 4)
    torch.testing.assert_close(g[0, 7, 3], sum(s.square().sum() for s in direct[4]))
    with pytest.raises(ValueError, match="test_from"):
        FFRecurrentLearner(replace(FFRecurrentConfig(), test_to=9), (5,), input_dim=30)


def test_bfloat16_products_give_the_float32_update_and_test_within_bf16_rounding():
    cfg = replace(FFRecurrentConfig(), negatives="random", iterations=3, test_to=3)
    exact = FFRecurrentLearner(cfg, (64, 48), input_dim=30, num_classes=4, seed=0)
    low = FFRecurrentLearner(replace(cfg, precision="bfloat16"), (64, 48), input_dim=30, num_classes=4, seed=0)
    x = torch.rand(16, 30, generator=torch.Generator().manual_seed(2))
    y = torch.arange(16) % 4
    scores = exact.goodness_scores(x), low.goodness_scores(x)
    assert not torch.equal(*scores)  # the bf16 path was taken...
    torch.testing.assert_close(scores[1], scores[0], rtol=2e-2, atol=1e-3)  # ...and is close
    exact.train_batch(x, y)
    low.train_batch(x, y)
    params = lambda learner: [*learner.net.up, *learner.net.down, *learner.net.bias]  # noqa: E731
    for p32, p16 in zip(params(exact), params(low)):
        assert p16.dtype == torch.float32 and p16.grad.dtype == torch.float32  # fp32 master weights
        assert (p16.grad - p32.grad).norm() <= 0.02 * p32.grad.norm()
