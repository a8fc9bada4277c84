"""The associative retrieval task of Ba, Hinton, Mnih, Leibo & Ionescu 2016 ("Using Fast Weights to
Attend to the Recent Past", sec. 4.1).

A sequence lists `pairs` letter-digit pairs with distinct letters, then "??", then one of the
letters; the answer is the digit that followed that letter: "c9k8j3f1??c" -> 9. Symbols: a-z are
0..25, digits 0-9 are 26..35, "?" is 36 (37 in all). Letters are drawn without replacement,
digits with replacement, the query uniformly among the sequence's letters. The paper generates
60k training, 10k validation and 10k test sequences; here each split has its own seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789?"
"""The 37 input symbols (index = position in this string)."""
NUM_SYMBOLS = len(SYMBOLS)
QUERY = 36
DIGIT0 = 26


@dataclass(frozen=True)
class AssociativeConfig:
    """Sizes of the generated associative retrieval sets."""

    pairs: int = 4
    """Letter-digit pairs per sequence (paper: 4, so sequences of 11 symbols)."""
    train: int = 60000
    """Training sequences (paper: 60k)."""
    valid: int = 10000
    """Validation sequences (paper: 10k)."""
    test: int = 10000
    """Test sequences (paper: 10k), used once at the end."""


def generate(n: int, pairs: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences -> (x (n, 2*pairs + 3) int64 symbols, y (n,) int64 answer digit 0..9)."""
    if not 1 <= pairs <= 26:
        raise ValueError(f"pairs must be in 1..26 (distinct letters), got {pairs}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    letters = torch.rand(n, 26, generator=g).argsort(1)[:, :pairs]  # (n, P) distinct letters
    digits = torch.randint(0, 10, (n, pairs), generator=g)  # (n, P)
    which = torch.randint(0, pairs, (n,), generator=g)  # (n,) queried pair
    x = torch.empty(n, 2 * pairs + 3, dtype=torch.long)
    x[:, 0 : 2 * pairs : 2] = letters
    x[:, 1 : 2 * pairs : 2] = digits + DIGIT0
    x[:, 2 * pairs : 2 * pairs + 2] = QUERY
    rows = torch.arange(n)
    x[:, -1] = letters[rows, which]
    return x, digits[rows, which]


def make_splits(config: AssociativeConfig, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train / valid / test sets, each from its own generator seeded by (seed, split)."""
    base = int(seed) * 1_000_003
    return {name: generate(n, config.pairs, base + k) for k, (name, n) in
            enumerate((("train", config.train), ("valid", config.valid), ("test", config.test)))}


def to_string(x: torch.Tensor) -> str:
    """(T,) symbols -> the sequence as text, e.g. 'c9k8j3f1??c'."""
    return "".join(SYMBOLS[int(i)] for i in x)
