"""Smoke tests: every experiment of the rest of the FF paper runs its `fast` preset end to end and
beats chance (10% accuracy for digits) by a clear margin."""

from __future__ import annotations

import pytest
from conftest import needs_mnist, run_fast_preset


@needs_mnist
@pytest.mark.parametrize("name, bound", [
    ("ff-jitter", 0.4),
    ("ff-unsupervised", 0.25),
    ("ff-local-rf", 0.25),
    ("ff-recurrent", 0.25),
])
def test_fast_preset_on_real_mnist_beats_chance(name, bound, tmp_path):
    s = run_fast_preset(name, tmp_path)
    assert s["test_error"] < bound, s["test_error"]


def test_sequence_fast_preset_on_the_builtin_text(tmp_path):
    """30 symbols: chance is 96.7% error; the fast preset trains on 20 strings of the built-in excerpt."""
    import math

    import torch

    from mortalnet.data.text import TextConfig, load_corpus, windows

    s = run_fast_preset("ff-sequence", tmp_path)
    models = s["models"]
    # the floors to beat: always the training text's most frequent character (82.4% test error), and
    # the add-one unigram code (4.20 bits/char; uniform: log2 30 = 4.91)
    corpus = load_corpus(TextConfig(source="builtin", train_strings=20, valid_strings=4))  # the fast preset's
    (_, train_next), (_, test_next) = windows(corpus.train, 10), windows(corpus.test, 10)
    assert len(test_next) == s["corpus"]["test_windows"] == 540
    most_frequent = torch.bincount(train_next, minlength=30).argmax()
    baseline = (test_next != most_frequent).float().mean().item()
    unigram = s["unigram_bits_per_char"]
    assert 0.8 < baseline < 0.85 and unigram < math.log2(30) - 0.5
    # seed 0: teacher forcing 0.793 (softmax 0.746), backprop 0.726, self-generated softmax 0.781
    assert models["ff-teacher-forcing"]["test_error"] < baseline
    assert models["ff-teacher-forcing"]["test_error_softmax"] < baseline - 0.05
    assert models["backprop"]["test_error"] < baseline - 0.05
    assert models["ff-self-generated"]["test_error_softmax"] < baseline
    assert models["ff-self-generated"]["train_error_softmax"] < 0.7
    # bits/char on the test text, seed 0: teacher forcing 3.85, backprop 4.00, self-generated 4.03
    assert models["ff-teacher-forcing"]["test_bits_per_char"] < unigram - 0.25
    for name, m in models.items():
        assert m["test_bits_per_char"] < unigram and m["train_bits_per_char"] < unigram, name
    assert all(len(t) == 100 for texts in s["samples"].values() for t in texts)


@needs_mnist
def test_blackbox_fast_preset(tmp_path):
    s = run_fast_preset("blackbox", tmp_path)
    m = s["models"]
    assert m["ff"]["test_error"] < 0.35 and m["ff-box"]["test_error"] < 0.35
    assert m["backprop-box"]["status"] == "failed" and "no derivative" in m["backprop-box"]["error"]
    assert m["backprop-box-torch"]["layer1_mean_grad_norm"] == 0.0  # nothing reaches layer 1
    assert m["backprop"]["test_error"] < 0.2


def test_cifar10_fast_preset_on_generated_images(tmp_path):
    s = run_fast_preset("ff-cifar10", tmp_path)
    assert s["data_source"] == "synthetic"
    assert s["models"]["ff-2"]["test_error"] < 0.6 and s["models"]["backprop-2"]["test_error"] < 0.6
    assert "test_error_softmax" in s["models"]["ff-2"]


def test_ff_supervised_max_shift_jitters_training_images_by_at_most_that_much(tiny_data):
    import torch

    from mortalnet.api import preset_config
    from mortalnet.data.augment import shift_images
    from mortalnet.experiments import get_experiment

    exp = get_experiment("ff-supervised")
    assert exp.train_transform(preset_config("ff-supervised", "paper")) is None  # the paper's recipe: no jitter
    config = preset_config("ff-supervised", "speed")
    assert config.max_shift == 1
    x, _ = tiny_data.train.take(64).tensors()
    out = exp.train_transform(config)(x, torch.Generator().manual_seed(0))
    n = len(x)
    shifted = {(dy, dx): shift_images(x, torch.full((n,), dy), torch.full((n,), dx))
               for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    match = torch.stack([(out == s).all(1) for s in shifted.values()])  # (9, n)
    assert match.any(0).all()  # every image is one of its 9 shifts by at most 1 px
    assert (~match[list(shifted).index((0, 0))]).sum() > n // 2  # and most were moved


def test_speed_30_is_the_speed_recipe_with_30_epochs():
    from dataclasses import replace

    from mortalnet.api import preset_config

    speed, short = preset_config("ff-supervised", "speed"), preset_config("ff-supervised", "speed-30")
    assert short.training.epochs == 30 and speed.training.epochs == 50
    assert replace(short, training=replace(short.training, epochs=50)) == speed


def test_blackbox_headline_is_a_model_that_trained(tmp_path):
    """With backprop-box first and no ff-box, the record said 100% test error (the failed model's default)."""
    s = run_fast_preset("blackbox", tmp_path, ["data.source=synthetic", "models=backprop-box,ff", "hidden=64,64",
                                    "training.epochs=1", "backprop_training.epochs=1"])
    assert s["headline_model"] == "ff" and s["test_error"] == s["models"]["ff"]["test_error"] < 0.9
    assert s["models"]["backprop-box"]["status"] == "failed"


def test_blackbox_with_no_model_that_can_train_is_an_error(tmp_path, capsys):
    from mortalnet.cli import main

    code = main(["run", "blackbox", "--preset", "fast", "--quiet", "--set", "data.source=synthetic",
                 "--set", "models=backprop-box", "--out", str(tmp_path / "b")])
    assert code == 1 and "no model trained: backprop-box: backpropagation reached the black box" in capsys.readouterr().err


def test_hybrid_figure_with_a_small_training_set(tmp_path):
    """Fewer than 16 training images crashed the plot after training."""
    s = run_fast_preset("ff-unsupervised", tmp_path, ["data.source=synthetic", "data.train_subset=12", "hidden=32,32,32",
                                           "training.epochs=1"])
    assert "hybrid_images.png" in s["plots"]
