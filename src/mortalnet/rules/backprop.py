"""Backpropagation: the digital baseline and the oracle every other rule is compared with.

A permutation-invariant MLP (ReLU hidden layers, linear output), cross-entropy loss, trained end
to end by autograd. The FF paper's reference: a few fully connected ReLU layers reach about 1.4%
MNIST test error in about 20 epochs, 1.1% with dropout or label smoothing (section 3.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules import register_rule
from mortalnet.rules.base import Learner, check_widths


@dataclass(frozen=True)
class BackpropConfig:
    """Hyper-parameters of the backprop MLP."""

    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0005)
    )
    """Optimizer (sgd with momentum by default)."""
    dropout: float = 0.0
    """Dropout probability on hidden activities (0 = none)."""
    input_dropout: float = 0.0
    """Dropout probability on input pixels (0 = none)."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy targets."""

    def __post_init__(self) -> None:
        for name in ("dropout", "input_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


class MLP(nn.Module):
    """input_dim -> hidden... -> num_classes, ReLU, optional dropout. forward: (B, D) -> (B, C) logits."""

    def __init__(self, input_dim: int, hidden: tuple[int, ...], num_classes: int, dropout: float = 0.0,
                 input_dropout: float = 0.0, generator: torch.Generator | None = None, device=None):
        super().__init__()
        dims = (input_dim, *check_widths(hidden), num_classes)  # also community's agents (agent.hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b, device=device) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout, self.input_dropout = dropout, input_dropout
        # uniform in ±sqrt(3 / fan_in), variance 1 / fan_in (LeCun-uniform), from our own generator (reproducible)
        with torch.no_grad():
            for lin in self.linears:
                bound = (6.0 / lin.in_features) ** 0.5 / 2**0.5
                lin.weight.copy_(torch.rand(lin.weight.shape, generator=generator, device=device) * 2 * bound - bound)
                lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_dropout:
            x = F.dropout(x, self.input_dropout, self.training)
        for lin in self.linears[:-1]:
            x = torch.relu(lin(x))
            if self.dropout:
                x = F.dropout(x, self.dropout, self.training)
        return self.linears[-1](x)


class BackpropClassifier(Learner):
    """A learner whose `net` (an nn.Module) maps a batch of inputs to logits (B, C), trained end to
    end by autograd: one cross-entropy step per minibatch (label smoothing `label_smoothing`), the
    global gradient norm clipped to `grad_clip` when it is above 0, the test in batches with the
    net in eval mode. Subclasses build `net` and `optimizers`."""

    primary_metric = "error"
    label_smoothing: float = 0.0
    grad_clip: float = 0.0

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        self.net.train()
        # dropout masks come from torch's global generator; the loop seeds it per epoch
        logits = self.net(x)  # (B, C)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
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


@register_rule("backprop")
class BackpropLearner(BackpropClassifier):
    """An MLP trained by backpropagation of the cross-entropy."""

    Config = BackpropConfig

    def __init__(self, config: BackpropConfig = BackpropConfig(), hidden: tuple[int, ...] = (1000, 1000, 1000),
                 input_dim: int = 784, num_classes: int = 10, seed: int = 0, device: torch.device | str = "cpu"):
        super().__init__(seed, device)
        self.cfg = config
        self.label_smoothing = config.label_smoothing
        self.net = MLP(input_dim, tuple(hidden), num_classes, config.dropout, config.input_dropout,
                       self.generator, self.device_)
        weights = [lin.weight for lin in self.net.linears]
        biases = [lin.bias for lin in self.net.linears]
        self.optimizers = [make_optimizer(config.optimizer, weights, biases)]
