"""Temperature distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

The teacher's logits v (B, C) and the student's logits z (B, C) are both divided by the same
temperature T. The soft targets p = softmax(v / T) are matched by the student's q = softmax(z / T):

    L_soft = T^2 * KL(p || q)      (same gradient as the cross-entropy -sum p log q)
    dL_soft/dz_i = T * (q_i - p_i) / B                         (sec. 2; B = batch size)

The T^2 keeps the soft-target gradient on the scale of the hard-label one when T changes (sec. 2:
"the magnitudes of the gradients produced by the soft targets scale as 1/T^2"); for large T it
becomes the logit-matching gradient (z_i - v_i) / (C B) for zero-mean logits (sec. 2.1). The hard
labels add `hard_weight * CE(softmax(z), y)` at T = 1 (sec. 2: "a considerably lower weight on the
second objective function" worked best).

Two common bugs of distillation code are guarded by tests (tests/test_transfer.py): a missing T^2,
and a soft-target term that sends no gradient to the student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mortalnet.config import ConfigError

FLOAT_BITS = 32
"""Bits per exchanged or stored real value (float32 logits)."""


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): (B, C) -> (B, C) probabilities."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return torch.softmax(logits / temperature, dim=1)


def soft_target_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p || softmax(z / T)), averaged over the batch (a 0-dim tensor with the student's graph).

    Args:
        student_logits: z (B, C), attached to the student's graph.
        teacher_probs: p (B, C), the teacher's soft targets at the same T (no gradient needed).
        temperature: T.
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and soft targets "
                         f"{tuple(teacher_probs.shape)} differ in shape")
    p = teacher_probs.detach()
    log_q = F.log_softmax(student_logits / temperature, dim=1)  # (B, C)
    kl = (torch.special.xlogy(p, p) - p * log_q).sum(1)  # (B,)  KL(p || q) >= 0
    return temperature**2 * kl.mean()


@dataclass(frozen=True)
class DistillLossConfig:
    """How a student learns from a teacher's soft targets and (optionally) the hard labels."""

    temperature: float = 20.0
    """T, used for both teacher and student (Hinton et al. 2015 MNIST: T = 20)."""
    soft_weight: float = 1.0
    """Weight of T^2 * KL(teacher soft targets || student soft predictions)."""
    hard_weight: float = 0.1
    """Weight of the cross-entropy with the hard labels at T = 1 (0 = unlabeled transfer set)."""


def check_loss_config(config: DistillLossConfig, key: str = "loss") -> None:
    """Raise ConfigError unless T > 0, both weights >= 0 and at least one weight > 0.

    Experiments call it before training anything, so that a bad student loss is refused before a
    teacher has trained for an hour. `key` is the config section's dotted name (for the message).
    """
    if not config.temperature > 0:
        raise ConfigError(f"{key}.temperature must be > 0, got {config.temperature}")
    for name in ("soft_weight", "hard_weight"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(config, name)}")
    if not (config.soft_weight or config.hard_weight):
        raise ConfigError(f"{key}.soft_weight and {key}.hard_weight are both 0: the student would learn nothing")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    config: DistillLossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """soft_weight * T^2 KL(p_T || q_T) + hard_weight * CE(z, y); the parts as detached metrics.

    Args:
        student_logits: z (B, C) with the student's graph.
        teacher_logits: v (B, C) or None (then no soft term).
        labels: y (B,) int64, entries < 0 meaning "unlabeled" (ignored by the hard term), or None.
        config: temperature and weights.
    Returns:
        (loss, {"soft_loss": ..., "hard_loss": ...}).
    """
    parts: dict[str, torch.Tensor] = {}
    loss = student_logits.new_zeros(())
    if teacher_logits is not None and config.soft_weight:
        soft = soft_target_loss(student_logits, soft_targets(teacher_logits.detach(), config.temperature),
                                config.temperature)
        loss = loss + config.soft_weight * soft
        parts["soft_loss"] = soft.detach()
    if labels is not None and config.hard_weight:
        labeled = labels >= 0
        if labeled.any():
            hard = F.cross_entropy(student_logits[labeled], labels[labeled])
            loss = loss + config.hard_weight * hard * labeled.float().mean()
            parts["hard_loss"] = hard.detach()
    if not parts:
        raise ValueError("distillation_loss has nothing to learn from: no teacher logits (or soft_weight 0) "
                         "and no labels (or hard_weight 0)")
    return loss, parts


def distillation_logit_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    config: DistillLossConfig,
) -> torch.Tensor:
    """dL/dz of `distillation_loss` in closed form, (B, C), for rules that do not use autograd.

    soft: soft_weight * T * (softmax(z/T) - softmax(v/T)) / B;
    hard: hard_weight * (softmax(z) - onehot(y)) / B on labeled rows.
    """
    z = student_logits.detach()
    b = z.shape[0]
    grad = torch.zeros_like(z)
    if teacher_logits is not None and config.soft_weight:
        t = config.temperature
        grad += config.soft_weight * t * (soft_targets(z, t) - soft_targets(teacher_logits.detach(), t)) / b
    if labels is not None and config.hard_weight:
        labeled = labels >= 0
        if labeled.any():
            onehot = F.one_hot(labels.clamp_min(0), z.shape[1]).to(z.dtype)
            g = (torch.softmax(z, 1) - onehot) * labeled[:, None].to(z.dtype)
            grad += config.hard_weight * g / b
    return grad


class Teacher:
    """A model queried for logits, with a count of what it gave away.

    `fn` maps inputs (B, D) to logits (B, C); it may be a digital net or a device-based learner.
    Every example answered counts as one query; the answer is C reals of FLOAT_BITS bits.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 2000) -> None:
        self.fn = fn
        self.chunk = chunk
        self.queries = 0
        self.values = 0

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, C) for inputs x (B, D), in chunks."""
        out = torch.cat([self.fn(x[i : i + self.chunk]) for i in range(0, len(x), self.chunk)])
        self.queries += len(x)
        self.values += out.numel()
        return out

    @property
    def bits(self) -> int:
        """Payload bits handed out so far: every float32 logit sent (C per query; a softmax ignores a
        shared shift, so the soft targets themselves hold C - 1 free numbers per query)."""
        return self.values * FLOAT_BITS


class TransferTargets:
    """Labels and stored teacher logits that the shared loop slices together.

    `fit` only takes `len()` of its targets and indexes them with a batch of indices, so a
    transfer set can carry the teacher's answers (queried once, e.g. before the teacher dies)
    next to the labels: `fit(student, (x, TransferTargets(y, teacher.logits(x))), ...)`.
    Labels < 0 mean "unlabeled".
    """

    def __init__(self, labels: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        if labels.shape[0] != teacher_logits.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels but {teacher_logits.shape[0]} teacher answers")
        self.labels = labels
        self.teacher_logits = teacher_logits

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, idx) -> TransferTargets:
        return TransferTargets(self.labels[idx], self.teacher_logits[idx])

    @classmethod
    def unlabeled(cls, teacher_logits: torch.Tensor) -> TransferTargets:
        """Targets of an unlabeled transfer set: only the teacher's answers."""
        labels = torch.full((teacher_logits.shape[0],), -1, dtype=torch.int64, device=teacher_logits.device)
        return cls(labels, teacher_logits)
