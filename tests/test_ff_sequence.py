"""ff-sequence negatives: teacher forcing never repeats the positive; self-generated strings are the net's own."""

from __future__ import annotations

import json

import torch

from mortalnet.cli import main
from mortalnet.data.text import TextConfig, load_corpus, windows
from mortalnet.nets.ff import embed_label, one_hot
from mortalnet.rules.ff_sequence import FFSequenceLearner, sequence_inputs
from mortalnet.rules.forward_forward import FFConfig, FFLearner


def test_teacher_forcing_negatives_differ_from_the_positive_at_the_predicted_position():
    corpus = load_corpus(TextConfig(source="builtin", train_strings=20, valid_strings=4))
    ctx, nxt = windows(corpus.train, 10)
    learner = FFLearner(FFLearner.quick_config(), (40, 40), input_dim=330, num_classes=30, seed=0)
    x = sequence_inputs(ctx, 30)
    for _ in range(3):  # train a little so that some predictions are right and some wrong
        for i in range(0, len(nxt), 100):
            learner.train_batch(x[i : i + 100], nxt[i : i + 100])
    logits = learner.softmax_logits(x)
    pred = logits.argmax(1)
    assert (pred == nxt).any() and (pred != nxt).any()
    for _ in range(3):
        neg = learner._sample_negative_labels(logits, nxt)
        x_pos = embed_label(x, one_hot(nxt, 1.0, 30))
        x_neg = embed_label(x, one_hot(neg, 1.0, 30))
        wrong = pred != nxt
        assert (neg[wrong] != nxt[wrong]).all()  # where the prediction is wrong
        assert (neg != nxt).all()  # and everywhere: the true character is excluded
        assert not (x_neg == x_pos).all(1).any()
        assert torch.equal(x_neg[:, 30:], x_pos[:, 30:])  # same context, only the last character differs


def test_self_generated_strings_keep_the_real_start_and_are_the_networks_samples():
    corpus = load_corpus(TextConfig(source="builtin", train_strings=20, valid_strings=4))
    learner = FFSequenceLearner(FFConfig(), (32, 32), corpus.train, regenerate_every=5, seed=0)
    ctx, nxt = windows(corpus.train, 10)
    x = sequence_inputs(ctx, 30)
    length = corpus.train.shape[1]

    def samples_now():
        """What the network samples from the real starts with a copy of its own generator, as it is now."""
        g = torch.Generator().set_state(learner.generator.get_state())
        return learner.generate(corpus.train[:, :10], length, g)

    expected = samples_now()
    m = learner.train_batch(x[:50], nxt[:50])  # regenerates first, then trains
    gen = learner.generated
    assert torch.equal(gen, expected)  # the network's own samples, drawn with its generator
    assert torch.equal(gen[:, :10], corpus.train[:, :10])
    assert not torch.equal(gen[:, 10:], corpus.train[:, 10:])
    assert float(m["negative_equals_positive"]) < 0.2
    before = gen.clone()
    for _ in range(4):
        learner.train_batch(x[:50], nxt[:50])
    assert torch.equal(learner.generated, before)  # not regenerated before `regenerate_every` steps
    expected = samples_now()  # the trained network, its generator where the regenerating step finds it
    assert not torch.equal(expected, before)
    learner.train_batch(x[:50], nxt[:50])
    assert torch.equal(learner.generated, expected)


def test_models_trained_for_different_epochs_share_one_accuracy_plot(tmp_path):
    """The plot used the last model's epochs for every curve: 2 backprop epochs vs 3 FF epochs crashed the run
    after all training, before its summary was written."""
    out = tmp_path / "r"
    sets = ["models=ff-teacher-forcing,backprop", "hidden=32,32", "backprop_training.epochs=2", "training.epochs=3"]
    args = ["run", "ff-sequence", "--preset", "fast", *[a for s in sets for a in ("--set", s)], "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["backprop"]["epochs"] == 2 and summary["models"]["ff-teacher-forcing"]["epochs"] == 3
    assert summary["plots"] == ["accuracy.png"] and (out / "plots" / "accuracy.png").is_file()


def test_self_generated_negatives_refuse_the_settings_only_the_fused_step_honours():
    """The self-generated learner trains on the float32 reference path: bf16 products were silently ignored."""
    import dataclasses

    import pytest

    from mortalnet.config import ConfigError

    starts = torch.zeros(4, 20, dtype=torch.long)
    for change in ({"precision": "bfloat16"}, {"precision": "bfloat16", "compile_update": True}):
        with pytest.raises(ConfigError, match="ff-self-generated trains in float32"):
            FFSequenceLearner(dataclasses.replace(FFLearner.quick_config(), **change), (8, 8), starts)
    FFSequenceLearner(FFLearner.quick_config(), (8, 8), starts)  # float32 is fine
