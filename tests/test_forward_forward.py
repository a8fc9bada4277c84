"""Supervised Forward-Forward: local gradients, no cross-layer derivative, negatives, test procedures."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mortalnet.nets.ff import embed_label, neutral_label, normalize_rows, one_hot
from mortalnet.rules.forward_forward import FFConfig, FFLearner


def tiny(seed=0, **cfg) -> FFLearner:
    return FFLearner(replace(FFConfig(), **cfg), hidden=(12, 10, 8), input_dim=30, num_classes=10, seed=seed)


def images(n=16, d=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g)


def test_normalize_rows_and_label_embedding():
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    n = normalize_rows(x)
    assert torch.allclose(n[0].square().mean(), torch.tensor(1.0))
    assert torch.equal(n[1], torch.zeros(4))  # an all-zero row stays zero, no NaN
    imgs = torch.rand(3, 30) + 1.0
    lab = one_hot(torch.tensor([0, 4, 9]), strength=1.0)
    x = embed_label(imgs, lab)
    assert torch.equal(x[:, :10], lab) and torch.equal(x[:, 10:], imgs[:, 10:])
    assert torch.equal(x[1, :10], torch.tensor([0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0]))
    assert torch.allclose(neutral_label(2), torch.full((2, 10), 0.1))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_local_gradients_match_the_derivative_of_the_ff_objective(temperature):
    """ffnew.m's update is temp/2 times the gradient of sum log p(pos) + sum log(1 - p(neg))."""
    learner = tiny(peer_norm=0.0, temperature=temperature, threshold_per_unit=0.3)
    x = images()
    y = torch.arange(16) % 10
    x_pos, x_neg = embed_label(x, one_hot(y)), embed_label(x, one_hot((y + 3) % 10))
    grads_w, grads_b = learner.local_gradients(x_pos, x_neg)

    B = len(x)
    h = normalize_rows(torch.cat([x_pos, x_neg]))
    for layer, gw, gb in zip(learner.net.layers, grads_w, grads_b):
        W = layer.weight.detach().clone().requires_grad_(True)
        b = layer.bias.detach().clone().requires_grad_(True)
        s = torch.relu(h @ W + b)
        logit = (s.square().sum(1) - 0.3 * s.shape[1]) / temperature
        objective = torch.nn.functional.logsigmoid(logit[:B]).sum() + torch.nn.functional.logsigmoid(-logit[B:]).sum()
        dW, db = torch.autograd.grad(objective, (W, b))
        # descent gradient = -(temp / 2) * d objective / B
        torch.testing.assert_close(gw, -(temperature / 2) * dW / B, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gb, -(temperature / 2) * db / B, rtol=1e-4, atol=1e-6)
        h = normalize_rows(s.detach())


@pytest.mark.parametrize("fast", [True, False])
def test_no_gradient_reaches_a_lower_layer_from_a_higher_layer(fast):
    """Changing the upper layers changes nothing in layer 1's update."""
    a = tiny(seed=3, negatives="random", fast=fast)
    b = tiny(seed=3, negatives="random", fast=fast)
    with torch.no_grad():
        for layer in b.net.layers[1:]:
            layer.weight.add_(torch.randn_like(layer.weight))
    w2_before = b.net.layers[1].weight.clone() - a.net.layers[1].weight
    x, y = images(), torch.arange(16) % 10
    a.train_batch(x, y)
    b.train_batch(x, y)
    torch.testing.assert_close(a.net.layers[0].weight, b.net.layers[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(a.net.layers[0].bias, b.net.layers[0].bias, rtol=0, atol=0)
    w2_after = b.net.layers[1].weight - a.net.layers[1].weight
    assert not torch.allclose(w2_before, w2_after)  # layer 2's own updates did differ


def test_training_never_builds_an_autograd_graph(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a Forward-Forward step called autograd")

    learners = [tiny(fast=fast) for fast in (True, False)]  # built first: optimizers import torch._dynamo lazily
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    for learner in learners:
        before = [p.clone() for p in learner.parameters()]
        assert all(not p.requires_grad for p in learner.parameters())
        for _ in range(2):  # the readout is zero at first: a second step makes it matter
            learner.train_batch(images(), torch.arange(16) % 10)
        assert not torch.equal(before[0], learner.net.layers[0].weight)
        assert all(not torch.equal(b, p) for b, p in zip(before, learner.parameters()))  # every weight learned
        assert all(not p.requires_grad for p in learner.parameters())
        for p in learner.parameters():
            assert p.grad is None or p.grad.grad_fn is None


@pytest.mark.parametrize("optimizer", ["smoothed-sgd", "sgd", "adam"])
def test_fast_path_equals_straightforward_path_for_every_optimizer(optimizer):
    cfg = dict(optimizer=replace(FFConfig().optimizer, name=optimizer, lr=0.003))
    a, b = tiny(seed=5, **cfg), tiny(seed=5, fast=False, **cfg)
    x, y = images(32), torch.arange(32) % 10
    for _ in range(3):
        a.train_batch(x, y)
        b.train_batch(x, y)
    for (k, pa), pb in zip(a.state_tensors().items(), b.state_tensors().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=k)


def test_hard_negatives_never_carry_the_true_label():
    learner = tiny()
    y = torch.arange(1000) % 10
    logits = torch.randn(1000, 10)
    logits[torch.arange(1000), y] += 40.0  # the model is sure of the true label
    for _ in range(5):
        neg = learner._sample_negative_labels(logits, y)
        assert not (neg == y).any()
    random = tiny(negatives="random")
    for _ in range(5):
        assert not (random._sample_negative_labels(logits, y) == y).any()


def test_hard_negatives_follow_the_softmax_over_wrong_labels():
    learner = tiny()
    n = 20000
    y = torch.zeros(n, dtype=torch.long)
    logits = torch.tensor([0.0, 2.0, 1.0, 0, 0, 0, 0, 0, 0, 0]).repeat(n, 1)
    neg = learner._sample_negative_labels(logits, y)
    freq = torch.bincount(neg, minlength=10).float() / n
    expected = torch.softmax(logits[0, 1:], 0)
    torch.testing.assert_close(freq[1:], expected, atol=0.015, rtol=0)
    assert freq[0] == 0


def test_per_label_goodness_test_equals_brute_force():
    learner = tiny(seed=2)
    x = images(25)
    for _ in range(3):
        learner.train_batch(x, torch.arange(25) % 10)
    fast = learner.goodness_scores(x)
    brute = torch.stack([
        sum(s.square().sum(1) for s in learner.net.forward_states(
            embed_label(x, one_hot(torch.full((25,), k)))
        )[learner.cfg.goodness_from:])
        for k in range(10)
    ], dim=1)
    torch.testing.assert_close(fast, brute, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(learner.goodness_scores_reference(x), brute)


def test_softmax_test_is_one_neutral_pass_into_the_readout():
    learner = tiny(seed=2)
    x = images(25)
    for _ in range(3):
        learner.train_batch(x, torch.arange(25) % 10)
    states = learner.net.forward_states(embed_label(x, neutral_label(25)))
    normed = [normalize_rows(s) for s in states]
    manual = sum(h @ w for h, w in zip(normed[1:], learner.net.readout))
    torch.testing.assert_close(learner.softmax_logits(x), manual)


def test_peer_normalization_revives_a_dead_unit():
    for peer, expect_change in [(0.03, True), (0.0, False)]:
        learner = tiny(seed=0, peer_norm=peer, negatives="random")
        with torch.no_grad():
            learner.net.layers[0].bias[3] = -8.0  # unit 3 of layer 1 never fires
        for _ in range(20):
            learner.train_batch(images(), torch.arange(16) % 10)
        moved = learner.net.layers[0].bias[3].item() - (-8.0)
        assert (moved > 0) == expect_change, (peer, moved)


@pytest.mark.parametrize("fast", [True, False])
def test_mean_states_track_positive_activity(fast):
    """m <- d m + (1 - d) mean over the batch of layer 1's states on the positive (true-label) inputs."""
    d = 0.7
    learner = tiny(seed=0, peer_decay=d, fast=fast)
    x, y = images(), torch.arange(16) % 10
    before = learner.net.mean_states(0).clone()
    layer = learner.net.layers[0]
    h = normalize_rows(embed_label(x, one_hot(y)))  # positive rows, weights before the step
    positive = torch.relu(h @ layer.weight + layer.bias)
    assert positive.gt(0).any() and not torch.allclose(positive.mean(0), before)
    learner.train_batch(x, y)
    torch.testing.assert_close(learner.net.mean_states(0), d * before + (1 - d) * positive.mean(0),
                               rtol=1e-5, atol=1e-6)


def test_ff_learns_tiny_synthetic_digits(tiny_data):
    from mortalnet.training import TrainingConfig, fit

    learner = FFLearner(replace(FFConfig(), optimizer=replace(FFConfig().optimizer, lr=0.03)), (200, 200), seed=0)
    x, y = tiny_data.train.tensors()
    vx, vy = tiny_data.valid.tensors()
    before = learner.evaluate(vx, vy)
    fit(learner, (x, y), None, TrainingConfig(epochs=4, batch_size=50, progress=False, tensorboard=False), seed=0)
    after = learner.evaluate(vx, vy)
    assert before["error_goodness"] > 0.6
    assert after["error_goodness"] < 0.25 and after["error_softmax"] < 0.25, after


def test_bfloat16_products_stay_close_to_float32():
    """bf16 products (fp32 masters and accumulation) track the fp32 step within bf16 rounding."""
    a, b = tiny(seed=4), tiny(seed=4, precision="bfloat16")
    x, y = images(64), torch.arange(64) % 10
    a.train_batch(x, y)
    b.train_batch(x, y)
    for pa, pb in zip(a.net.layers, b.net.layers):
        torch.testing.assert_close(pb.weight, pa.weight, rtol=0, atol=2e-3)
    sa, sb = a.goodness_scores(x), b.goodness_scores(x)
    torch.testing.assert_close(sb, sa, rtol=3e-2, atol=3e-2 * sa.abs().mean().item())
    assert (sa.argmax(1) == sb.argmax(1)).float().mean() > 0.9


def test_bfloat16_and_int8_learn_like_float32(tiny_data):
    """Mean over 4 seeds (single toy runs scatter by several points either way)."""
    from mortalnet.training import TrainingConfig, fit

    x, y = tiny_data.train.tensors()
    vx, vy = tiny_data.valid.tensors()
    mean_err = {}
    for precision in ("float32", "bfloat16", "int8"):
        errs = []
        for seed in range(4):
            learner = FFLearner(replace(FFLearner.quick_config(), precision=precision), (200, 200), seed=seed)
            fit(learner, (x, y), None, TrainingConfig(epochs=4, batch_size=50, progress=False, tensorboard=False),
                seed=seed)
            errs.append(learner.evaluate(vx, vy)["error_goodness"])
        mean_err[precision] = sum(errs) / len(errs)
    assert mean_err["float32"] < 0.05, mean_err
    assert abs(mean_err["bfloat16"] - mean_err["float32"]) < 0.04 and abs(mean_err["int8"] - mean_err["float32"]) < 0.04, mean_err


def test_goodness_shortlist_scores_only_the_softmax_top_k():
    learner = tiny(seed=2, goodness_shortlist=3)
    exact = tiny(seed=2)
    x = images(25)
    for _ in range(3):
        learner.train_batch(x, torch.arange(25) % 10)
        exact.train_batch(x, torch.arange(25) % 10)
    short = learner.goodness_scores(x)
    full = exact.goodness_scores(x)
    top3 = learner.softmax_logits(x).topk(3, dim=1).indices
    kept = torch.zeros_like(short, dtype=torch.bool).scatter_(1, top3, True)
    assert torch.isinf(short[~kept]).all()
    torch.testing.assert_close(short[kept], full[kept], rtol=1e-5, atol=1e-4)
    plain = replace(learner.cfg, fast=False)  # the naive C-pass test honours the shortlist too
    learner.cfg = plain
    torch.testing.assert_close(learner.goodness_scores(x), short, rtol=1e-5, atol=1e-4)


def test_without_readout_layers_train_the_same_and_only_goodness_is_tested():
    a = tiny(seed=6, negatives="random")
    b = tiny(seed=6, negatives="random", readout=False)
    x, y = images(), torch.arange(16) % 10
    for _ in range(3):
        a.train_batch(x, y)
        b.train_batch(x, y)
    for la, lb in zip(a.net.layers, b.net.layers):
        torch.testing.assert_close(la.weight, lb.weight)
    assert set(b.evaluate(x, y)) == {"error_goodness"}
    with pytest.raises(ValueError, match="need the softmax readout"):
        tiny(readout=False)  # hard negatives need it


def step_eager_and_compiled(precision: str, same_layers) -> FFLearner:
    """Four steps (lr changing between them) of an eager and a compiled (rule.compile_update) tiny
    learner of `precision` on the same data; after each, the metrics and running means must agree
    and same_layers(eager, compiled) checks the layers. Returns the compiled learner."""
    eager, compiled = tiny(seed=5, precision=precision), tiny(seed=5, precision=precision, compile_update=True)
    for step in range(4):
        x, y = images(32, seed=step), torch.arange(32) % 10
        metrics = {}
        for learner in (eager, compiled):
            learner.set_lr_scale(1.0 - 0.2 * step)
            metrics[learner is compiled] = learner.train_batch(x, y)
        assert metrics[True].keys() == metrics[False].keys()
        assert all(torch.isfinite(v).all() for v in metrics[True].values())
        for key, value in metrics[False].items():
            torch.testing.assert_close(metrics[True][key], value, rtol=1e-4, atol=1e-5)
        for i in range(3):
            torch.testing.assert_close(compiled.net.mean_states(i), eager.net.mean_states(i), rtol=1e-5, atol=1e-6)
        same_layers(eager, compiled)
    return compiled


def test_compiled_update_equals_the_eager_bf16_update(monkeypatch):
    """rule.compile_update: the compiled passes (each layer's states, signal and update) give the
    eager bf16 step's weights, smoothed gradients, running means and metrics to float rounding, over
    several steps (lr changing between them)."""
    import mortalnet.rules.ff_update as ff_update

    calls = []
    run = ff_update._run_compiled
    monkeypatch.setattr(ff_update, "_run_compiled", lambda *args: calls.append(args[1][-1].shape) or run(*args))
    def same_layers(eager, compiled):
        for pe, pc in zip(eager.net.layers, compiled.net.layers):
            torch.testing.assert_close(pc.weight, pe.weight, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(compiled.optimizers[0].state[pc.weight]["smoothed_grad"],
                                       eager.optimizers[0].state[pe.weight]["smoothed_grad"], rtol=1e-5, atol=1e-6)

    compiled = step_eager_and_compiled("bfloat16", same_layers)
    # every layer takes the compiled pass every step, layer 1 with its label rows
    assert calls == [(30, 12), (12, 10), (10, 8)] * 4
    # the bf16 copies the passes returned are the weights'
    for layer, copy in zip(compiled.net.layers, compiled._matmul_weights()):
        assert copy is compiled._weight_copies.get(layer.weight) and torch.equal(copy, layer.weight.to(torch.bfloat16))


def test_compiled_update_weight_copies_are_dropped_when_a_weight_changes():
    """The bf16 copies the compiled update writes serve the next step only while the fp32 weight is
    untouched; any other write (a checkpoint load, a hand edit) makes the learner convert afresh."""
    learner = tiny(seed=6, precision="bfloat16", compile_update=True)
    learner.train_batch(images(32), torch.arange(32) % 10)
    w = learner.net.layers[1].weight
    cached = learner._matmul_weights()[1]
    assert cached is learner._weight_copies.get(w)  # the copy the compiled update kept
    torch.testing.assert_close(cached, w.to(torch.bfloat16), rtol=0, atol=0)
    with torch.no_grad():
        w.add_(1.0)
    fresh = learner._matmul_weights()[1]
    assert fresh is not cached
    torch.testing.assert_close(fresh, w.to(torch.bfloat16), rtol=0, atol=0)


def test_bf16_weight_copies_are_made_once_per_weight_state():
    """The bf16 test converts each weight once for all its chunks, and again after an update."""
    learner = tiny(seed=6, precision="bfloat16")
    x = images(40)
    learner.train_batch(x, torch.arange(40) % 10)
    first = learner._matmul_weights()
    scores = learner.goodness_scores(x)
    assert all(a is b for a, b in zip(first, learner._matmul_weights()))
    assert torch.equal(scores, learner.goodness_scores(x))
    learner.train_batch(x, torch.arange(40) % 10)
    after = learner._matmul_weights()
    assert all(a is not b for a, b in zip(first, after))
    for a, layer in zip(after, learner.net.layers):
        assert torch.equal(a, layer.weight.to(torch.bfloat16))


def test_compiled_update_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="compile_update"):
        tiny(compile_update=True)  # float32
    with pytest.raises(ValueError, match="compile_update"):
        tiny(compile_update=True, precision="bfloat16", fast=False)


def test_int8_product_is_exact_on_representable_operands_and_within_its_rounding_bound_otherwise():
    from mortalnet.nets.ff import int8_product, quantize_columns

    g = torch.Generator().manual_seed(0)
    # operands that int8 holds exactly: integers -127..127 times a per-row / per-column scale, each
    # row and column reaching 127 (so that its scale is the one quantization picks)
    qa = torch.randint(-127, 128, (5, 24), generator=g).float()
    qa[:, 0] = 127.0
    qw = torch.randint(-127, 128, (24, 9), generator=g).float()
    qw[0] = -127.0
    a, w = qa * torch.rand(5, 1, generator=g), qw * torch.rand(9, generator=g)
    q, scale = quantize_columns(w)
    assert q.dtype == torch.int8 and q.abs().amax(0).eq(127).all()
    torch.testing.assert_close(int8_product(a, q, scale), a.double() @ w.double(), rtol=1e-5, atol=1e-5, check_dtype=False)
    # any operands: within the error the two roundings allow (half a step each), and 5 rows (<= 16) pad fine
    a, w = torch.randn(5, 300, generator=g).relu(), torch.randn(300, 40, generator=g)
    q, scale = quantize_columns(w)
    row = a.abs().amax(1, keepdim=True) / 127
    bound = 0.5 * row * w.abs().sum(0) + 0.5 * a.abs() @ scale.expand(300, 40) + 0.25 * 300 * row * scale
    err = (int8_product(a, q, scale) - a @ w).abs()
    assert (err <= bound + 1e-4).all() and err.max() > 0
    assert err.norm() / (a @ w).norm() < 0.02  # ~1% for these operands (the roundings mostly cancel)


def test_int8_goodness_test_tracks_the_exact_one_and_requantizes_changed_weights():
    exact, int8 = tiny(seed=2), tiny(seed=2, test_precision="int8")
    x, y = images(40), torch.arange(40) % 10
    for _ in range(3):
        exact.train_batch(x, y)
        int8.train_batch(x, y)  # training is unchanged by test_precision
    for le, li in zip(exact.net.layers, int8.net.layers):
        torch.testing.assert_close(li.weight, le.weight, rtol=0, atol=0)
    se, si = exact.goodness_scores(x), int8.goodness_scores(x)
    assert not torch.equal(se, si)  # the int8 products did run
    torch.testing.assert_close(si, se, rtol=3e-2, atol=3e-2 * se.abs().mean().item())
    assert (se.argmax(1) == si.argmax(1)).float().mean() >= 0.9
    # quantized copies are made once per weight state: reused, then redone after an update
    first = int8._int8_weights()
    assert first[0] is None and all(a is b for a, b in zip(first[1:], int8._int8_weights()[1:]))
    int8.train_batch(x, y)
    second = int8._int8_weights()
    assert all(a is not b for a, b in zip(first[1:], second[1:]))
    from mortalnet.nets.ff import quantize_columns
    for (q, s), layer in zip(second[1:], int8.net.layers[1:]):
        assert torch.equal(q, quantize_columns(layer.weight)[0]) and torch.equal(s, quantize_columns(layer.weight)[1])
    # with a shortlist, the same labels are left out as in float32
    short, short8 = replace(exact.cfg, goodness_shortlist=3), replace(int8.cfg, goodness_shortlist=3)
    exact.cfg, int8.cfg = short, short8
    assert torch.equal(torch.isinf(exact.goodness_scores(x)), torch.isinf(int8.goodness_scores(x)))


def test_int8_workspace_reuses_buffers_and_changes_no_number():
    """int8_product's workspace (the buffers the int8 test reuses) gives the same bits as fresh
    tensors, also when the input is the previous call's result (the buffer being overwritten)."""
    from mortalnet.nets.ff import int8_product, quantize_columns

    g = torch.Generator().manual_seed(3)
    a, w, bias = torch.randn(40, 24, generator=g).relu(), torch.randn(24, 24, generator=g), torch.randn(24, generator=g)
    q, scale = quantize_columns(w)
    workspace = {}
    first = int8_product(a, q, scale, bias=bias, workspace=workspace)
    assert torch.equal(first, int8_product(a, q, scale, bias=bias))
    expected = int8_product(first.clone(), q, scale, bias=bias)
    again = int8_product(first, q, scale, bias=bias, workspace=workspace)  # reads `first`, then overwrites it
    assert again is first and torch.equal(again, expected) and len(workspace) == 4
    # the learner's int8 test: the same scores with its workspace as with fresh tensors, chunk after chunk
    learner = tiny(seed=2, test_precision="int8")
    x = images(40)
    learner.train_batch(x, torch.arange(40) % 10)
    with_ws = [learner.goodness_scores(x[:25]), learner.goodness_scores(x[25:])]  # 250 then 150 rows
    learner._int8_workspace = None
    assert all(torch.equal(s, learner.goodness_scores(c)) for s, c in zip(with_ws, (x[:25], x[25:])))


def test_int8_test_is_refused_off_the_fast_path():
    with pytest.raises(ValueError, match="test_precision=int8"):
        tiny(test_precision="int8", fast=False)


def test_int8_training_products_match_the_quantized_operands_exactly():
    """rule.precision=int8: the weight rounded per input unit, the activities (times those scales)
    per row, the gradient signal per output unit; given those roundings, both products are exact."""
    from mortalnet.nets.ff import int8_product, quantize_activity_rows, quantize_columns, quantize_weight_rows

    g = torch.Generator().manual_seed(4)
    w, a = torch.randn(30, 20, generator=g), torch.randn(40, 30, generator=g).relu()
    q, in_scale = quantize_weight_rows(w)
    assert q.dtype == torch.int8 and q.abs().amax(1).eq(127).all() and in_scale.shape == (30,)
    assert ((q.float() * in_scale[:, None] - w).abs() <= 0.5 * in_scale[:, None] + 1e-7).all()  # half a step per row
    qa, row = quantize_activity_rows(a, in_scale)
    w_hat, a_hat = q.double() * in_scale[:, None].double(), qa.double() * row.double() / in_scale.double()
    torch.testing.assert_close(int8_product(a, q, None, in_scale=in_scale), (a_hat @ w_hat).float(), rtol=1e-5, atol=1e-5)
    assert (int8_product(a, q, None, in_scale=in_scale) - a @ w).norm() / (a @ w).norm() < 0.02
    # the gradient product a^T s as GradientSink.int8_product forms it: diag(1 / in_scale) qa^T (row * s)
    s = torch.randn(40, 20, generator=g)
    learner = FFLearner(replace(FFConfig(), precision="int8"), hidden=(30, 20), input_dim=30)  # layer 2: (30, 20)
    sink = learner.gradient_sink()
    p = learner.net.layers[1].weight
    qs, col = quantize_columns(s * row)
    sink.int8_product(p, qa, qs, col, in_scale, -0.5)
    expected = -0.5 * (1 - 0.9) * (qa.double().T @ qs.double()) * col.double() / in_scale[:, None].double()
    buf = learner.optimizers[0].state[p]["smoothed_grad"]
    torch.testing.assert_close(buf.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(buf, -0.05 * a.T @ s, rtol=0.05, atol=0.05 * (a.T @ s).abs().mean().item())


def test_int8_training_step_tracks_the_float_step():
    """One step from the same weights: the int8 step's weight changes are the bf16 step's to about
    the rounding of its operands (layer 1, bf16 in both, exactly), and its metrics agree."""
    x, y = images(64, seed=3), torch.arange(64) % 10
    errors = []
    for seed in range(3):
        # random negatives: the same wrong labels (hard ones follow the neutral pass, int8 there too)
        ref, int8 = (tiny(seed=seed, precision=p, negatives="random") for p in ("bfloat16", "int8"))
        before = [l.weight.clone() for l in ref.net.layers]
        mr, mi = ref.train_batch(x, y), int8.train_batch(x, y)
        for i, (w0, lr_, li) in enumerate(zip(before, ref.net.layers, int8.net.layers)):
            dr, di = lr_.weight - w0, li.weight - w0
            if i == 0:
                assert torch.equal(di, dr)
            else:  # widths 10 and 8 here: a few % at most (wide layers average the roundings better)
                errors.append(((di - dr).norm() / dr.norm()).item())
                assert 0 < errors[-1] < 0.1
        for i in (2, 3):
            assert abs(mi[f"ff_loss/layer{i}"] - mr[f"ff_loss/layer{i}"]) < 0.02 * mr[f"ff_loss/layer{i}"]
    assert sum(errors) / len(errors) < 0.04, errors


def test_int8_training_learns_and_reuses_its_int8_weights():
    learner = tiny(seed=1, precision="int8")
    x, y = images(64, seed=0), torch.arange(64) % 10
    first = [learner.train_batch(x, y)[f"ff_loss/layer{i}"] for i in (1, 2, 3)]
    for _ in range(30):
        last = learner.train_batch(x, y)
    assert all(last[f"ff_loss/layer{i}"] < 0.7 * f for i, f in zip((1, 2, 3), first))
    # the int8 copies follow the weights: kept while a weight is unchanged, redone after a change
    w = learner.net.layers[2].weight
    cached = learner._matmul_weights()[2]
    assert cached is learner._matmul_weights()[2]
    from mortalnet.nets.ff import quantize_weight_rows
    with torch.no_grad():
        w.mul_(2.0)
    fresh = learner._matmul_weights()[2]
    assert fresh is not cached and all(torch.equal(a, b) for a, b in zip(fresh, quantize_weight_rows(w)))
    # the goodness test of an int8-trained learner is the int8 test (test_precision=int8)
    assert not torch.equal(learner.goodness_scores(x), replace_precision(learner, "bfloat16").goodness_scores(x))


def replace_precision(learner: FFLearner, precision: str) -> FFLearner:
    """A copy of a tiny learner with the same weights and another rule.precision."""
    other = tiny(seed=1, precision=precision)
    other.net.load_state_dict(learner.net.state_dict())
    return other


def test_compiled_int8_update_equals_the_eager_int8_update(monkeypatch):
    """rule.precision=int8 with compile_update: the compiled passes (roundings, the layer signal with
    peer normalization, the update) give the eager step's weights, running means and metrics, and
    the int8 copy the update returns is the one the next step multiplies."""
    import mortalnet.rules.ff_update as ff_update

    calls = []
    run = ff_update._run_compiled
    monkeypatch.setattr(ff_update, "_run_compiled", lambda *args: calls.append(args[0]) or run(*args))
    def same_layers(eager, compiled):
        for pe, pc in zip(eager.net.layers, compiled.net.layers):
            torch.testing.assert_close(pc.weight, pe.weight, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(pc.bias, pe.bias, rtol=1e-4, atol=1e-6)

    compiled = step_eager_and_compiled("int8", same_layers)
    assert calls == [False, True, True] * 4  # layer 1 the bf16 pass, layers 2 and 3 the int8 one
    from mortalnet.nets.ff import quantize_weight_rows
    for layer, (q, s) in zip(compiled.net.layers[1:], compiled._matmul_weights()[1:]):
        eq, es = quantize_weight_rows(layer.weight)
        assert (q.int() - eq.int()).abs().max() <= 1 and torch.allclose(s, es)


def test_int8_training_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="precision=int8"):
        tiny(precision="int8", fast=False)
    with pytest.raises(ValueError, match="CPU only"):
        FFLearner(replace(FFConfig(), precision="int8"), hidden=(12, 10), input_dim=30, device="meta")
    from mortalnet.experiments.ff_pipeline import FFPipelineConfig

    for mode in ("pipeline", "data-parallel"):
        with pytest.raises(ValueError, match="single-process"):
            FFPipelineConfig(mode=mode, rule=replace(FFConfig(negatives="random"), precision="int8"))


@pytest.mark.parametrize("kind", ["int8", "bfloat16"])
def test_gradient_products_share_one_buffer_safely(kind):
    """Equal-shape gradient products (int8_product's int32, lowp_product's bf16) are written into one
    workspace buffer (not a fresh 16 MB tensor per layer and step); a product still waiting there
    for its compiled update is applied before the next product overwrites it, so the updates are
    those of separate buffers."""
    from mortalnet.nets.ff import quantize_columns
    from mortalnet.optim import OptimizerConfig, make_optimizer
    from mortalnet.rules.ff_update import GradientSink

    gen = torch.Generator().manual_seed(0)
    qa = torch.randint(-127, 128, (20, 24), generator=gen, dtype=torch.int8)  # (N, D): D > 16, no padding
    signals = [torch.randn(20, 5, generator=gen) for _ in range(2)]  # (N, H) per parameter
    in_scale = torch.rand(24, generator=gen) + 0.5

    def run(workspace):
        params = [torch.nn.Parameter(torch.randn(24, 5, generator=torch.Generator().manual_seed(k))) for k in (1, 2)]
        opt = make_optimizer(OptimizerConfig(name="smoothed-sgd", lr=0.1, momentum=0.9, weight_decay=0.01), params)
        sink = GradientSink(opt, torch.bfloat16, compile_update=True, workspace=workspace)
        with torch.no_grad():
            for p, g in zip(params, signals):  # both products first, then both updates
                if kind == "int8":
                    sink.int8_product(p, qa, *quantize_columns(g), in_scale, -0.1)
                else:
                    sink.lowp_product(p, qa.T.to(torch.bfloat16), (g * sink.factor(p, -0.1)).to(torch.bfloat16))
            sink.done(*params)
        return [p.detach() for p in params]

    workspace: dict = {}
    shared, separate = run(workspace), run(None)
    assert len(workspace) == 1  # one buffer served both products
    for a, b in zip(shared, separate):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_compiled_int8_roundings_equal_the_eager_ones():
    """rule.compile_update rounds activities (round_activity_rows) and gradient signals
    (round_signal_columns) in compiled passes: bit for bit the eager roundings, all-zero rows included."""
    from mortalnet.nets.ff import (int8_scales, quantize_activity_rows, quantize_columns, round_activity_rows,
                                   round_signal_columns)
    from mortalnet.rules.ff_passes import call_compiled

    g = torch.Generator().manual_seed(7)
    a, in_scale = torch.randn(40, 30, generator=g).relu(), torch.rand(30, generator=g) + 0.1
    a[3] = 0.0  # a dead row: its scale is the smallest normal float, its integers 0
    signal, factor = torch.randn(40, 20, generator=g), torch.rand(40, 1, generator=g)
    qa, row = quantize_activity_rows(a, in_scale)
    qs, col = quantize_columns(signal * factor)
    for run in (lambda fn, *args: fn(*args), call_compiled):  # eager and compiled
        q, amax = run(round_activity_rows, a, in_scale)
        assert torch.equal(q, qa) and torch.equal(int8_scales(amax), row)
        q, amax = run(round_signal_columns, signal, factor)
        assert torch.equal(q, qs) and torch.equal(int8_scales(amax), col)
    assert qa[3].eq(0).all() and qa.abs().amax(1)[torch.arange(40) != 3].eq(127).all()


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_compile_update_without_a_working_compiler_says_so(monkeypatch, precision):
    """rule.compile_update where torch.compile cannot work (no C++ compiler): a clear error naming the
    option to turn off, raised before any weight has changed."""
    import mortalnet.rules.ff_passes as ff_passes

    def broken(fn):
        def call(*args):
            raise OSError("no C++ compiler found")
        return call

    monkeypatch.setattr(ff_passes, "compiled", broken)
    learner = tiny(seed=2, precision=precision, compile_update=True)
    before = [layer.weight.clone() for layer in learner.net.layers]
    with pytest.raises(RuntimeError, match="torch.compile failed .*run with rule.compile_update=false"):
        learner.train_batch(images(32), torch.arange(32) % 10)
    assert all(torch.equal(w, layer.weight) for w, layer in zip(before, learner.net.layers))
    if precision == "int8":  # the int8 goodness test is compiled too: the same clear error
        with pytest.raises(RuntimeError, match="torch.compile failed .*run with rule.compile_update=false"):
            learner.goodness_scores(images(4))


@pytest.mark.parametrize("shortlist,goodness_from", [(0, 1), (3, 1), (0, 0)])
def test_compiled_int8_goodness_test_equals_the_eager_one(monkeypatch, shortlist, goodness_from):
    """rule.test_precision=int8 with compile_update: layers 2..L of the per-label test run as one
    compiled pass (int8_goodness_pass) and score every label as the eager int8 test does (the same
    roundings; the fused epilogues to float rounding), shortlist and goodness_from included."""
    import mortalnet.rules.forward_forward as ff

    calls = []
    run = ff.call_compiled
    monkeypatch.setattr(ff, "call_compiled", lambda fn, *args: calls.append(fn.__name__) or run(fn, *args))
    cfg = dict(precision="bfloat16", test_precision="int8", goodness_shortlist=shortlist, goodness_from=goodness_from)
    learner = tiny(seed=7, compile_update=True, **cfg)
    x, y = images(48, seed=2), torch.arange(48) % 10
    for _ in range(3):
        learner.train_batch(x, y)
    calls.clear()
    compiled = learner.predict_batches(learner.goodness_scores, x, chunk=20)  # chunks of 20, 20 and 8 images
    assert calls == ["int8_goodness_pass"] * 3
    learner.cfg = replace(learner.cfg, compile_update=False)
    eager = learner.predict_batches(learner.goodness_scores, x, chunk=20)
    assert calls == ["int8_goodness_pass"] * 3  # the eager test compiles nothing
    assert torch.equal(torch.isinf(compiled), torch.isinf(eager)) and torch.isinf(eager).any() == (shortlist > 0)
    finite = torch.isfinite(eager)
    torch.testing.assert_close(compiled[finite], eager[finite], rtol=1e-4, atol=1e-5)
    assert torch.equal(compiled.argmax(1), eager.argmax(1))
