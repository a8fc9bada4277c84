"""Data augmentation for the shared loop's `transform` hook.

`jitter`: the FF paper's "jittered MNIST" (Hinton 2022, sec. 3.3): each training image is shifted
by a random integer offset (dy, dx) in [-s, s]^2 (25 shifts for s = 2), the uncovered border filled
with zeros. A fresh shift is drawn for every image in every epoch from the loop's generator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mortalnet.config import ConfigError


def shift_images(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, side: int = 28) -> torch.Tensor:
    """Shift each image (B, side*side) by integer offsets dy, dx (B,); zeros come in at the border.

    out[b, r, c] = img[b, r - dy[b], c - dx[b]] where that pixel exists, else 0.
    """
    B = images.shape[0]
    if images.shape[1] != side * side:
        raise ValueError(f"images have {images.shape[1]} pixels, expected {side}x{side}")
    pad = int(max(dy.abs().max().item(), dx.abs().max().item(), 0)) if B else 0
    img = images.reshape(B, side, side)
    padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))  # (B, side+2p, side+2p)
    ar = torch.arange(side, device=images.device)
    rows = (ar[None, :] + pad - dy[:, None]).long()  # (B, side)
    cols = (ar[None, :] + pad - dx[:, None]).long()  # (B, side)
    b = torch.arange(B, device=images.device)[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]].reshape(B, side * side)


def check_shift(max_shift: int, name: str = "max_shift", side: int = 28) -> None:
    """ConfigError unless 0 <= max_shift < side: a shift of a whole side moves the digit out of
    the frame (and the padded copy grows with the shift)."""
    if not 0 <= max_shift < side:
        raise ConfigError(f"{name} must be between 0 and {side - 1} pixels (0: no jitter), got {max_shift}")


def jitter(max_shift: int = 2, side: int = 28) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A `fit` transform: shift every image by a uniform random (dy, dx) in [-max_shift, max_shift]^2."""
    check_shift(max_shift, side=side)

    def transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if max_shift == 0:
            return x
        n = 2 * max_shift + 1
        d = torch.randint(0, n, (2, x.shape[0]), generator=generator, device=generator.device) - max_shift
        return shift_images(x, d[0].to(x.device), d[1].to(x.device), side)

    return transform
