"""Local losses trained by activity perturbation (Ren, Kornblith, Liao & Hinton 2023, "LG-FG-A").

The network is a stack of blocks (hidden layers); nothing is passed down between them: each block
learns greedily from its own objective, on the measured output of the block below. A block's H
neurons are split into groups of `group_size`; every group has its own local loss, the
cross-entropy of a linear classifier head that reads the whole block (as in Ren et al., sec. 4,
where the other groups' features enter the group's loss with a stop-gradient). A +/- pass pair
through the block perturbs all its total inputs at once, but group g's loss change is computed
with only group g's perturbed activities (the others clean: units of a layer do not interact, so
this is exact), so each group's estimate has the noise of `group_size` perturbed neurons rather
than of the whole network: that is what lets activity perturbation scale.

    a = f(x W + b) (B, H) measured;  a± = f(x W + b ± sigma u) (B, H) measured
    logits_g± = head(a) + (a± - a)[:, group g] V[group g]         (B, C) per group
    d_bg = (CE(logits_g+) - CE(logits_g-)) / (2 sigma);  g_z = d_b,group(j) u_j;  dW = x^T g_z / B

The heads are small digital linear classifiers, part of the local objective (like the loss itself);
each learns by the delta rule from its own input and output, V -= lr a^T (softmax - onehot) / B.
The prediction is the last block's head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.nets.ff import NORM_EPS
from mortalnet.optim import OptimizerConfig
from mortalnet.rules import register_rule
from mortalnet.rules.base import check_widths
from mortalnet.rules.perturbation import Estimate, PerturbationConfig, PerturbationLearner, _signed


@dataclass(frozen=True)
class LocalLossesConfig(PerturbationConfig):
    """Hyper-parameters of local losses trained by activity perturbation."""

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=3e-3, momentum=0.9))
    """Optimizer applied to the gradient estimates (the shared ones: smoothed-sgd, sgd, adam, adamw)."""
    group_size: int = 8
    """Neurons per local loss (must divide every block's width); the block's width = one loss per block."""
    mask_inactive: bool = True
    """Zero the estimate of neurons measured inactive (activity <= 0): their true derivative is 0."""
    normalize: bool = False
    """Scale each block's measured output to unit mean square before the next block and the head (digital;
    the scale is measured on the clean pass and held fixed for the perturbed passes)."""


@register_rule("local-losses")
class LocalLossesLearner(PerturbationLearner):
    """Blocks of ReLU neurons in groups, each group with its own local classifier loss.

    Args:
        config: hyper-parameters.
        hidden: block widths (each a multiple of `config.group_size`).
        input_dim, num_classes: sizes of input and output.
        seed: seeds initialization and perturbations.
        device: torch device.
    """

    Config = LocalLossesConfig

    def __init__(self, config: LocalLossesConfig = LocalLossesConfig(), hidden: tuple[int, ...] = (256, 256),
                 input_dim: int = 784, num_classes: int = 10, seed: int = 0, device: torch.device | str = "cpu"):
        hidden = check_widths(hidden)
        if not hidden:
            raise ConfigError("local-losses needs at least one hidden block")
        bad = [h for h in hidden if h % config.group_size]
        if config.group_size < 1 or bad:
            raise ConfigError(f"group_size={config.group_size} must divide every block width; {bad} do not")
        self.num_classes = num_classes
        self.hidden = tuple(hidden)
        super().__init__(config, (input_dim, *hidden), ["relu"] * len(hidden), seed, device)

    def build_extra(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        # heads (H_l, C), zero-initialized: the first steps train them on fixed random features
        self.head_w = nn.ParameterList(
            nn.Parameter(torch.zeros(h, self.num_classes, device=self.device_), requires_grad=False)
            for h in self.hidden
        )
        self.head_b = nn.ParameterList(
            nn.Parameter(torch.zeros(self.num_classes, device=self.device_), requires_grad=False)
            for _ in self.hidden
        )
        return list(self.head_w), list(self.head_b)

    @classmethod
    def quick_config(cls) -> LocalLossesConfig:
        """A larger learning rate and groups of 8: small nets learn a toy problem in a few epochs."""
        return LocalLossesConfig(optimizer=OptimizerConfig(name="adam", lr=3e-3, momentum=0.9), group_size=8)

    def _scale(self, a: torch.Tensor) -> torch.Tensor:
        """(B, 1) factor that brings each row of a (B, H) to unit mean square (1 when normalize is off)."""
        if not self.cfg.normalize:
            return torch.ones_like(a[:, :1])
        return 1.0 / (a.square().mean(dim=1, keepdim=True).sqrt() + NORM_EPS)

    def _block_output(self, a: torch.Tensor) -> torch.Tensor:
        return a * self._scale(a)

    def estimate(self, x: torch.Tensor, y: torch.Tensor) -> Estimate:
        c = self.cfg
        b, k, g = x.shape[0], c.directions, c.group_size
        reps = 2 * k if c.antithetic else k
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)  # (B, C)
        gw, gb, head_gw, head_gb, metrics = [], [], [], [], {}
        h, macs, loss = x, 0, None
        for l, layer in enumerate(self.layers):
            hidden = layer.out_features
            groups = hidden // g
            v, v0 = self.head_w[l], self.head_b[l]  # (H, C), (C,)
            a = layer.forward(h)  # (B, H) clean measured activities
            u = torch.randn((k, b, hidden), generator=self.generator, device=x.device, dtype=x.dtype)  # (K, B, H)
            a_pm = layer.forward(h.repeat(reps, 1), total_input_perturbation=_signed(u, c.sigma, c.antithetic))
            # the clean pass's normalizer scales the perturbed passes too (a stop-gradient on the norm),
            # so units stay independent and mixing groups is exact
            scale = self._scale(a)  # (B, 1)
            out, out_pm = a * scale, a_pm.view(reps, b, hidden) * scale
            logits = out @ v + v0  # (B, C) clean head output
            # group g's logits with only its own units perturbed: (R, B, G, C)
            delta = (out_pm - out).view(reps, b, groups, g)
            logits_pm = logits[None, :, None, :] + torch.einsum("rbgj,gjc->rbgc", delta, v.view(groups, g, -1))
            loss_pm = -(torch.log_softmax(logits_pm, -1) * onehot[None, :, None, :]).sum(-1)  # (R, B, G)
            loss_b = F.cross_entropy(logits, y, reduction="none")  # (B,)
            if c.antithetic:
                d = (loss_pm[:k] - loss_pm[k:]) / (2.0 * c.sigma)  # (K, B, G)
            else:
                d = (loss_pm - loss_b[None, :, None]) / c.sigma
            g_z = (d.repeat_interleave(g, dim=-1) * u).mean(0)  # (B, H): each unit gets its group's d
            if c.mask_inactive:
                g_z = g_z * (a > 0)
            gw.append(h.T @ g_z / b)  # (in, H)
            gb.append(g_z.mean(0))
            # the head's own update: delta rule on its measured input `out`
            err = torch.softmax(logits, -1) - onehot  # (B, C) = dCE/dlogits
            head_gw.append(out.T @ err / b)
            head_gb.append(err.mean(0))
            loss = loss_b.mean()
            metrics[f"loss_block{l + 1}"] = loss
            metrics[f"train_error_block{l + 1}"] = (logits.argmax(1) != y).float().mean()
            macs += b * h.shape[1] * hidden + (reps + 2) * b * hidden * self.num_classes  # updates and heads
            h = out  # the next block sees this block's (normalized) measured output; no derivative goes down
        return Estimate(gw, gb, loss, logits, macs, extra=[*head_gw, *head_gb], metrics=metrics)

    @torch.no_grad()
    def block_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's head output [(B, C), ...] on inputs x (B, D)."""
        out, h = [], x
        for l, layer in enumerate(self.layers):
            h = self._block_output(layer.forward(h))
            out.append(h @ self.head_w[l] + self.head_b[l])
        return out

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_logits(x)[-1]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Every block's head error, their product of experts, and the last head's (the prediction);
        isolated from training on a device (`PerturbationLearner.isolated`)."""
        with self.isolated():
            chunks = [self.block_logits(x[i : i + 2000]) for i in range(0, len(x), 2000)]
        res = {}
        for l in range(len(self.layers)):
            out = torch.cat([ch[l] for ch in chunks])
            res[f"error_block{l + 1}"] = (out.argmax(1) != y).float().mean().item()
        total = sum(torch.cat([ch[l] for ch in chunks]).log_softmax(-1) for l in range(len(self.layers)))
        res["error_all_heads"] = (total.argmax(1) != y).float().mean().item()  # the heads' product of experts
        res["error"] = res[f"error_block{len(self.layers)}"]
        return res
