"""What the shared training loop drives: a network together with the rule that trains it.

A `Learner` owns its parameters, optimizers and random generator. The loop calls
`train_batch` for every minibatch and `evaluate` on held-out data; checkpoints store
`state_tensors()` (tensors only: parameters, buffers, optimizer state, generator state).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.optim import load_optimizer_tensors, optimizer_tensors, set_lr_scale


class NonFiniteError(RuntimeError):
    """A value a rule computed from finite parameters became NaN or inf (logits that overflowed
    after a step that was too large). `fit` reports it as a divergence, with the epoch and step,
    and keeps the last good checkpoint."""


def sample_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of probs (B, C), drawn by torch.multinomial: (B,) int64. Probabilities
    that are NaN or inf are a NonFiniteError rather than torch's bare RuntimeError; they are
    only looked at when torch refuses them."""
    try:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    except RuntimeError:
        if bool(torch.isfinite(probs).all()):
            raise
        raise NonFiniteError("the probabilities sampled from (labels or symbols) became non-finite") from None


def check_widths(hidden: Iterable[int]) -> tuple[int, ...]:
    """The hidden widths as a tuple of ints; ConfigError unless each is a positive integer (a numpy
    integer too; a bool or a float is not). A width of 0 otherwise builds a net that cannot learn (a
    layer with no units) or fails deep inside torch."""
    given = tuple(hidden)
    try:
        widths = tuple(operator.index(w) for w in given if not isinstance(w, bool))
    except TypeError:
        widths = ()
    if len(widths) != len(given) or any(w < 1 for w in widths):
        raise ConfigError(f"hidden widths must be positive integers; got {given}")
    return widths


class Learner(nn.Module):
    """Base class of every learning rule's trainable object.

    Subclasses set `self.optimizers` (a list) and `self.generator` (a torch.Generator on the
    learner's device), and implement `train_batch` and `evaluate`.
    """

    #: metric that `evaluate` returns as the headline test error
    primary_metric: str = "error"

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.device_ = torch.device(device)
        self.generator = torch.Generator(device=self.device_)
        self.generator.manual_seed(seed)
        self.optimizers: list[torch.optim.Optimizer] = []

    @classmethod
    def quick_config(cls):
        """A config that learns small problems in a few epochs (tests, smoke runs); default Config()."""
        return cls.Config()

    # -- to implement ------------------------------------------------------------------------
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """One update from a minibatch x (B, D), y (B,); returns 0-dim metric tensors."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Error rates (fractions) on (x, y), one per test procedure; must include primary_metric."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def set_lr_scale(self, scale: float) -> None:
        """Multiply every optimizer's base learning rate by `scale` (the schedule)."""
        for opt in self.optimizers:
            set_lr_scale(opt, scale)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume bit-exactly, as named tensors."""
        out = {f"module.{k}": v for k, v in self.state_dict().items()}
        for i, opt in enumerate(self.optimizers):
            out.update(optimizer_tensors(opt, f"optim{i}."))
        out["rng.learner"] = self.generator.get_state()
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_tensors` saved."""
        module = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        self.load_state_dict(module)
        for i, opt in enumerate(self.optimizers):
            load_optimizer_tensors(opt, dict(tensors), f"optim{i}.")
        if "rng.learner" in tensors:
            self.generator.set_state(tensors["rng.learner"].cpu())

    def predict_batches(self, fn, x: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
        """Apply `fn` to x in chunks (bounded memory) and concatenate the results."""
        return torch.cat([fn(x[i : i + chunk]) for i in range(0, len(x), chunk)])
