"""Next-character models over a text, as probability functions an arithmetic coder can use.

A model sees the `context` previous characters of the text it codes; before the first character
of a text the context is padded with a start symbol (index C, one past the alphabet), so a
held-out text is coded on its own, without the training text before it. The context is one-hot
coded position-major with the start symbol as an all-zero block: (N, c) -> (N, c*C).

Two learners turn such windows into next-character probabilities (see experiments/compression.py):
the backprop MLP (`BackpropLearner` on the one-hot context, softmax output) and supervised FF on
sequences (`FFLearner` with the candidate character in the label slot, Hinton 2022 sec. 3.5;
its probabilities are the linear softmax readout of one neutral pass, cheap: one forward pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def padded_windows(symbols: torch.Tensor, context: int, num_symbols: int) -> torch.Tensor:
    """(L,) symbols -> (L, context) the characters before each position, start-padded with `num_symbols`.

    Row j holds symbols j-context .. j-1 (the start symbol where j-k < 0).
    """
    pad = torch.full((context,), num_symbols, dtype=symbols.dtype, device=symbols.device)
    full = torch.cat([pad, symbols])  # (L + c,)
    return full.unfold(0, context, 1)[: len(symbols)]  # (L, c)


def one_hot_padded(contexts: torch.Tensor, num_symbols: int) -> torch.Tensor:
    """(N, c) symbols in [0, C] (C = start symbol) -> (N, c*C) float one-hot; the start symbol is all zeros."""
    return F.one_hot(contexts, num_symbols + 1)[..., :num_symbols].flatten(1).float()


def model_inputs(kind: str, contexts: torch.Tensor, num_symbols: int) -> torch.Tensor:
    """Input rows of a model kind: backprop (N, c*C); ff (N, C + c*C) with an empty label slot."""
    x = one_hot_padded(contexts, num_symbols)
    if kind == "backprop":
        return x
    if kind == "ff":
        return torch.cat([x.new_zeros(len(x), num_symbols), x], 1)
    raise ValueError(f"unknown model kind {kind!r}; valid: backprop, ff")


def next_char_logits(kind: str, learner, x: torch.Tensor) -> torch.Tensor:
    """(N, D) model inputs -> (N, C) logits of the next character (batched)."""
    fn = learner.logits if kind == "backprop" else learner.softmax_logits
    return learner.predict_batches(fn, x)


def bits_per_char(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean -log2 p(target) under softmax(logits): (N, C), (N,) -> bits per character."""
    logp = torch.log_softmax(logits.double(), 1)
    return float(-logp[torch.arange(len(targets)), targets].mean() / torch.log(torch.tensor(2.0, dtype=torch.float64)))


def coder_model(kind: str, learner, context: int, num_symbols: int) -> Callable[[Sequence[int]], list[float]]:
    """A model for `mortalnet.coding.arithmetic`: prefix (list of symbols) -> next-symbol probabilities.

    One row per call (encoder and decoder see the same computation, so the same floats).
    """
    device = learner.device_

    def model(prefix: Sequence[int]) -> list[float]:
        ctx = list(prefix[-context:]) if context else []
        ctx = [num_symbols] * (context - len(ctx)) + ctx
        rows = torch.tensor([ctx], dtype=torch.long, device=device)  # (1, c)
        with torch.no_grad():
            logits = next_char_logits(kind, learner, model_inputs(kind, rows, num_symbols))
            return torch.softmax(logits.double(), 1)[0].tolist()

    return model
