"""Recurrent sequence classifiers for the associative retrieval task: fast weights, a plain RNN and
an LSTM (Ba, Hinton, Mnih, Leibo & Ionescu 2016, "Using Fast Weights to Attend to the Recent Past").

Fast-weights RNN (sec. 2 and 3.1 of the paper), with x(t) the embedded input symbol:
    h_0(t+1)     = f(W h(t) + C x(t))
    h_{s+1}(t+1) = f(LN[W h(t) + C x(t) + A(t) h_s(t+1)]),   s = 0 .. S-1,  h(t+1) = h_S(t+1)
    A(t)         = lambda A(t-1) + eta h(t) h(t)^T
f = ReLU, LN = layer normalization. A(t) is never stored: it is a decayed sum of outer products of
the past hidden states, so (sec. 3.1, "attention to the recent past")
    A(t) h_s = eta * sum_{tau <= t} lambda^{t - tau} h(tau) <h(tau), h_s>
costs O(t R) per example with the past states kept, (B, t, R), against O(R^2) memory per example
for the matrix. `form="matrix"` computes the same thing with the explicit (B, R, R) matrix (for the
test that both agree).

The plain RNN is the same cell without fast weights and without LN: h(t+1) = f(W h(t) + C x(t)).
The LSTM is torch's. All three read the symbols through the same embedding and answer from the
last hidden state through one ReLU layer and a linear softmax over the 10 digits.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class _Head(nn.Module):
    """Last hidden state (B, R) -> (B, classes) logits through one ReLU layer."""

    def __init__(self, hidden: int, readout: int, classes: int):
        super().__init__()
        self.mid = nn.Linear(hidden, readout)
        self.out = nn.Linear(readout, classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.mid(h)))


class FastWeightsRNN(nn.Module):
    """(B, T) symbols -> (B, classes) logits with a fast-weights recurrent layer of R units.

    Args:
        num_symbols, embed, hidden, readout, classes: sizes.
        decay: lambda, the fast weights' decay per step.
        fast_lr: eta, the fast learning rate.
        inner_steps: S, iterations of the inner loop per time step.
        form: attention (past states, no matrix) | matrix (explicit A(t) per example).
        recurrent_init: W starts as recurrent_init * identity.
    """

    def __init__(self, num_symbols: int, embed: int, hidden: int, readout: int, classes: int, decay: float = 0.95,
                 fast_lr: float = 0.5, inner_steps: int = 1, form: Literal["attention", "matrix"] = "attention",
                 recurrent_init: float = 0.05):
        super().__init__()
        if form not in ("attention", "matrix"):
            raise ValueError(f"fast weights form must be attention or matrix, got {form!r}")
        self.embed = nn.Embedding(num_symbols, embed)
        self.C = nn.Linear(embed, hidden)
        self.W = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.W.weight.copy_(recurrent_init * torch.eye(hidden))
        self.ln = nn.LayerNorm(hidden)
        self.head = _Head(hidden, readout, classes)
        self.decay, self.fast_lr, self.inner_steps, self.form = decay, fast_lr, inner_steps, form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        e = self.C(self.embed(x))  # (B, T, R): C x(t) + bias
        R = e.shape[-1]
        h = e.new_zeros(B, R)
        past: list[torch.Tensor] = []  # h(1) .. h(t), each (B, R)
        A = e.new_zeros(B, R, R) if self.form == "matrix" else None
        for t in range(T):
            pre = self.W(h) + e[:, t]  # (B, R)
            hs = torch.relu(pre)  # h_0(t+1)
            if not past and self.inner_steps:  # A(0) = 0: the inner loop is ReLU(LN[W h + C x]), still normalized
                hs = torch.relu(self.ln(pre))
            elif past:
                if self.form == "attention":
                    H = torch.stack(past, 1)  # (B, t, R)
                    w = self.decay ** torch.arange(len(past) - 1, -1, -1, dtype=e.dtype, device=e.device)  # (t,)
                for _ in range(self.inner_steps):
                    if self.form == "attention":
                        scores = torch.einsum("btr,br->bt", H, hs) * w  # (B, t): lambda^{t-tau} <h(tau), h_s>
                        Ah = self.fast_lr * torch.einsum("bt,btr->br", scores, H)  # (B, R) = A(t) h_s
                    else:
                        Ah = torch.bmm(A, hs.unsqueeze(2)).squeeze(2)  # (B, R)
                    hs = torch.relu(self.ln(pre + Ah))
            h = hs
            past.append(h)
            if A is not None:
                A = self.decay * A + self.fast_lr * h.unsqueeze(2) * h.unsqueeze(1)  # (B, R, R)
        return self.head(h)


class PlainRNN(nn.Module):
    """(B, T) symbols -> (B, classes): ReLU RNN h(t+1) = f(W h(t) + C x(t)), W = recurrent_init * I at start."""

    def __init__(self, num_symbols: int, embed: int, hidden: int, readout: int, classes: int,
                 recurrent_init: float = 1.0):
        super().__init__()
        self.embed = nn.Embedding(num_symbols, embed)
        self.C = nn.Linear(embed, hidden)
        self.W = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.W.weight.copy_(recurrent_init * torch.eye(hidden))
        self.head = _Head(hidden, readout, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.C(self.embed(x))  # (B, T, R)
        h = e.new_zeros(e.shape[0], e.shape[2])
        for t in range(x.shape[1]):
            h = torch.relu(self.W(h) + e[:, t])
        return self.head(h)


class LSTMClassifier(nn.Module):
    """(B, T) symbols -> (B, classes): one LSTM layer of R cells, last hidden state to the head."""

    def __init__(self, num_symbols: int, embed: int, hidden: int, readout: int, classes: int):
        super().__init__()
        self.embed = nn.Embedding(num_symbols, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = _Head(hidden, readout, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))  # (B, T, R)
        return self.head(out[:, -1])
