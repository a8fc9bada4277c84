"""Distillation into a network on a mortal device, trained by activity perturbation.

A device has no backward pass, so the student cannot use autograd; but activity perturbation
(`mortalnet.rules.perturbation.activity_perturbation`) only needs a per-example loss of the
measured outputs. Here that loss is, row by row (Hinton, Vinyals & Dean 2015, sec. 2),

    l_b = w_b * T_b^2 * KL(p_b || softmax(z_b / T_b))

with p_b the teacher's soft targets at T_b (a soft row) or a one-hot label at T_b = 1 (a hard row,
where the term is the cross-entropy). Targets travel as rows (N, C + 2) = [p, T, w], so one
estimator call handles a minibatch that mixes labeled examples and transfer examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mortalnet.rules import register_rule
from mortalnet.rules.activity_perturbation import ActivityPerturbationConfig, ActivityPerturbationLearner
from mortalnet.rules.perturbation import activity_perturbation, apply_estimates
from mortalnet.transfer.distill import DistillLossConfig, TransferTargets, soft_targets


def distill_rows_loss(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-example w * T^2 * KL(p || softmax(z / T)): logits (N, C), rows (N, C + 2) = [p, T, w] -> (N,)."""
    c = logits.shape[1]
    p, t, w = rows[:, :c], rows[:, c], rows[:, c + 1]
    log_q = F.log_softmax(logits / t[:, None], dim=1)  # (N, C)
    kl = (torch.special.xlogy(p, p) - p * log_q).sum(1)  # (N,)
    return w * t**2 * kl


def target_rows(probs: torch.Tensor, temperature: float, weight: float) -> torch.Tensor:
    """(N, C) soft targets at T -> (N, C + 2) rows [p, T, w]."""
    n = probs.shape[0]
    extra = torch.tensor([temperature, weight], dtype=probs.dtype, device=probs.device).expand(n, 2)
    return torch.cat([probs, extra], 1)


@dataclass(frozen=True)
class DeviceStudentConfig(ActivityPerturbationConfig):
    """Activity perturbation (on digital layers or a device) that can also learn from soft targets."""

    loss: DistillLossConfig = field(default_factory=lambda: DistillLossConfig(temperature=4.0, hard_weight=0.0))
    """Temperature and weights of the soft-target and hard-label terms (used with TransferTargets)."""


@register_rule("activity-perturbation-distill")
class DeviceStudent(ActivityPerturbationLearner):
    """An MLP of black-box layers (a device, or digital) trained by activity perturbation on hard
    labels (targets y (B,)), on a teacher's soft targets (`TransferTargets`), or on both."""

    Config = DeviceStudentConfig

    @classmethod
    def quick_config(cls) -> DeviceStudentConfig:
        from mortalnet.optim import OptimizerConfig

        return DeviceStudentConfig(optimizer=OptimizerConfig(name="adam", lr=2e-3, momentum=0.9))

    def train_batch(self, x: torch.Tensor, y) -> Mapping[str, torch.Tensor]:
        if not isinstance(y, TransferTargets):
            return super().train_batch(x, y)  # plain activity perturbation on labels
        cfg = self.cfg.loss
        labeled = y.labels >= 0
        hard = (x[labeled], y.labels[labeled]) if cfg.hard_weight and labeled.any() else None
        metrics = self.train_mixed(hard, (x, soft_targets(y.teacher_logits, cfg.temperature)), cfg.temperature,
                                   cfg.soft_weight, cfg.hard_weight)
        agree = (self.last_logits[-len(x):].argmax(1) == y.teacher_logits.argmax(1)).float().mean()
        return {**metrics, "teacher_agreement": agree}

    def train_mixed(self, hard: tuple[torch.Tensor, torch.Tensor] | None,
                    soft: tuple[torch.Tensor, torch.Tensor] | None, temperature: float,
                    soft_weight: float = 1.0, hard_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """One update on hard_weight * mean CE(hard) + soft_weight * mean T^2 KL(soft).

        Args:
            hard: (x (B, D), labels (B,)) or None.
            soft: (x (S, D), soft targets p (S, C) at `temperature`) or None.
        """
        xs, rows = [], []
        n = (len(hard[0]) if hard is not None else 0) + (len(soft[0]) if soft is not None else 0)
        if n == 0:
            raise ValueError("train_mixed needs hard or soft examples")
        if hard is not None and len(hard[0]):
            onehot = F.one_hot(hard[1], self.layers[-1].out_features).to(hard[0].dtype)
            xs.append(hard[0])
            rows.append(target_rows(onehot, 1.0, hard_weight * n / len(hard[0])))
        if soft is not None and len(soft[0]):
            xs.append(soft[0])
            rows.append(target_rows(soft[1], temperature, soft_weight * n / len(soft[0])))
        x, r = torch.cat(xs), torch.cat(rows)
        c = self.cfg
        est = activity_perturbation(self.layers, x, r, c.sigma, c.directions, self.generator, c.antithetic, c.mode,
                                    c.mask_inactive, loss_fn=distill_rows_loss)
        apply_estimates(self.optimizers[0], self.mirror, self.layers, est.weight, est.bias)
        self.digital_macs += est.digital_macs
        self.last_logits = est.logits
        out = {"loss": est.loss.detach()}
        if hard is not None and len(hard[0]):
            out["train_error"] = (est.logits[: len(hard[0])].argmax(1) != hard[1]).float().mean()
        return out
