"""Unsupervised Forward-Forward (Hinton 2022, sec. 3.2): hybrid-image negatives, then a linear softmax.

Positive data are real images, negative data hybrid images (two images mixed by a blurred random
mask, `data/negatives.py`). No label reaches an FF layer: their updates depend on the images and
the rule's random generator only (a test trains with two different label sets and finds identical
FF weights). Labels train only a linear softmax on the normalized activities of the last three
hidden layers, whose gradient stays in the readout. Dense or locally connected layers
(`FFLayerwiseConfig.layer`); the machinery is `rules/ff_layerwise.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mortalnet.config import ConfigError
from mortalnet.optim import OptimizerConfig
from mortalnet.rules import register_rule
from mortalnet.rules.ff_layerwise import FFLayerwiseConfig, FFLayerwiseLearner


@dataclass(frozen=True)
class FFUnsupervisedConfig(FFLayerwiseConfig):
    """Unsupervised FF: hybrid negatives, softmax readout on the last three layers."""

    negatives: Literal["hard", "random", "hybrid"] = "hybrid"
    """hybrid: hybrid-image negatives, no labels in the FF layers (hard/random: supervised, see ff-layerwise)."""


@register_rule("ff-unsupervised")
class FFUnsupervisedLearner(FFLayerwiseLearner):
    """FF trained on real vs hybrid images; a linear softmax on its activities predicts the label."""

    Config = FFUnsupervisedConfig
    primary_metric = "error_softmax"

    def __init__(self, config: FFUnsupervisedConfig = FFUnsupervisedConfig(), *args, **kwargs) -> None:
        if config.negatives != "hybrid":
            raise ConfigError("ff-unsupervised uses rule.negatives=hybrid; for labelled negatives use ff-layerwise")
        super().__init__(config, *args, **kwargs)

    @classmethod
    def quick_config(cls) -> FFUnsupervisedConfig:
        return FFUnsupervisedConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9,
                                                              weight_decay=0.001))
