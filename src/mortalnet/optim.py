"""Optimizers and learning-rate schedules shared by every learning rule.

A rule puts a gradient estimate (descent convention: the direction that *increases* the loss)
into each parameter's `.grad`, however it obtained it (autograd, a local FF formula, finite
differences through a black box); the optimizer and the schedule are then the same for all rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

ScheduleName = Literal["constant", "half-then-linear", "linear", "cosine"]


class SmoothedSGD(torch.optim.Optimizer):
    """SGD with exponentially smoothed gradients and a weight cost outside the smoothing.

    The update of Hinton's `ffnew.m`:
        g_smooth = smoothing * g_smooth + (1 - smoothing) * grad
        w       -= lr * (g_smooth + weight_cost * w)
    (`smoothing` 0.9 there; the smoothed gradient starts at zero). Unlike torch's SGD with
    momentum/dampening, the weight cost is not smoothed and the first step is damped too.
    """

    def __init__(self, params: Iterable, lr: float, smoothing: float = 0.9, weight_cost: float = 0.0):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        super().__init__(params, dict(lr=lr, smoothing=smoothing, weight_cost=weight_cost))
        for group in self.param_groups:  # as torch's optimizers: a negative rate or cost climbs the loss
            if not group["lr"] >= 0.0:
                raise ValueError(f"the learning rate must be >= 0, got {group['lr']}")
            if not group["weight_cost"] >= 0.0:
                raise ValueError(f"the weight cost must be >= 0, got {group['weight_cost']}")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim API
        for group in self.param_groups:
            lr, a, wc = group["lr"], group["smoothing"], group["weight_cost"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "smoothed_grad" not in state:
                    state["smoothed_grad"] = torch.zeros_like(p)
                g = state["smoothed_grad"]
                g.mul_(a).add_(p.grad, alpha=1.0 - a)
                if wc:
                    p.add_(p, alpha=-lr * wc)
                p.add_(g, alpha=-lr)
        return None


@dataclass(frozen=True)
class OptimizerConfig:
    """Which optimizer turns a rule's gradient estimates into weight changes."""

    name: Literal["smoothed-sgd", "sgd", "adam", "adamw"] = "smoothed-sgd"
    """smoothed-sgd (ffnew.m) | sgd (with momentum) | adam | adamw."""
    lr: float = 0.01
    """Base learning rate (the schedule multiplies it)."""
    momentum: float = 0.9
    """Gradient smoothing (smoothed-sgd) or momentum (sgd); adam uses betas=(momentum, 0.999)."""
    weight_decay: float = 0.0
    """Weight cost on weights (not biases): L2 pull toward zero per step, times lr."""


def make_optimizer(
    config: OptimizerConfig,
    weights: list[torch.nn.Parameter],
    biases: list[torch.nn.Parameter] = (),
    lr: float | None = None,
    weight_decay: float | None = None,
) -> torch.optim.Optimizer:
    """Build the configured optimizer; weight decay applies to `weights`, never to `biases`."""
    lr = config.lr if lr is None else lr
    wd = config.weight_decay if weight_decay is None else weight_decay
    groups = [{"params": list(weights), "wd": wd}]
    if biases:
        groups.append({"params": list(biases), "wd": 0.0})
    if config.name == "smoothed-sgd":
        return SmoothedSGD(
            [{"params": g["params"], "weight_cost": g["wd"]} for g in groups], lr=lr, smoothing=config.momentum
        )
    if config.name == "sgd":
        return torch.optim.SGD(
            [{"params": g["params"], "weight_decay": g["wd"]} for g in groups], lr=lr, momentum=config.momentum
        )
    cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return cls(
        [{"params": g["params"], "weight_decay": g["wd"]} for g in groups], lr=lr, betas=(config.momentum, 0.999)
    )


def schedule_factor(name: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for 1-based `epoch` of `epochs`.

    half-then-linear is ffnew.m's `epsgain`: 1 for the first half, then (1 + 2(E - e)) / E,
    reaching 1/E in the last epoch.
    """
    if name == "constant":
        return 1.0
    if name == "half-then-linear":
        return 1.0 if epoch <= epochs / 2 else (1.0 + 2.0 * (epochs - epoch)) / epochs
    if name == "linear":
        return (epochs - epoch + 1) / epochs
    if name == "cosine":
        import math

        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    raise ValueError(f"unknown schedule {name!r}; valid: constant, half-then-linear, linear, cosine")


def set_lr_scale(optimizer: torch.optim.Optimizer, scale: float) -> None:
    """Set every group's lr to its initial lr times `scale`."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * scale


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as a flat dict of tensors (for safetensors)."""
    out = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{prefix}{i}.{key}"] = t
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Restore state saved by `optimizer_tensors`."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for name, value in tensors.items():
        if not name.startswith(prefix):
            continue
        idx, key = name[len(prefix):].split(".", 1)
        p = params[int(idx)]
        if key == "step" and not isinstance(value, torch.Tensor):
            value = torch.tensor(value)
        optimizer.state[p][key] = value.to(p.device) if key != "step" else value.clone()
