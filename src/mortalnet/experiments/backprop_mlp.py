"""backprop-mlp: the permutation-invariant MLP trained by backprop on the same MNIST split.

The FF paper's reference point (section 3.3): a few fully connected ReLU hidden layers trained
by backpropagation reach about 1.4% test error in about 20 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mortalnet.data.mnist import MnistConfig, MnistData
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Reference, RunContext, SupervisedExperiment
from mortalnet.report import plots
from mortalnet.rules.backprop import BackpropConfig, BackpropLearner
from mortalnet.training import TrainingConfig


@dataclass(frozen=True)
class BackpropMLPConfig:
    """A ReLU MLP trained by backpropagation on MNIST."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it."""
    hidden: tuple[int, ...] = (1000, 1000, 1000)
    """Hidden layer widths."""
    rule: BackpropConfig = field(default_factory=BackpropConfig)
    """Optimizer and regularization."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=20, schedule="cosine"))
    """Epochs, batch size, schedule."""


def _fast() -> BackpropMLPConfig:
    return BackpropMLPConfig(
        data=MnistConfig(train_subset=10000, valid_subset=1000, test_subset=2000),
        hidden=(256, 256),
        training=TrainingConfig(epochs=3, schedule="cosine"),
    )


def _paper() -> BackpropMLPConfig:
    return BackpropMLPConfig(hidden=(1000, 1000, 1000), training=TrainingConfig(epochs=20, schedule="cosine"))


@register_experiment("backprop-mlp")
class BackpropMLP(SupervisedExperiment):
    name = "backprop-mlp"
    description = "the backprop baseline: a ReLU MLP (permutation-invariant) on the same MNIST split"
    Config = BackpropMLPConfig
    presets = {"fast": _fast, "paper": _paper}
    references = {"paper": Reference(0.014, "Hinton 2022, sec. 3.3: a few fully connected ReLU layers, ~20 epochs")}

    def build_learner(self, config: BackpropMLPConfig, ctx: RunContext) -> BackpropLearner:
        return BackpropLearner(config.rule, config.hidden, 784, 10, seed=ctx.seed, device=ctx.device)

    def plots(self, learner, data: MnistData, history, config, ctx: RunContext) -> list[str]:
        return [plots.learning_curves(history, ctx.run.plots / "learning_curves.png", f"{self.name} ({ctx.preset})")]
