"""Perturbation estimators and rules: unbiased, variance ~ number of perturbed variables, no backprop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mortalnet.config import ConfigError
from mortalnet.hardware.interface import AnalogLayer, NoGradientError
from mortalnet.rules import create_rule
from mortalnet.rules.perturbation import (
    DigitalLayer,
    activity_perturbation,
    forward_layers,
    weight_perturbation,
)

PERTURBATION_RULES = ["weight-perturbation", "activity-perturbation", "local-losses"]


def half_square(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example quadratic loss 0.5 |out - target|^2: (N, C), (N, C) -> (N,)."""
    return 0.5 * (out - target).square().sum(1)


def quadratic_toy(n_in: int, n_out: int, batch: int = 8, seed: int = 0):
    """A linear digital layer with a quadratic loss; returns (layers, x, target, true dW, true db)."""
    g = torch.Generator().manual_seed(seed)
    layer = DigitalLayer(n_in, n_out, activation="linear")
    layer.program(torch.randn(n_in, n_out, generator=g) / n_in**0.5, torch.randn(n_out, generator=g) * 0.1)
    x = torch.randn(batch, n_in, generator=g)
    target = torch.randn(batch, n_out, generator=g)
    err = layer(x) - target  # (B, C) = dL_b/dz
    return [layer], x, target, x.T @ err / batch, err.mean(0)


def samples(estimator, layers, x, target, n: int, seed: int = 0, **kw) -> torch.Tensor:
    """n independent single-direction estimates, flattened (n, P)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        est = estimator(layers, x, target, generator=gen, directions=1, loss_fn=half_square, **kw)
        out.append(torch.cat([est.weight[0].flatten(), est.bias[0].flatten()]))
    return torch.stack(out)


@pytest.mark.parametrize("estimator, kw", [
    (weight_perturbation, {}),
    (activity_perturbation, {"mode": "layerwise"}),
    (activity_perturbation, {"mode": "simultaneous"}),
    (activity_perturbation, {"antithetic": False}),
])
def test_estimators_are_unbiased_on_a_quadratic(estimator, kw):
    layers, x, target, gw, gb = quadratic_toy(6, 4)
    truth = torch.cat([gw.flatten(), gb])
    s = samples(estimator, layers, x, target, 3000, sigma=1e-2, **kw).double()
    mean, se = s.mean(0), s.std(0) / math.sqrt(len(s))
    z = ((mean - truth.double()) / se).numpy()
    # each component within sampling error: z ~ N(0, 1) over the 28 components
    assert np.abs(z).max() < 4.5, z
    assert 0.4 < np.mean(z**2) < 1.8, np.mean(z**2)
    # and not trivially: the single estimates are noisy, their mean is close
    assert (s[0] - truth).norm() > 0.3 * truth.norm()
    assert (mean - truth).norm() < 0.2 * truth.norm()


def relative_variance(estimator, n_in: int, n_out: int, n: int = 300, **kw) -> float:
    layers, x, target, gw, gb = quadratic_toy(n_in, n_out, batch=1)
    truth = torch.cat([gw.flatten(), gb])
    s = samples(estimator, layers, x, target, n, sigma=1e-2, **kw)
    return ((s - truth).square().sum(1).mean() / truth.square().sum()).item()


def test_variance_grows_like_the_number_of_perturbed_variables():
    """Gaussian directions: E|g_hat - g|^2 = (N + 1)|g|^2 for N perturbed variables (slope 1 in log-log)."""
    widths = [4, 8, 16, 32, 64]
    # activity perturbation perturbs the n_out total inputs; one example, so N = n_out
    ap = [relative_variance(activity_perturbation, 5, w) for w in widths]
    slope_ap = np.polyfit(np.log(widths), np.log(ap), 1)[0]
    assert 0.8 < slope_ap < 1.2, (slope_ap, ap)
    # weight perturbation perturbs the n_in * n_out + n_out weights and biases
    wp = [relative_variance(weight_perturbation, 5, w) for w in widths]
    counts = [5 * w + w for w in widths]
    slope_wp = np.polyfit(np.log(counts), np.log(wp), 1)[0]
    assert 0.8 < slope_wp < 1.2, (slope_wp, wp)
    # at equal width, weight perturbation is noisier by about the fan-in factor (here fan-in + 1 = 6)
    ratio = np.mean(np.array(wp) / np.array(ap))
    assert 3.5 < ratio < 9.0, ratio


def test_relu_mlp_estimates_converge_to_the_true_gradient():
    """On a ReLU MLP with cross-entropy, the average of many estimates points along autograd's gradient."""
    g = torch.Generator().manual_seed(0)
    dims = [20, 16, 16, 5]
    layers = [DigitalLayer(a, b, "relu" if i < 2 else "linear") for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
    ws = [torch.randn(a, b, generator=g) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(b, generator=g) * 0.1 for b in dims[1:]]
    for layer, w, b in zip(layers, ws, bs):
        layer.program(w, b)
    x, y = torch.randn(32, 20, generator=g), torch.randint(0, 5, (32,), generator=g)
    # the truth, by autograd on a separate copy (measurement only)
    params = [t.clone().requires_grad_(True) for t in ws + bs]
    h = x
    for i in range(3):
        h = h @ params[i] + params[3 + i]
        h = torch.relu(h) if i < 2 else h
    torch.nn.functional.cross_entropy(h, y).backward()
    truth = torch.cat([p.grad.flatten() for p in params])
    gen = torch.Generator().manual_seed(1)
    for est_fn, kw in [(activity_perturbation, {"mask_inactive": True}), (activity_perturbation, {"mode": "simultaneous"}),
                       (weight_perturbation, {})]:
        est = est_fn(layers, x, y, sigma=1e-3, directions=4000, generator=gen, **kw)
        flat = torch.cat([t.flatten() for t in est.weight + est.bias])
        cos = torch.nn.functional.cosine_similarity(flat, truth, dim=0).item()
        assert cos > (0.95 if est_fn is activity_perturbation else 0.6), (est_fn.__name__, kw, cos)


def test_digital_layer_refuses_gradients_and_bad_shapes():
    layer = DigitalLayer(3, 2)
    assert isinstance(layer, AnalogLayer)
    with pytest.raises(NoGradientError):
        layer(torch.ones(1, 3, requires_grad=True))
    # forward-mode AD and torch.func transforms are refused too: no derivative through a black box
    import torch.autograd.forward_ad as fwAD

    x = torch.ones(2, 3)
    with fwAD.dual_level():
        with pytest.raises(NoGradientError, match="x carries a forward-mode tangent"):
            layer(fwAD.make_dual(x, torch.ones_like(x)))
        with pytest.raises(NoGradientError, match="total_input_perturbation carries a forward-mode tangent"):
            layer(x, total_input_perturbation=fwAD.make_dual(torch.zeros(2, 2), torch.ones(2, 2)))
    with pytest.raises(NoGradientError, match="total_input_perturbation comes from inside a torch.func transform"):
        torch.func.jvp(lambda p: layer(x, total_input_perturbation=p), (torch.zeros(2, 2),), (torch.ones(2, 2),))
    with pytest.raises(NoGradientError, match="x comes from inside a torch.func transform"):
        torch.func.jacfwd(layer.forward)(x)
    with pytest.raises(ValueError, match=r"x has shape \(1, 4\), expected \(B, 3\)"):
        layer(torch.ones(1, 4))
    with pytest.raises(ValueError, match="total_input_perturbation"):
        layer(torch.ones(2, 3), total_input_perturbation=torch.ones(2, 3))


class SpyLayer:
    """A black box: an unknown per-neuron nonlinearity, only the device interface, no weights to read.

    Counts forward passes and refuses inputs that require grad.
    """

    def __init__(self, inner: DigitalLayer, seed: int):
        g = torch.Generator().manual_seed(seed)
        self._inner = inner
        self._gain = 0.7 + 0.6 * torch.rand(inner.out_features, generator=g)  # hidden from the learner
        self.in_features, self.out_features = inner.in_features, inner.out_features
        self.calls = 0

    def forward(self, x, input_perturbation=None, total_input_perturbation=None):
        if x.requires_grad or torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (input_perturbation, total_input_perturbation)
        ):
            raise NoGradientError("spy: no gradients through a device")
        self.calls += 1
        out = self._inner.forward(x, input_perturbation, total_input_perturbation)
        return out * self._gain if self._inner.activation == "relu" else out

    __call__ = forward

    def request_update(self, dw, db=None):
        self._inner.request_update(dw, db)

    def nominal_weights(self):
        return self._inner.nominal_weights()

    def program(self, w, b):
        self._inner.program(w, b)


@pytest.mark.parametrize("name", PERTURBATION_RULES)
def test_rules_learn_through_black_boxes_without_any_backward(name, tiny_data, monkeypatch):
    learner = create_rule(name, _quick(name), hidden=(32, 32), seed=0)
    spies = [SpyLayer(layer, i) for i, layer in enumerate(learner.layers)]
    del learner.layers
    learner.layers = spies  # replace the layers by black boxes (same nominal weights)

    def refuse(*args, **kwargs):
        raise AssertionError("a perturbation rule called autograd")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    x, y = tiny_data.train.tensors()
    before = learner.evaluate(*tiny_data.valid.tensors())["error"]
    for epoch in range(3):
        for i in range(0, 2000, 50):
            learner.train_batch(x[i : i + 50], y[i : i + 50])
    after = learner.evaluate(*tiny_data.valid.tensors())["error"]
    assert all(s.calls > 0 for s in spies)
    assert not any(p.requires_grad for p in learner.parameters())
    assert after < 0.5 * before and after < 0.3, (before, after)


def test_local_losses_groups_change_noise_not_the_expectation():
    """Grouping only removes other groups' noise: the mean estimate is the whole block's local-loss gradient."""
    from mortalnet.rules.local_losses import LocalLossesConfig

    x = torch.rand(16, 30, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    means, norms = {}, {}
    for gs in (4, 24):
        cfg = LocalLossesConfig(group_size=gs, directions=3000, sigma=1e-3, mask_inactive=False)
        learner = create_rule("local-losses", cfg, hidden=(24,), input_dim=30, seed=0)
        with torch.no_grad():  # give the head something to say
            learner.head_w[0].copy_(torch.randn(24, 10, generator=torch.Generator().manual_seed(1)))
        est = learner.estimate(x, y)
        means[gs] = est.weight[0].flatten()
        one = create_rule("local-losses", LocalLossesConfig(group_size=gs, directions=1, mask_inactive=False),
                          hidden=(24,), input_dim=30, seed=0)
        with torch.no_grad():
            one.head_w[0].copy_(learner.head_w[0])
        norms[gs] = torch.stack([one.estimate(x, y).weight[0].flatten() for _ in range(200)]).var(0).sum()
    cos = torch.nn.functional.cosine_similarity(means[4], means[24], dim=0).item()
    assert cos > 0.97, cos
    assert norms[4] < 0.5 * norms[24], (norms[4], norms[24])


def test_bad_options_give_clear_errors():
    from mortalnet.rules.activity_perturbation import ActivityPerturbationConfig
    from mortalnet.rules.local_losses import LocalLossesConfig

    with pytest.raises(ValueError, match="sigma"):
        create_rule("activity-perturbation", ActivityPerturbationConfig(sigma=0.0), hidden=(8,))
    with pytest.raises(ValueError, match="directions"):
        create_rule("activity-perturbation", ActivityPerturbationConfig(directions=0), hidden=(8,))
    with pytest.raises(ValueError, match="group_size=16 must divide every block width; \\[24\\]"):
        create_rule("local-losses", LocalLossesConfig(group_size=16), hidden=(32, 24))
    with pytest.raises(ValueError, match="unknown hardware 'quantum'"):
        create_rule("activity-perturbation", ActivityPerturbationConfig(hardware="quantum"), hidden=(8,))


def _quick(name):
    from mortalnet.rules import RULES

    return RULES.get(name).quick_config()


def test_forward_layers_returns_every_activity():
    layers = [DigitalLayer(4, 3), DigitalLayer(3, 2, "linear")]
    acts = forward_layers(layers, torch.ones(5, 4))
    assert [tuple(a.shape) for a in acts] == [(5, 4), (5, 3), (5, 2)]


@pytest.mark.parametrize("estimator, kw", [
    (weight_perturbation, {}),
    (activity_perturbation, {"mode": "layerwise"}),
    (activity_perturbation, {"mode": "simultaneous"}),
])
def test_jvp_forward_gradient_matches_finite_differences(estimator, kw):
    """On an exact (digital) model, jvp gives the same directional derivatives as central differences:
    exactly so on a quadratic, and to O(sigma^2) on a ReLU net away from kinks."""
    layers, x, target, _, _ = quadratic_toy(6, 4)
    fd = estimator(layers, x, target, 1e-2, 3, torch.Generator().manual_seed(5), loss_fn=half_square, **kw)
    jv = estimator(layers, x, target, 1e-2, 3, torch.Generator().manual_seed(5), loss_fn=half_square,
                   estimator="jvp", **kw)
    for a, b in zip(fd.weight + fd.bias, jv.weight + jv.bias):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), (a - b).abs().max()
    g = torch.Generator().manual_seed(0)
    net = [DigitalLayer(20, 16), DigitalLayer(16, 5, "linear")]
    for layer in net:
        layer.program(torch.randn(layer.in_features, layer.out_features, generator=g) / 4, torch.zeros(layer.out_features))
    x, y = torch.randn(8, 20, generator=g), torch.randint(0, 5, (8,), generator=g)
    fd = estimator(net, x, y, 1e-4, 2, torch.Generator().manual_seed(3), **kw)
    jv = estimator(net, x, y, 1e-4, 2, torch.Generator().manual_seed(3), estimator="jvp", **kw)
    flat = [torch.cat([t.flatten() for t in e.weight + e.bias]) for e in (fd, jv)]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.999


def test_jvp_needs_an_exact_model():
    from mortalnet.rules.activity_perturbation import ActivityPerturbationConfig

    with pytest.raises(ConfigError, match="needs an exact model"):  # refused when the learner is built
        create_rule("activity-perturbation", ActivityPerturbationConfig(hardware="ideal", estimator="jvp"),
                    hidden=(8,), input_dim=12, seed=0)
    digital = create_rule("activity-perturbation", ActivityPerturbationConfig(estimator="jvp"), hidden=(8,),
                          input_dim=12, seed=0)
    assert torch.isfinite(digital.train_batch(torch.rand(4, 12), torch.arange(4))["loss"])
