"""ff-recurrent: the recurrent FF network on MNIST (Hinton 2022, sec. 4; rules/ff_recurrent.py).

A static image is treated as a video: a bottom-up pass, then 8 synchronous damped iterations
(0.3 old + 0.7 new) in which each hidden layer sees the normalized activities of the layers above
and below at the previous step, with the label clamped as the top layer; negatives carry a wrong
label chosen in proportion to the predicted probabilities; test: the label with the highest
goodness averaged over iterations 3-5. Paper: 1.31% test error (2-3 hidden layers of 2000, 60
epochs).

Compute on this project's machine: one training step costs 8 iterations of two passes through
every recurrent connection; with two hidden layers of 1000 an epoch took ~2 minutes on one CPU
core shared with another run (60 epochs: 1.9 hours), and 2 x 2000 costs about four times that. The
`paper` preset keeps the dynamics, iterations, test and the 60 epochs and uses two hidden layers
of 1000; `--set hidden=2000,2000` is the paper's width. With bf16 products (`rule.precision`) a
step is several times cheaper on a CPU with AVX-512 BF16, which brings the paper's width within
reach: `paper-bf16` is `paper` with bf16 products (its records, next to `paper`'s,
are the evidence that bf16 leaves the test error unchanged) and `paper-width` is two hidden layers
of 2000 with bf16 products.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from mortalnet.data.mnist import MnistConfig, MnistData
from mortalnet.experiments import register_experiment
from mortalnet.experiments.curves import LearningCurveMixin
from mortalnet.experiments.base import Reference, RunContext, SupervisedExperiment
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.rules.ff_recurrent import FFRecurrentConfig, FFRecurrentLearner
from mortalnet.training import TrainingConfig


@dataclass(frozen=True)
class FFRecurrentExpConfig:
    """Recurrent FF on MNIST."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it."""
    hidden: tuple[int, ...] = (1000, 1000)
    """Hidden layer widths (the paper: 2-3 layers of 2000)."""
    rule: FFRecurrentConfig = field(default_factory=FFRecurrentConfig)
    """Recurrent FF hyper-parameters (damping, iterations, test window)."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=60, eval_every=10))
    """Epochs, batch size, schedule."""


def _fast() -> FFRecurrentExpConfig:
    return FFRecurrentExpConfig(
        data=MnistConfig(train_subset=5000, valid_subset=1000, test_subset=1000),
        hidden=(300, 300),
        rule=FFRecurrentConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9,
                                                         weight_decay=0.001)),
        training=TrainingConfig(epochs=3),
    )


def _paper() -> FFRecurrentExpConfig:
    return FFRecurrentExpConfig(hidden=(1000, 1000), training=TrainingConfig(epochs=60, eval_every=10))


def _paper_bf16() -> FFRecurrentExpConfig:
    return replace(_paper(), rule=FFRecurrentConfig(precision="bfloat16"))


def _paper_width() -> FFRecurrentExpConfig:
    return replace(_paper_bf16(), hidden=(2000, 2000))


@register_experiment("ff-recurrent")
class FFRecurrent(LearningCurveMixin, SupervisedExperiment):
    name = "ff-recurrent"
    description = "recurrent FF: image as a video, damped synchronous iterations, label on top, goodness over steps 3-5"
    Config = FFRecurrentExpConfig
    presets = {"fast": _fast, "paper": _paper, "paper-bf16": _paper_bf16, "paper-width": _paper_width}
    references = {
        preset: Reference(0.0131, "Hinton 2022, sec. 4: recurrent net (2-3 x 2000), 8 iterations, 60 epochs")
        for preset in ("paper", "paper-bf16", "paper-width")
    }

    def build_learner(self, config: FFRecurrentExpConfig, ctx: RunContext) -> FFRecurrentLearner:
        return FFRecurrentLearner(config.rule, config.hidden, input_dim=784, num_classes=10, seed=ctx.seed,
                                  device=ctx.device)

    def plots(self, learner: FFRecurrentLearner, data: MnistData, history, config, ctx: RunContext) -> list[str]:
        out = ctx.run.plots
        names = [plots.learning_curves(history, out / "learning_curves.png", f"{self.name} ({ctx.preset})")]
        split = data.valid if len(data.valid) else data.train
        x, y = split.take(1000).tensors(ctx.device)
        g = learner.predict_batches(lambda b: learner.goodness_by_step(b, learner.cfg.iterations), x, chunk=100)
        right = g[torch.arange(len(y)), y]  # (N, T)
        wrong = g.clone()
        wrong[torch.arange(len(y)), y] = -float("inf")
        err = [(g[:, :, t].argmax(1) != y).float().mean().item() for t in range(g.shape[2])]
        names.append(plots.series_plot(
            {"true label": right.mean(0).tolist(), "best wrong label": wrong.max(1).values.mean(0).tolist()},
            out / "goodness_by_iteration.png", "iteration", "goodness (sum over layers)",
            "goodness per iteration (validation), and error of each iteration alone: "
            + " ".join(f"{e:.1%}" for e in err)))
        return names
