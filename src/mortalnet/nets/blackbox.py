"""Black boxes for the forward pass (Hinton 2022, sec. 1 and 7: FF can learn through an unknown,
non-differentiable component; backprop needs a model of it).

`NumpyQuantizer` stands for a piece of hardware nobody can model exactly: a fixed random mixing
of its inputs, a saturating nonlinearity and an n-bit converter, computed in NumPy (float64),
outside torch. Its output carries no autograd history. Wrapped by `opaque` for a network that
someone tries to train by backprop, its backward pass raises `NoDerivativeError` with a message
that says why. `torch_quantizer` is the same function written in torch: autograd runs, but the
rounding step has zero derivative almost everywhere, so nothing below the box learns.
"""

from __future__ import annotations

import numpy as np
import torch


class NoDerivativeError(RuntimeError):
    """Backpropagation reached a black box that has no derivative."""


class NumpyQuantizer:
    """y = round(tanh(h R) * L) / L computed in NumPy: R a fixed random orthogonal (H, H) matrix drawn
    from `seed`, L = 2**(bits-1) - 1 levels per sign (an n-bit converter).

    Args:
        width: H, the size of the activity vector going through the box.
        bits: converter precision.
        seed: the box's own hidden randomness (a device instance), unknown to any learner.
        gain: input scale before tanh.
    """

    def __init__(self, width: int, bits: int = 8, seed: int = 1234, gain: float = 1.0):
        if bits < 2:
            raise ValueError(f"bits must be >= 2, got {bits}")
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((width, width)))
        self.mix = q  # (H, H) float64, orthogonal
        self.levels = 2 ** (bits - 1) - 1
        self.gain = gain
        self.width, self.bits = width, bits

    def numpy(self, h: np.ndarray) -> np.ndarray:
        """The box on a NumPy array (N, H) -> (N, H)."""
        return np.round(np.tanh(self.gain * (h @ self.mix)) * self.levels) / self.levels

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) tensor -> (N, H) tensor with no autograd history (the computation leaves torch)."""
        out = self.numpy(h.detach().cpu().numpy().astype(np.float64))
        return torch.from_numpy(out).to(device=h.device, dtype=h.dtype)


class _Opaque(torch.autograd.Function):
    """Forward: the box. Backward: an error saying that the box has no derivative."""

    @staticmethod
    def forward(ctx, h, box):  # noqa: D102 - torch API
        ctx.name = type(box).__name__
        return box(h)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - torch API
        raise NoDerivativeError(
            f"backpropagation reached the black box {ctx.name}: it is computed outside the model "
            "(NumPy / physical hardware), so no derivative of its output with respect to its input exists. "
            "Backprop needs an exact model of every step of the forward pass; Forward-Forward does not."
        )


def opaque(box):
    """Wrap a box so that a backward pass through it fails with `NoDerivativeError` (instead of
    silently cutting the graph, which would leave the layers below untrained without a word)."""

    def apply(h: torch.Tensor) -> torch.Tensor:
        return _Opaque.apply(h, box) if h.requires_grad else box(h)

    return apply


def torch_quantizer(box: NumpyQuantizer):
    """The same function in torch (differentiable as far as autograd knows; d round / dx = 0)."""
    mix = torch.from_numpy(box.mix)

    def apply(h: torch.Tensor) -> torch.Tensor:
        m = mix.to(device=h.device, dtype=h.dtype)
        return torch.round(torch.tanh(box.gain * (h @ m)) * box.levels) / box.levels

    return apply
