"""Weight perturbation (Werfel, Xie & Seung 2005; Ren et al. 2023 "FG-W" with finite differences).

Every weight and bias of the network is perturbed at once by sigma u, u ~ N(0, I), the same
perturbation for the whole minibatch; two forward passes (+sigma u and -sigma u) give the change of
the minibatch loss, d = (L+ - L-) / (2 sigma) ~= u . grad, and the estimate is g = d u. It follows
the gradient on average, but its variance grows with the number of weights (relative variance
~ N_w + 1) and, the perturbation being shared, does not fall with the batch size, so it works for small
nets and falls behind as they grow (the talk; Werfel et al.: slower than gradient descent by a
factor ~ number of weights). The forward pass is a black box: a layer's perturbation is applied as
its effect on the total inputs, x E + e, through the device interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mortalnet.optim import OptimizerConfig
from mortalnet.rules import register_rule
from mortalnet.rules.base import check_widths
from mortalnet.rules.perturbation import Estimate, PerturbationConfig, PerturbationLearner, weight_perturbation


@dataclass(frozen=True)
class WeightPerturbationConfig(PerturbationConfig):
    """Hyper-parameters of weight perturbation."""

    estimator: Literal["finite-difference", "jvp"] = "finite-difference"
    """finite-difference: forward passes only (black box, works on devices); jvp: exact directional derivatives
    by forward-mode autodiff (Ren et al.'s forward gradient) - needs an exact model, digital layers only."""


@register_rule("weight-perturbation")
class WeightPerturbationLearner(PerturbationLearner):
    """An MLP (ReLU hidden layers, linear output) trained by weight perturbation.

    Args:
        config: hyper-parameters.
        hidden: hidden layer widths.
        input_dim, num_classes: sizes of input and output.
        seed: seeds initialization and perturbations.
        device: torch device.
    """

    Config = WeightPerturbationConfig

    def __init__(self, config: WeightPerturbationConfig = WeightPerturbationConfig(), hidden: tuple[int, ...] = (64,),
                 input_dim: int = 784, num_classes: int = 10, seed: int = 0, device: torch.device | str = "cpu"):
        dims = (input_dim, *check_widths(hidden), num_classes)
        super().__init__(config, dims, ["relu"] * len(hidden) + ["linear"], seed, device)

    @classmethod
    def quick_config(cls) -> WeightPerturbationConfig:
        """Many directions per step, so that a small net learns a toy problem in a few epochs."""
        return WeightPerturbationConfig(optimizer=OptimizerConfig(name="adam", lr=1e-2, momentum=0.9), directions=8)

    def estimate(self, x: torch.Tensor, y: torch.Tensor) -> Estimate:
        c = self.cfg
        return weight_perturbation(self.layers, x, y, c.sigma, c.directions, self.generator, c.antithetic,
                                   estimator=c.estimator)
