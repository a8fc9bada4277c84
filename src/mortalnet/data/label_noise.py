"""Fixed label noise (the Hinton interview's experiment): a given fraction of the training labels is
replaced by a wrong label chosen ONCE per example, which then stays the same in every epoch.

`corrupt_labels` draws, from a generator seeded by the run seed, one permutation of the examples and
one wrong-label offset per example (uniform in 1..C-1, so the wrong label is uniform over the C-1
other classes and never the true one). Rate r corrupts the first round(r * N) examples of the
permutation, so the corrupted sets of increasing rates are nested and an example corrupted at
two rates gets the same wrong label at both.
"""

from __future__ import annotations

import torch


def corrupt_labels(labels: torch.Tensor, rate: float, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) true labels -> ((N,) noisy labels, (N,) bool mask of the corrupted examples).

    Exactly round(rate * N) labels are wrong; the result depends only on (labels, rate, seed).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must be in [0, 1], got {rate}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    n = len(labels)
    g = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + 424_242)
    order = torch.randperm(n, generator=g)  # (N,)
    offsets = torch.randint(1, num_classes, (n,), generator=g)  # (N,) in 1..C-1
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[: round(rate * n)]] = True
    y = labels.cpu()
    noisy = torch.where(mask, (y + offsets) % num_classes, y)
    return noisy.to(labels.device), mask.to(labels.device)
