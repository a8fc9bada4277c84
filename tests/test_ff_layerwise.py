"""FF on dense or locally connected stacks: local updates, unsupervised without labels, black boxes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mortalnet.nets.ff import normalize_rows
from mortalnet.rules.ff_layerwise import FFLayerwiseConfig, FFLayerwiseLearner
from mortalnet.rules.ff_unsupervised import FFUnsupervisedConfig, FFUnsupervisedLearner


def local_cfg(cls=FFLayerwiseConfig, **kw):
    return replace(cls(), layer="local", kernel=5, tile=(7, 7), peer_norm=0.0, **kw)


def images(n=16, seed=1):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer", ["dense", "local"])
def test_updates_are_the_derivative_of_each_layers_own_objective(layer):
    """Supervised: every layer's update = -(temp/2)/B * d/dW of its own log-likelihood, with the
    input row [x, label pixels] normalized as a whole and the layer below held constant."""
    cfg = replace(FFLayerwiseConfig(), peer_norm=0.0, negatives="random", threshold_per_unit=0.5) \
        if layer == "dense" else local_cfg(negatives="random", threshold_per_unit=0.5)
    hidden = (20, 12) if layer == "dense" else (2, 2)
    learner = FFLayerwiseLearner(cfg, hidden, seed=0)
    x, y = images(), torch.arange(16) % 10
    # replay the step's negative labels: same generator state
    g_state = learner.generator.get_state()
    learner.train_batch(x, y)  # fills .grad (descent) without building a graph
    got = [(l.weight.grad.clone(), l.bias.grad.clone()) for l in learner.layers]
    got_label = learner.label_weight.grad.clone()
    learner.generator.set_state(g_state)
    y_neg = (y + torch.randint(1, 10, y.shape, generator=learner.generator)) % 10

    fresh = FFLayerwiseLearner(cfg, hidden, seed=0)  # same initial weights
    B = 16
    rows = torch.cat([torch.cat([x, F.one_hot(y, 10).float()], 1), torch.cat([x, F.one_hot(y_neg, 10).float()], 1)])
    h = normalize_rows(rows)  # (2B, 794)
    for i, l in enumerate(fresh.layers):
        W = l.weight.detach().clone().requires_grad_(True)
        b = l.bias.detach().clone().requires_grad_(True)
        params = [W, b]
        if i == 0:
            Wl = fresh.label_weight.detach().clone().requires_grad_(True)
            params.append(Wl)
            if layer == "dense":
                z = h[:, :784] @ W + h[:, 784:] @ Wl + b
            else:
                z = torch.bmm(l.patches_t(h[:, :784]).transpose(1, 2), W)
                z = l._from_tiles(z) + h[:, 784:] @ Wl + b
        else:
            z = l._from_tiles(torch.bmm(l.patches_t(h).transpose(1, 2), W)) + b if layer == "local" else h @ W + b
        s = torch.relu(z)
        logit = s.square().sum(1) - 0.5 * s.shape[1]
        obj = F.logsigmoid(logit[:B]).sum() + F.logsigmoid(-logit[B:]).sum()
        grads = list(torch.autograd.grad(obj, params))
        if layer == "local":
            grads[0] = grads[0] * l.mask  # the layer's weights exist only inside receptive fields
        torch.testing.assert_close(got[i][0], -0.5 * grads[0] / B, rtol=1e-3, atol=2e-5)
        torch.testing.assert_close(got[i][1], -0.5 * grads[1] / B, rtol=1e-3, atol=2e-5)
        if i == 0:
            torch.testing.assert_close(got_label, -0.5 * grads[2] / B, rtol=1e-3, atol=2e-5)
        h = normalize_rows(s.detach())


def test_unsupervised_ff_layers_never_see_the_labels():
    """Two runs that differ only in the labels end with identical FF layers (readouts differ)."""
    a = FFUnsupervisedLearner(FFUnsupervisedConfig(), (30, 20, 10), seed=4)
    b = FFUnsupervisedLearner(FFUnsupervisedConfig(), (30, 20, 10), seed=4)
    x = images(32)
    y = torch.arange(32) % 10
    for _ in range(4):
        a.train_batch(x, y)
        b.train_batch(x, (y * 7 + 3) % 10)
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.weight, lb.weight) and torch.equal(la.bias, lb.bias)
    assert not torch.equal(a.readout[0], b.readout[0])
    assert a.label_weight.numel() == 0  # no label input at all
    assert set(a.evaluate(x, y)) == {"error_softmax"}


def test_unsupervised_batch_of_one_image_trains_only_the_readout():
    """A hybrid needs two images: a last batch of one leaves the FF layers as they were."""
    learner = FFUnsupervisedLearner(FFUnsupervisedConfig(), (30, 20, 10), seed=4)
    x, y = images(17), torch.arange(17) % 10
    learner.train_batch(x[:16], y[:16])  # a full batch first, so the optimizers hold state
    before = [layer.weight.clone() for layer in learner.layers]
    readout = learner.readout[0].clone()
    learner.train_batch(x[16:], y[16:])
    assert all(torch.equal(layer.weight, w) for layer, w in zip(learner.layers, before))
    assert not torch.equal(learner.readout[0], readout)


def test_unsupervised_readout_uses_the_last_three_layers():
    learner = FFUnsupervisedLearner(FFUnsupervisedConfig(), (30, 20, 10, 8), seed=0)
    assert learner.readout_from == 1 and [w.shape[0] for w in learner.readout] == [20, 10, 8]
    with pytest.raises(ValueError, match="hybrid"):
        FFUnsupervisedLearner(replace(FFUnsupervisedConfig(), negatives="hard"), (10,))


def test_per_label_goodness_test_equals_brute_force():
    for cfg, hidden in [(FFLayerwiseConfig(), (20, 12, 8)), (local_cfg(), (2, 2))]:
        learner = FFLayerwiseLearner(cfg, hidden, seed=2)
        x = images(6)
        for _ in range(2):
            learner.train_batch(x, torch.arange(6))
        scores = learner.goodness_scores(x)
        brute = torch.stack([
            sum(s.square().sum(1) for s in learner.forward_states(x, torch.full((6,), k))[learner.goodness_from:])
            for k in range(10)], 1)
        torch.testing.assert_close(scores, brute, rtol=1e-4, atol=1e-3)


def test_local_unsupervised_learns_synthetic_digits(tiny_data):
    from mortalnet.training import TrainingConfig, fit

    cfg = replace(FFUnsupervisedLearner.quick_config(), layer="local", kernel=7, readout_layers=2)
    learner = FFUnsupervisedLearner(cfg, (2, 2), seed=0)
    before = learner.evaluate(*tiny_data.valid.tensors())["error_softmax"]
    fit(learner, tiny_data.train.tensors(), None,
        TrainingConfig(epochs=2, batch_size=50, progress=False, tensorboard=False), seed=0)
    after = learner.evaluate(*tiny_data.valid.tensors())["error_softmax"]
    assert after < 0.2 < before


def test_black_box_between_layers_has_no_gradient_path_and_ff_still_learns(tiny_data):
    import numpy as np

    from mortalnet.training import TrainingConfig, fit

    calls = []

    def box(h: torch.Tensor) -> torch.Tensor:  # an unknown function computed outside torch
        calls.append(1)
        a = h.detach().cpu().numpy()
        return torch.from_numpy(np.round(np.tanh(a) * 7) / 7).to(h.dtype)

    h = torch.randn(4, 8, requires_grad=True)
    assert box(h).grad_fn is None and not box(h).requires_grad  # nothing for autograd to follow
    learner = FFLayerwiseLearner(FFLayerwiseLearner.quick_config(), (64, 64), seed=0)
    learner.set_black_box(0, box)
    with pytest.raises(ValueError, match="between two hidden layers"):
        learner.set_black_box(1, box)
    fit(learner, tiny_data.train.tensors(), None,
        TrainingConfig(epochs=6, batch_size=50, progress=False, tensorboard=False, schedule="constant"), seed=0)
    assert calls  # the box was in the forward pass
    err = learner.evaluate(*tiny_data.valid.tensors())
    assert err["error_goodness"] < 0.25 and err["error_softmax"] < 0.05, err


def test_locally_connected_learner_checkpoints_round_trip():
    """state_tensors holds parameters, optimizer state and the generator; the fixed masks and
    gather indices are rebuilt from the shape, not stored."""
    cfg = local_cfg(FFUnsupervisedConfig)
    a = FFUnsupervisedLearner(cfg, (2, 2), seed=0)
    x, y = images(20), torch.arange(20) % 10
    a.train_batch(x, y)
    saved = {k: v.clone() for k, v in a.state_tensors().items()}
    assert not any("mask" in k or "index" in k for k in saved)
    b = FFUnsupervisedLearner(cfg, (2, 2), seed=5)
    b.load_state_tensors(saved)
    a.train_batch(x, y)
    b.train_batch(x, y)
    for (k, va), vb in zip(a.state_tensors().items(), b.state_tensors().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("negatives", ["hybrid", "random"])
def test_bfloat16_products_give_the_float32_update_and_scores_within_bf16_rounding(negatives):
    """rule.precision=bfloat16 (dense layers): states, the goodness test and every weight update stay
    within bf16 rounding of float32; master weights and their gradients stay float32."""
    Learner, Config = (FFUnsupervisedLearner, FFUnsupervisedConfig) if negatives == "hybrid" else \
        (FFLayerwiseLearner, FFLayerwiseConfig)
    cfg = replace(Config(), negatives=negatives)
    exact = Learner(cfg, (64, 48, 32), seed=0)
    low = Learner(replace(cfg, precision="bfloat16"), (64, 48, 32), seed=0)
    x, y = images(), torch.arange(16) % 10
    states = exact.forward_states(x), low.forward_states(x)
    for s32, s16 in zip(*states):
        assert not torch.equal(s32, s16)  # the bf16 path was taken...
        assert (s16 - s32).norm() <= 0.02 * s32.norm()  # ...and is close
    if negatives != "hybrid":
        torch.testing.assert_close(low.goodness_scores(x), exact.goodness_scores(x), rtol=2e-2, atol=1e-2)
    exact.train_batch(x, y)
    low.train_batch(x, y)  # same generator draws: same negatives
    params = lambda learner: [p for l in learner.layers for p in (l.weight, l.bias)]  # noqa: E731
    for p32, p16 in zip(params(exact), params(low)):
        assert p16.dtype == torch.float32 and p16.grad.dtype == torch.float32
        assert (p16.grad - p32.grad).norm() <= 0.02 * p32.grad.norm()
    # the copies follow the weights: after the step, products use the updated weights
    after, after32 = low.forward_states(x)[-1], exact.forward_states(x)[-1]
    assert (after - after32).norm() <= 0.02 * after32.norm()
    assert not torch.equal(after, states[1][-1])


def test_bfloat16_needs_dense_layers():
    with pytest.raises(ValueError, match="rule.layer=dense"):
        FFUnsupervisedLearner(local_cfg(FFUnsupervisedConfig, precision="bfloat16"), (2, 2))
