"""Negative data for unsupervised Forward-Forward (Hinton 2022, sec. 3.2).

Hybrid images: a mask with large regions of ones and zeros is made by starting from a random bit
image and blurring it repeatedly with the filter [1/4, 1/2, 1/4] in the horizontal and the
vertical direction, then thresholding at 0.5. A negative image is one digit times the mask plus
another digit times its complement: short-range correlations like those of real digits, long-range
correlations (shapes) unlike any digit. No label is used.
"""

from __future__ import annotations

import torch

BLUR_FILTER = (0.25, 0.5, 0.25)


def blur_matrix(side: int, steps: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(side, side) matrix M with (M @ v) = v blurred `steps` times by [1/4, 1/2, 1/4].

    One blur is tridiagonal; the border is replicated (not zero-padded), so blurring keeps a field
    of 0.5 at 0.5 everywhere: with zero padding the edges would drift toward 0 and bias the mask.
    """
    one = torch.zeros(side, side, dtype=torch.float64)
    for i in range(side):
        for j, w in zip((i - 1, i, i + 1), BLUR_FILTER):
            one[i, min(max(j, 0), side - 1)] += w
    return torch.linalg.matrix_power(one, steps).to(dtype=dtype, device=device)


def blur(images: torch.Tensor, steps: int) -> torch.Tensor:
    """Blur (N, H, W) `steps` times with [1/4, 1/2, 1/4] along rows and columns (replicated border).

    Blurring is linear, so `steps` blurs are one matrix on each side: M_H @ x @ M_W^T.
    """
    mh = blur_matrix(images.shape[1], steps, images.dtype, images.device)
    mw = blur_matrix(images.shape[2], steps, images.dtype, images.device)
    return mh @ images @ mw.T


def hybrid_masks(n: int, generator: torch.Generator, side: int = 28, blur_steps: int = 10,
                 threshold: float = 0.5) -> torch.Tensor:
    """(n, side*side) float masks of 0 and 1: random bits, blurred `blur_steps` times, thresholded."""
    if blur_steps < 0:
        raise ValueError(f"blur_steps must be >= 0, got {blur_steps}")
    bits = torch.randint(0, 2, (n, side, side), generator=generator, device=generator.device).float()
    return (blur(bits, blur_steps) > threshold).float().reshape(n, side * side)


def hybrid_images(first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """first * mask + second * (1 - mask), all (N, D)."""
    return torch.lerp(second, first, mask)


def hybrid_negatives(images: torch.Tensor, generator: torch.Generator, side: int = 28, blur_steps: int = 10,
                     threshold: float = 0.5, channels: int = 1) -> torch.Tensor:
    """Hybrids of each image (N, channels*side*side) with another image of the same batch.

    Row i is mixed with a partner drawn by a random cyclic pairing (never itself, for N > 1), with
    a fresh mask per row, shared by the row's channels. Uses no label.
    """
    n = images.shape[0]
    if n < 2:
        raise ValueError("hybrid negatives need at least 2 images in the batch")
    if images.shape[1] != channels * side * side:
        raise ValueError(f"images have {images.shape[1]} values, expected {channels}x{side}x{side}")
    perm = torch.randperm(n, generator=generator, device=generator.device).to(images.device)
    partner = torch.empty_like(perm)
    partner[perm] = perm.roll(1)  # perm[j] is mixed with perm[j-1]
    mask = hybrid_masks(n, generator, side, blur_steps, threshold).to(images.device)
    return hybrid_images(images, images[partner], mask.repeat(1, channels))
