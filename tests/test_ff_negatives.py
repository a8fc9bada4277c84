"""Hybrid-image negatives (Hinton 2022, sec. 3.2) and jitter (sec. 3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mortalnet.data.augment import jitter, shift_images
from mortalnet.data.negatives import BLUR_FILTER, blur, hybrid_masks, hybrid_negatives


def _regions(mask: torch.Tensor) -> list[int]:
    """Sizes of the 4-connected regions of equal value in a (28, 28) 0/1 mask."""
    m = mask.reshape(28, 28).tolist()
    seen = [[False] * 28 for _ in range(28)]
    sizes = []
    for i in range(28):
        for j in range(28):
            if seen[i][j]:
                continue
            seen[i][j], stack, n = True, [(i, j)], 0
            while stack:
                a, b = stack.pop()
                n += 1
                for x, y in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                    if 0 <= x < 28 and 0 <= y < 28 and not seen[x][y] and m[x][y] == m[a][b]:
                        seen[x][y] = True
                        stack.append((x, y))
            sizes.append(n)
    return sizes


def test_blur_is_repeated_quarter_half_quarter_filtering():
    x = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))
    k = torch.tensor(BLUR_FILTER)
    y = x[:, None]
    for _ in range(4):
        y = F.conv2d(F.pad(y, (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3))
        y = F.conv2d(F.pad(y, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1))
    torch.testing.assert_close(blur(x, 4), y[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(blur(torch.full((1, 28, 28), 0.5), 10), torch.full((1, 28, 28), 0.5))


def test_hybrid_masks_have_large_regions_and_balanced_proportions():
    g = torch.Generator().manual_seed(0)
    masks = hybrid_masks(400, g)  # default: 10 blurs, threshold 0.5
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    frac = masks.mean(1)
    assert 0.45 < frac.mean() < 0.55  # ones and zeros in equal proportion on average
    assert 0.05 < frac.std() < 0.2  # masks differ, but few are all one digit
    m = masks.reshape(-1, 28, 28)
    agree = ((m[:, 1:] == m[:, :-1]).float().mean() + (m[:, :, 1:] == m[:, :, :-1]).float().mean()) / 2
    assert agree > 0.88  # neighbours mostly agree: large regions (random bits: 0.5)
    regions = [_regions(mk) for mk in masks[:40]]
    assert sum(len(r) for r in regions) / 40 < 12  # a handful of regions per mask
    assert sum(max(r) for r in regions) / 40 > 200  # the largest covers a good part of the image
    raw = hybrid_masks(40, g, blur_steps=0)  # without blurring: salt and pepper
    assert sum(len(_regions(mk)) for mk in raw) / 40 > 80


def test_hybrid_negatives_mix_two_different_images_by_the_mask():
    n = 50
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 784) + 1.0  # image i is constant i+1
    neg = hybrid_negatives(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # replay the draws: pairing, then masks
    perm = torch.randperm(n, generator=g)
    partner = torch.empty_like(perm)
    partner[perm] = perm.roll(1)
    masks = hybrid_masks(n, g)
    assert not (partner == torch.arange(n)).any()  # never mixed with itself
    assert sorted(partner.tolist()) == list(range(n))  # every image is a partner once
    expected = masks * x + (1 - masks) * x[partner]
    torch.testing.assert_close(neg, expected)


def test_shift_moves_pixels_and_fills_zeros():
    x = torch.zeros(2, 784)
    x[0, 5 * 28 + 7] = 1.0
    x[1, 0] = 1.0
    out = shift_images(x, torch.tensor([2, -1]), torch.tensor([-1, 1]))
    assert out[0].reshape(28, 28).nonzero().tolist() == [[7, 6]]
    assert out[1].sum() == 0  # shifted out of the frame


def test_jitter_draws_all_25_shifts_and_keeps_shapes():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2000, 784)
    x[:, 14 * 28 + 14] = 1.0  # a dot in the middle
    out = jitter(2)(x, g)
    pos = out.reshape(-1, 28, 28).flatten(1).argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 25
    assert torch.equal(jitter(0)(x, g), x)


def test_distill_jitter_draws_dy_then_dx_and_shifts_like_shift_images():
    """distill-mnist's teacher jitter keeps its own draws (two (B, 1) draws, dy then dx: the order its
    records were made with) and shifts through shift_images."""
    from mortalnet.experiments.distill_mnist import jitter as distill_jitter

    x = torch.zeros(500, 784)
    x[:, 14 * 28 + 14] = 1.0
    out = distill_jitter(x, torch.Generator().manual_seed(3), 2)
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(-2, 3, (500, 1), generator=g)[:, 0]
    dx = torch.randint(-2, 3, (500, 1), generator=g)[:, 0]
    pos = out.argmax(1)
    assert torch.equal(pos // 28 - 14, dy) and torch.equal(pos % 28 - 14, dx)
    assert torch.equal(out.sum(1), torch.ones(500))
    assert distill_jitter(x, g, 0) is x
