"""Three claims: prediction as compression (arithmetic coder + next-character models), label noise,
fast weights. Coder tests use generated symbol streams; smoke tests run each `fast` preset."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import run_fast_preset

from mortalnet.coding import arithmetic as ac
from mortalnet.nets.char_model import one_hot_padded, padded_windows


def _adaptive_model(C: int):
    """Laplace-smoothed counts of the last 100 symbols: a deterministic adaptive model."""
    def model(prefix):
        counts = [1.0] * C
        for s in prefix[-100:]:
            counts[s] += 1.0
        total = sum(counts)
        return [x / total for x in counts]
    return model


@pytest.mark.parametrize("C, n, seed", [(2, 800, 0), (30, 1500, 1), (256, 300, 2), (7, 1, 3), (5, 0, 4)])
def test_arithmetic_coder_round_trips_and_costs_the_model_code_length(C, n, seed):
    rng = random.Random(seed)
    symbols = [min(int(rng.expovariate(0.5)), C - 1) for _ in range(n)]  # skewed, so it compresses
    model = _adaptive_model(C)
    data = ac.encode(symbols, model)
    assert ac.decode(data, model) == symbols
    ideal, quantized = ac.code_length_bits(symbols, model)
    bits = ac.payload_bits(data)
    assert abs(quantized - ideal) < 0.01 + 1e-4 * n  # 24-bit frequency tables lose almost nothing
    assert quantized - 2 <= bits <= quantized + 2 + 8  # 2 final bits + padding to a whole byte
    assert len(data) == ac.HEADER_BYTES + bits // 8


def test_arithmetic_coder_handles_near_certain_and_near_impossible_symbols():
    """A confident model: the likely symbol costs ~0 bits, the unlikely one ~20 bits, and both decode."""
    def model(prefix):
        return [1 - 1e-6, 1e-6 / 2, 1e-6 / 2]
    symbols = [0] * 500 + [2] + [0] * 500 + [1]
    data = ac.encode(symbols, model)
    assert ac.decode(data, model) == symbols
    ideal, _ = ac.code_length_bits(symbols, model)
    assert ideal == pytest.approx(2 * math.log2(2e6) + 1000 * -math.log2(1 - 1e-6), abs=0.01)
    assert ac.payload_bits(data) <= ideal + 10


def test_arithmetic_coder_rejects_bad_input():
    model = _adaptive_model(3)
    with pytest.raises(ac.CodingError, match="outside the model's alphabet"):
        ac.encode([0, 3], model)
    with pytest.raises(ac.CodingError, match="invalid probability"):
        ac.encode([0], lambda prefix: [0.5, float("nan"), 0.5])
    with pytest.raises(ac.CodingError, match="header"):
        ac.decode(b"\x00", model)


def test_a_different_model_does_not_decode_the_stream():
    rng = random.Random(0)
    symbols = [rng.randrange(4) for _ in range(200)]
    data = ac.encode(symbols, _adaptive_model(4))
    assert ac.decode(data, lambda prefix: [0.25] * 4) != symbols


def test_padded_windows_hold_the_previous_characters_and_start_padding():
    s = torch.tensor([3, 1, 4, 1, 5])
    w = padded_windows(s, 3, 30)
    assert w.tolist() == [[30, 30, 30], [30, 30, 3], [30, 3, 1], [3, 1, 4], [1, 4, 1]]
    x = one_hot_padded(w, 30)  # (5, 90); start symbol = all zeros
    assert x.shape == (5, 90) and x[0].sum() == 0 and x[4].sum() == 3 and x[4, 60 + 1] == 1


def test_compression_fast_preset_codes_the_held_out_text(tmp_path):
    """Built-in excerpt: the models beat the uniform code (log2 30 = 4.91 bits/char) by a clear margin,
    their coded files decode exactly and cost what the model's probabilities say."""
    s = run_fast_preset("compression", tmp_path)
    n = s["text"]["test_chars"]
    assert n == 300 and s["uniform_bits_per_char"] == pytest.approx(math.log2(30))
    for name, m in s["models"].items():
        assert m["roundtrip_exact"], name
        assert abs(m["coded_payload_bits"] - m["ideal_bits"]) <= 12  # within ~1.5 bytes of sum -log2 p
        assert m["coded_bytes"] == ac.HEADER_BYTES + m["coded_payload_bits"] // 8
        assert m["test_bits_per_char"] == pytest.approx(m["ideal_bits"] / n, abs=1e-3)
        # the context must pay: an add-one unigram of the training text codes the test text in 4.25 bits/char
        # (ff 3.74, backprop 3.63 at seed 0); a model that ignored its context would be near the unigram
        assert m["test_bits_per_char"] < s["unigram_bits_per_char"] - 0.3, (name, s["unigram_bits_per_char"])
    assert s["unigram_bits_per_char"] < s["uniform_bits_per_char"]
    assert s["models"]["backprop"]["test_bits_per_char"] < 4.1
    assert s["models"]["backprop"]["train_bits_per_char"] < s["unigram_bits_per_char"]
    for k in ("gzip", "bz2", "xz"):
        c = s["compressors"][k]
        assert c["alone"] > 0 and c["given_train"] > 0 and c["roundtrip_exact"]


@pytest.mark.parametrize(
    "settings, message",
    [
        (["models="], "models is empty"),
        (["models=backprop,lstm"], "unknown model 'lstm'"),
        (["models=ff,ff"], "lists a model twice"),
        (["compress_level=0"], "compress_level must be in 1..9"),
        (["compress_level=10"], "compress_level must be in 1..9"),
        (["context=0"], "context must be >= 1"),
        (["freq_bits=4"], "freq_bits must be in 5..30"),
        (["freq_bits=31"], "freq_bits must be in 5..30"),
        (["rule.goodness_from=5"], "goodness_from=5"),  # refused by the FF rule, before backprop trains
    ],
)
def test_compression_refuses_bad_settings_before_any_model_trains(settings, message, capsys, tmp_path):
    assert_refused(capsys, tmp_path / "r", "compression", settings, message)


# ------------------------------------------------------------------------------------------------
# label-noise
# ------------------------------------------------------------------------------------------------
from conftest import assert_refused, needs_mnist  # noqa: E402

from mortalnet.data.label_noise import corrupt_labels  # noqa: E402
from mortalnet.rules.base import Learner  # noqa: E402
from mortalnet.training import TrainingConfig, fit  # noqa: E402


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_corruption_has_the_asked_rate_and_never_keeps_the_true_label(rate):
    y = torch.arange(1000) % 10
    noisy, mask = corrupt_labels(y, rate, 10, seed=3)
    assert int(mask.sum()) == round(rate * 1000)
    assert (noisy[mask] != y[mask]).all() and (noisy[~mask] == y[~mask]).all()
    assert ((noisy != y).float().mean().item()) == pytest.approx(rate)
    assert noisy.min() >= 0 and noisy.max() <= 9
    again, mask2 = corrupt_labels(y, rate, 10, seed=3)
    assert torch.equal(again, noisy) and torch.equal(mask2, mask)


def test_corruption_depends_on_the_seed_is_nested_across_rates_and_spreads_over_wrong_classes():
    y = torch.zeros(20000, dtype=torch.long)
    a, ma = corrupt_labels(y, 0.5, 10, seed=0)
    b, _ = corrupt_labels(y, 0.5, 10, seed=1)
    assert not torch.equal(a, b)
    lo, ml = corrupt_labels(y, 0.2, 10, seed=0)
    assert (ma[ml]).all() and torch.equal(lo[ml], a[ml])  # the 20% set is inside the 50% set, same labels
    counts = torch.bincount(a[ma], minlength=10)
    assert counts[0] == 0 and (counts[1:] > 0.8 * 10000 / 9).all()  # ~uniform over the 9 wrong classes
    with pytest.raises(ValueError, match="rate must be in"):
        corrupt_labels(y, 1.5, 10, seed=0)


class _Recorder(Learner):
    """Records which label each example (its index is x[:, 0]) gets in every epoch."""

    primary_metric = "error"

    def __init__(self):
        super().__init__(0)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.optimizers = [torch.optim.SGD([self.w], lr=0.0)]
        self.seen: list[dict[int, int]] = []
        self.steps = 0

    def train_batch(self, x, y):
        if self.steps % 5 == 0:  # 250 examples / 50 per batch = a new epoch every 5 steps
            self.seen.append({})
        self.steps += 1
        self.seen[-1].update(zip(x[:, 0].long().tolist(), y.tolist()))
        return {"loss": torch.zeros(())}

    def evaluate(self, x, y):
        return {"error": 0.0}


def test_the_training_loop_sees_the_same_wrong_label_for_an_example_in_every_epoch():
    y = torch.arange(250) % 10
    noisy, mask = corrupt_labels(y, 0.5, 10, seed=7)
    x = torch.arange(250, dtype=torch.float32)[:, None]  # (N, 1): the example's index
    rec = _Recorder()
    fit(rec, (x, noisy), None, TrainingConfig(epochs=3, batch_size=50, progress=False, tensorboard=False), seed=7)
    assert len(rec.seen) == 3
    expected = dict(enumerate(noisy.tolist()))
    assert all(epoch == expected for epoch in rec.seen)  # fixed across epochs (shuffled order, same labels)
    assert sum(rec.seen[0][i] != int(y[i]) for i in range(250)) == 125


@needs_mnist
def test_label_noise_fast_preset(tmp_path):
    """5000 real MNIST examples: clean-label error bounds; at 50% fixed noise backprop still learns and
    agrees more with the true training labels than with the wrong ones it was trained on."""
    s = run_fast_preset("label-noise", tmp_path)
    r = {(x["rule"], x["rate"]): x for x in s["results"]}
    assert r[("backprop", 0.0)]["test_error"] < 0.15
    assert r[("forward-forward", 0.0)]["test_error"] < 0.3
    noisy = r[("backprop", 0.5)]
    assert noisy["corrupted_fraction"] == 0.5 and noisy["test_error"] < 0.3
    assert noisy["agreement_true"] > noisy["agreement_noisy"] + 0.2
    assert noisy["corrupted_predicted_true"] > 0.5 > noisy["corrupted_predicted_noisy"]
    assert s["test_error"] == noisy["test_error"]  # headline: backprop at 50%
    assert noisy["valid_error_best"] <= noisy["valid_error_clean"]  # the lowest one seen during training
    assert 1 <= noisy["valid_error_best_epoch"] <= noisy["epochs"]


# ------------------------------------------------------------------------------------------------
# fast-weights
# ------------------------------------------------------------------------------------------------
from mortalnet.data.associative import (  # noqa: E402
    DIGIT0, NUM_SYMBOLS, QUERY, SYMBOLS, AssociativeConfig, generate, make_splits, to_string,
)
from mortalnet.nets.fast_weights import FastWeightsRNN  # noqa: E402


def test_associative_retrieval_sequences_follow_the_paper_format():
    x, y = generate(3000, pairs=4, seed=0)
    assert NUM_SYMBOLS == 37 and len(SYMBOLS) == 37
    assert x.shape == (3000, 11) and y.shape == (3000,) and x.dtype == torch.long
    letters, digits = x[:, 0:8:2], x[:, 1:8:2]
    assert (letters < 26).all() and ((digits >= DIGIT0) & (digits < DIGIT0 + 10)).all()
    assert (x[:, 8:10] == QUERY).all() and (x[:, 10] < 26).all()
    assert all(len(set(row.tolist())) == 4 for row in letters)  # distinct letters
    hit = letters == x[:, 10:11]  # (N, 4): where the queried letter sits
    assert (hit.sum(1) == 1).all()
    assert torch.equal(digits[hit] - DIGIT0, y)  # the answer is the digit right after the queried letter
    counts = torch.bincount(y, minlength=10)
    assert (counts > 200).all()  # answers spread over all 10 digits
    s = to_string(x[0])
    assert len(s) == 11 and s[8:10] == "??" and s[-1] in s[0:8:2] and s[s.index(s[-1]) + 1] == str(int(y[0]))


def test_associative_generator_is_seeded_and_splits_differ():
    a, ya = generate(50, 4, seed=5)
    b, yb = generate(50, 4, seed=5)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, generate(50, 4, seed=6)[0])
    sp = make_splits(AssociativeConfig(pairs=3, train=40, valid=20, test=20), seed=1)
    assert sp["train"][0].shape == (40, 9) and sp["test"][0].shape == (20, 9)
    assert not torch.equal(sp["valid"][0], sp["test"][0])
    with pytest.raises(ValueError, match="pairs must be in"):
        generate(5, pairs=27)


def test_fast_weights_attention_form_equals_the_explicit_matrix_form():
    """sum_tau eta lambda^(t-tau) h(tau) <h(tau), h> == A(t) h with A(t) = lambda A(t-1) + eta h(t) h(t)^T."""
    torch.manual_seed(0)
    att = FastWeightsRNN(37, 16, 12, 8, 10, decay=0.9, fast_lr=0.7, inner_steps=2, form="attention",
                         recurrent_init=0.5)
    mat = FastWeightsRNN(37, 16, 12, 8, 10, decay=0.9, fast_lr=0.7, inner_steps=2, form="matrix")
    mat.load_state_dict(att.state_dict())
    x, _ = generate(32, 4, seed=0)
    out_a, out_m = att(x), mat(x)
    assert torch.allclose(out_a, out_m, atol=1e-5)
    nofast = FastWeightsRNN(37, 16, 12, 8, 10, decay=0.9, fast_lr=0.0, inner_steps=2, recurrent_init=0.5)
    nofast.load_state_dict(att.state_dict())
    assert not torch.allclose(nofast(x), out_a, atol=1e-3)  # the fast weights change the answer


def test_fast_weights_normalize_the_first_step_too():
    """h(1) = ReLU(LN[W h(0) + C x(0)]) with h(0) = 0 and A(0) = 0: layer norm applies from the first step."""
    torch.manual_seed(1)
    net = FastWeightsRNN(37, 16, 12, 8, 10, decay=0.9, fast_lr=0.7, inner_steps=1, form="attention")
    x, _ = generate(4, 4, seed=0)
    h1 = torch.relu(net.ln(net.C(net.embed(x[:, :1]))[:, 0]))
    torch.testing.assert_close(net(x[:, :1]), net.head(h1))


def test_fast_weights_fast_preset(tmp_path):
    """2-pair task, 4000 sequences, 50 units: fast weights learn it (guessing either digit of the
    sequence gives ~50% error); the plain RNN of the same size has not yet in the same 12 epochs."""
    s = run_fast_preset("fast-weights", tmp_path)
    r = {x["model"]: x for x in s["results"]}
    assert s["fast_form"] == "attention"
    assert r["fast-weights"]["test_error"] < 0.15
    assert r["rnn"]["test_error"] > r["fast-weights"]["test_error"]
    assert all(x["test_error"] < 0.9 for x in r.values())  # 10-way chance
