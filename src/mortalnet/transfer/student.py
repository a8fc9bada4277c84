"""The `distill` learning rule: an MLP that learns from hard labels and/or a teacher's soft targets.

Trained by the shared loop `fit`. Its targets are either plain labels y (B,) (then it is a backprop
MLP with hard labels: the "student alone" of Hinton et al. 2015, or a teacher trained with dropout,
jitter and max-norm weight constraints) or `TransferTargets` (labels, stored teacher logits), in
which case the loss is `mortalnet.transfer.distill.distillation_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mortalnet.config import ConfigError
from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules import register_rule
from mortalnet.rules.backprop import MLP
from mortalnet.rules.base import Learner
from mortalnet.transfer.distill import DistillLossConfig, TransferTargets, distillation_loss


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of an MLP student (or a strongly regularized teacher) trained by backprop."""

    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    )
    """Optimizer (sgd with momentum by default)."""
    loss: DistillLossConfig = field(default_factory=DistillLossConfig)
    """Temperature and weights of the soft-target and hard-label terms (used when targets carry teacher logits)."""
    dropout: float = 0.0
    """Dropout probability on hidden activities (the teacher of Hinton et al. 2015 uses 0.5)."""
    input_dropout: float = 0.0
    """Dropout probability on input pixels (Srivastava et al. 2014 use 0.2)."""
    max_norm: float = 0.0
    """Max-norm constraint on each unit's incoming weight vector after every step (0 = none)."""


def check_regularization(config: DistillConfig, key: str) -> None:
    """Raise ConfigError unless 0 <= dropout, input_dropout < 1 and max_norm >= 0 (`key`: the section's name).

    The loss weights are checked by `check_loss_config`, for the models that use them (a teacher trained
    on hard labels never does).
    """
    for name in ("dropout", "input_dropout"):
        p = getattr(config, name)
        if not 0 <= p < 1:
            raise ConfigError(f"{key}.{name} must be in [0, 1), got {p}")
    if config.max_norm < 0:
        raise ConfigError(f"{key}.max_norm must be >= 0 (0 = none), got {config.max_norm}")


@register_rule("distill")
class DistillLearner(Learner):
    """An MLP trained by autograd on hard labels, soft targets, or both (Hinton et al. 2015)."""

    Config = DistillConfig
    primary_metric = "error"

    def __init__(self, config: DistillConfig = DistillConfig(), hidden: tuple[int, ...] = (800, 800),
                 input_dim: int = 784, num_classes: int = 10, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = config
        self.num_classes = num_classes
        self.net = MLP(input_dim, tuple(hidden), num_classes, config.dropout, config.input_dropout,
                       self.generator, self.device_)
        weights = [lin.weight for lin in self.net.linears]
        biases = [lin.bias for lin in self.net.linears]
        self.optimizers = [make_optimizer(config.optimizer, weights, biases)]

    @classmethod
    def quick_config(cls) -> DistillConfig:
        return DistillConfig(loss=DistillLossConfig(temperature=4.0, soft_weight=1.0, hard_weight=1.0))

    def train_batch(self, x: torch.Tensor, y) -> Mapping[str, torch.Tensor]:
        """One step on x (B, D) with labels y (B,) or `TransferTargets` (labels + teacher logits)."""
        self.net.train()
        logits = self.net(x)  # (B, C); dropout masks from torch's global RNG, seeded per epoch by fit
        metrics: dict[str, torch.Tensor] = {}
        if isinstance(y, TransferTargets):
            labels, teacher = y.labels, y.teacher_logits
            loss, parts = distillation_loss(logits, teacher, labels, self.cfg.loss)
            metrics.update(parts)
            metrics["teacher_agreement"] = (logits.argmax(1) == teacher.argmax(1)).float().mean().detach()
        else:
            labels = y
            loss = F.cross_entropy(logits, labels)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.cfg.max_norm > 0:
            self._apply_max_norm()
        metrics["loss"] = loss.detach()
        labeled = labels >= 0
        if labeled.any():
            metrics["train_error"] = (logits[labeled].argmax(1) != labels[labeled]).float().mean().detach()
        return metrics

    @torch.no_grad()
    def _apply_max_norm(self) -> None:
        """Rescale each hidden unit's incoming weights (a row of W (out, in)) to norm <= max_norm."""
        for lin in self.net.linears[:-1]:
            norms = lin.weight.norm(dim=1, keepdim=True)  # (out, 1)
            lin.weight.mul_(torch.clamp(self.cfg.max_norm / (norms + 1e-12), max=1.0))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time logits (B, C) (dropout off)."""
        self.net.eval()
        return self.predict_batches(self.net, x)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {"error": (self.logits(x).argmax(1) != y).float().mean().item()}
