"""Backprop through time for a sequence classifier: any nn.Module mapping (B, T) int64 symbols to
(B, classes) logits, cross-entropy, gradient-norm clipping, a shared optimizer (`mortalnet.optim`).

Not a registered rule: its inputs are symbol sequences, not 784-pixel images (see
experiments/fast_weights.py).
"""

from __future__ import annotations

import torch
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules.backprop import BackpropClassifier


class SequenceBackpropLearner(BackpropClassifier):
    """Trains `net` by backprop through time.

    Args:
        net: (B, T) int64 -> (B, C) logits; moved to `device`.
        optimizer: the optimizer (weight decay applies to matrices, not to vectors).
        grad_clip: clip the global gradient norm to this (0 = no clipping).
        seed, device: as for every rule.
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerConfig, grad_clip: float = 0.0, seed: int = 0,
                 device: torch.device | str = "cpu"):
        super().__init__(seed, device)
        if not grad_clip >= 0:
            raise ConfigError(f"grad_clip must be >= 0 (0: no clipping), got {grad_clip}")
        self.net = net.to(self.device_)
        self.grad_clip = grad_clip
        params = list(self.net.parameters())
        self.optimizers = [make_optimizer(optimizer, [p for p in params if p.dim() >= 2],
                                          [p for p in params if p.dim() < 2])]
