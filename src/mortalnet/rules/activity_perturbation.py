"""Activity (node) perturbation (Werfel, Xie & Seung 2005; Ren et al. 2023 "FG-A", finite differences).

Each neuron's total input z is perturbed by sigma u, u ~ N(0, I), independently per example; the
change of that example's loss over a +/- pair of forward passes, d_b = (L_b+ - L_b-) / (2 sigma),
estimates u . dL_b/dz, so g_z = d_b u estimates dL_b/dz, and each incoming weight's update is
dW_l = x_l^T g_z / B from the layer's measured input x_l (no model of the layer is needed).
Its variance grows with the number of perturbed neurons, not weights: a fan-in factor less noisy
than weight perturbation, enough to learn MNIST; at a very small learning rate its updates average
to backprop's (the talk). Works on a device through its total-input perturbation port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from mortalnet.optim import OptimizerConfig
from mortalnet.rules import register_rule
from mortalnet.rules.base import check_widths
from mortalnet.rules.perturbation import Estimate, PerturbationConfig, PerturbationLearner, activity_perturbation


@dataclass(frozen=True)
class ActivityPerturbationConfig(PerturbationConfig):
    """Hyper-parameters of activity perturbation."""

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=3e-4, momentum=0.9))
    """Optimizer applied to the gradient estimates (the shared ones: smoothed-sgd, sgd, adam, adamw)."""
    mode: Literal["simultaneous", "layerwise"] = "layerwise"
    """layerwise: a pass pair per layer, noise ~ that layer's width; simultaneous: all layers in one pair."""
    mask_inactive: bool = True
    """Zero the estimate of hidden neurons measured inactive (activity <= 0): their true derivative is 0."""
    estimator: Literal["finite-difference", "jvp"] = "finite-difference"
    """finite-difference: forward passes only (black box, works on devices); jvp: exact directional derivatives
    by forward-mode autodiff (Ren et al.'s forward gradient) - needs an exact model, digital layers only."""


@register_rule("activity-perturbation")
class ActivityPerturbationLearner(PerturbationLearner):
    """An MLP (ReLU hidden layers, linear output) trained by activity perturbation.

    Args:
        config: hyper-parameters.
        hidden: hidden layer widths.
        input_dim, num_classes: sizes of input and output.
        seed: seeds initialization and perturbations.
        device: torch device.
    """

    Config = ActivityPerturbationConfig

    def __init__(self, config: ActivityPerturbationConfig = ActivityPerturbationConfig(),
                 hidden: tuple[int, ...] = (256, 256), input_dim: int = 784, num_classes: int = 10, seed: int = 0,
                 device: torch.device | str = "cpu"):
        dims = (input_dim, *check_widths(hidden), num_classes)
        super().__init__(config, dims, ["relu"] * len(hidden) + ["linear"], seed, device)

    @classmethod
    def quick_config(cls) -> ActivityPerturbationConfig:
        """A larger learning rate: small nets learn a toy problem in a few epochs."""
        return ActivityPerturbationConfig(optimizer=OptimizerConfig(name="adam", lr=2e-3, momentum=0.9))

    def estimate(self, x: torch.Tensor, y: torch.Tensor) -> Estimate:
        c = self.cfg
        return activity_perturbation(self.layers, x, y, c.sigma, c.directions, self.generator, c.antithetic,
                                     c.mode, c.mask_inactive, estimator=c.estimator)
