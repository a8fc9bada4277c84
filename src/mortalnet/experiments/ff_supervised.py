"""ff-supervised: supervised Forward-Forward on MNIST (Hinton 2022, section 3.3; ffnew.m).

Label in the first 10 pixels, hard negatives from the neutral-label softmax, peer
normalization, per-label goodness test over hidden layers 2..L and the neutral-pass softmax test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mortalnet.data.mnist import MnistConfig, MnistData
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Reference, RunContext, SupervisedExperiment
from mortalnet.nets.ff import goodness, one_hot
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.training import TrainingConfig


@dataclass(frozen=True)
class FFSupervisedConfig:
    """Supervised FF on MNIST."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it."""
    hidden: tuple[int, ...] = (2000, 2000, 2000, 2000)
    """Hidden layer widths (the paper: 4 x 2000 ReLUs)."""
    rule: FFConfig = field(default_factory=FFConfig)
    """Forward-Forward hyper-parameters."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=60))
    """Epochs, batch size, schedule."""


def _fast() -> FFSupervisedConfig:
    return FFSupervisedConfig(
        data=MnistConfig(train_subset=10000, valid_subset=1000, test_subset=2000),
        hidden=(400, 400, 400),
        rule=FFConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9, weight_decay=0.001)),
        training=TrainingConfig(epochs=3, batch_size=100, schedule="half-then-linear"),
    )


def _demo() -> FFSupervisedConfig:
    return FFSupervisedConfig(hidden=(1000, 1000, 1000), training=TrainingConfig(epochs=8))


def _matlab() -> FFSupervisedConfig:
    return FFSupervisedConfig(hidden=(1000, 1000, 1000), training=TrainingConfig(epochs=100, eval_every=5))


def _paper() -> FFSupervisedConfig:
    return FFSupervisedConfig(hidden=(2000, 2000, 2000, 2000), training=TrainingConfig(epochs=60, eval_every=5))


@register_experiment("ff-supervised")
class FFSupervised(SupervisedExperiment):
    name = "ff-supervised"
    description = "supervised Forward-Forward on MNIST, label in the first 10 pixels, hard negatives"
    Config = FFSupervisedConfig
    presets = {"fast": _fast, "demo": _demo, "matlab": _matlab, "paper": _paper}
    references = {
        "paper": Reference(0.0136, "Hinton 2022, sec. 3.3: 4x2000 ReLU, 60 epochs"),
        "matlab": Reference(0.0147, "Hinton's ffnew.m (3x1000, 100 epochs) as measured by loeweX/Forward-Forward"),
    }

    def build_learner(self, config: FFSupervisedConfig, ctx: RunContext) -> FFLearner:
        return FFLearner(config.rule, config.hidden, input_dim=784, num_classes=10, seed=ctx.seed, device=ctx.device)

    def plots(self, learner: FFLearner, data: MnistData, history, config, ctx: RunContext) -> list[str]:
        out = ctx.run.plots
        names = [plots.learning_curves(history, out / "learning_curves.png", f"{self.name} ({ctx.preset})")]
        # goodness of positive vs (hard) negative data on up to 1000 validation images
        split = data.valid if len(data.valid) else data.train
        x, y = split.take(1000).tensors(ctx.device)
        with torch.no_grad():
            scores = learner.softmax_logits(x) if learner.cfg.readout else learner.goodness_scores(x)
            wrong = (scores - 1e9 * torch.nn.functional.one_hot(y, 10)).argmax(1)
            pos = learner.layer_states(x, one_hot(y, learner.cfg.label_strength))
            neg = learner.layer_states(x, one_hot(wrong, learner.cfg.label_strength))
        thetas = [learner.cfg.threshold_per_unit * h for h in learner.net.hidden]
        names.append(plots.goodness_histograms(
            [goodness(s).cpu().numpy() for s in pos], [goodness(s).cpu().numpy() for s in neg], thetas,
            out / "goodness.png", "goodness: true label vs most likely wrong label (validation)"))
        w1 = learner.net.layers[0].weight.detach().cpu().numpy()
        names.append(plots.receptive_fields(w1, out / "receptive_fields.png", 100,
                                            "layer 1 receptive fields (label pixels: top-left row)"))
        return names
