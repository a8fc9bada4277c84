"""Backprop through time for a sequence classifier: any nn.Module mapping (B, T) int64 symbols to
(B, classes) logits, cross-entropy, gradient-norm clipping, a shared optimizer (`mortalnet.optim`).

Not a registered rule: its inputs are symbol sequences, not 784-pixel images (see
experiments/fast_weights.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules.base import Learner


class SequenceBackpropLearner(Learner):
    """Trains `net` by backprop through time.

    Args:
        net: (B, T) int64 -> (B, C) logits; moved to `device`.
        optimizer: the optimizer (weight decay applies to matrices, not to vectors).
        grad_clip: clip the global gradient norm to this (0 = no clipping).
        seed, device: as for every rule.
    """

    primary_metric = "error"

    def __init__(self, net: nn.Module, optimizer: OptimizerConfig, grad_clip: float = 0.0, seed: int = 0,
                 device: torch.device | str = "cpu"):
        super().__init__(seed, device)
        self.net = net.to(self.device_)
        self.grad_clip = grad_clip
        params = list(self.net.parameters())
        self.optimizers = [make_optimizer(optimizer, [p for p in params if p.dim() >= 2],
                                          [p for p in params if p.dim() < 2])]

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        self.net.train()
        logits = self.net(x)  # (B, C)
        loss = F.cross_entropy(logits, y)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        opt.step()
        return {"loss": loss.detach(), "train_error": (logits.argmax(1) != y).float().mean().detach()}

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return self.net(x)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = self.predict_batches(self.logits, x)
        return {"error": (out.argmax(1) != y).float().mean().item()}
