"""The per-layer pieces of one Forward-Forward step (Hinton 2022, sections 2-3; the released
`ffnew.m`), shared by the FF rules: the goodness probability, each layer's learning signal
(dC/d(total input)) from its own states alone, and the fused passes the supervised rule's fast
path runs per layer (eager, or compiled under `rule.compile_update` through `call_compiled`).

Shapes: B = minibatch, H = a layer's width, D = its input width; positive rows [0, B) and
negative rows [B, 2B) of a (2B, H) array.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mortalnet.config import ConfigError
from mortalnet.nets.ff import (
    activate,
    activation_slope,
    int8_matmul,
    int8_scales,
    inverse_rms,
    round_activity_rows,
    round_signal_columns,
)
from mortalnet.rules.base import sample_rows


def sample_wrong_labels(logits: torch.Tensor | None, y: torch.Tensor, num_classes: int, negatives: str,
                        generator: torch.Generator) -> torch.Tensor:
    """A wrong label per row for the negative pass: (B,) int64. negatives="hard": drawn from
    softmax(logits) (B, C) with the true label masked out (ffnew.m's `labinothers`: logits - 1000 at
    the true label), so labels the net confuses with the true one come up more often; "random":
    uniform over the other C - 1 labels (logits unused)."""
    if negatives == "random":
        offset = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
        return (y + offset) % num_classes
    probs = torch.softmax(logits - 1000.0 * F.one_hot(y, num_classes), dim=1)
    return sample_rows(probs, generator)


def goodness_sign(goodness: str) -> float:
    """+1 for sum-squares, -1 for neg-sum-squares: the sign that turns sum of squares into goodness."""
    if goodness == "sum-squares":
        return 1.0
    if goodness == "neg-sum-squares":
        return -1.0
    raise ConfigError(f"unknown goodness {goodness!r}; valid: sum-squares, neg-sum-squares")


def ff_probs(states: torch.Tensor, theta: float, temp: float, sign: float = 1.0,
             goodness: torch.Tensor | None = None) -> torch.Tensor:
    """p(positive) = sigmoid(sign * (G - theta) / temp) for states (N, H) -> (N,);
    G = sum of squares (given or computed)."""
    g = states.square().sum(dim=1) if goodness is None else goodness
    logit = (g - theta) / temp
    return torch.sigmoid(logit if sign == 1.0 else sign * logit)


def ff_layer_signal(
    states: torch.Tensor,
    batch: int,
    theta: float,
    temp: float,
    mean_states: torch.Tensor | None = None,
    peer_norm: float = 0.0,
    peer_decay: float = 0.9,
    sign: float = 1.0,
    activation: str = "relu",
    goodness: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ffnew.m's dC/d(total input) for one layer, from its measured states alone.

    Args:
        states: (2B, H) activities; rows [0, B) positive data, [B, 2B) negative data.
        batch: B.
        theta, temp: threshold and temperature of p = sigmoid((G - theta) / temp).
        mean_states: (H,) running mean activity, updated in place (peer normalization).
        peer_norm: strength of the pull of each unit's mean toward the layer's mean (0 = off).
        peer_decay: smoothing of the running means.
        sign: +1 (goodness = sum of squares) or -1 (goodness = minus sum of squares).
        activation: the layer's nonlinearity; its slope f'(z) multiplies the signal (1 for ReLU).
        goodness: (2B,) sum of squared states, if already computed.

    Returns:
        signal (2B, H) = (1 - p) * s on positive rows (+ peer term, not gated by s > 0),
        -p * s on negative rows (the ascent direction, temp/2 times d log-likelihood / d input);
        p_pos (B,), p_neg (B,).
    """
    p = ff_probs(states, theta, temp, sign, goodness)  # (2B,)
    p_pos, p_neg = p[:batch], p[batch:]
    coef = torch.cat([1.0 - p_pos, -p_neg])
    signal = (coef if sign == 1.0 else sign * coef)[:, None] * states  # (2B, H)
    if activation != "relu":
        signal = signal * activation_slope(states, activation)
    if peer_norm and mean_states is not None:
        mean_states.mul_(peer_decay).add_(states[:batch].mean(0), alpha=1.0 - peer_decay)
        signal[:batch] += peer_norm * (mean_states.mean() - mean_states)  # revives dead units
    return signal, p_pos, p_neg


def pair_metrics(p_pos: torch.Tensor, p_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's FF loss, -(mean log p_pos + mean log(1 - p_neg)), and its pair error, the share of
    pairs whose negative row has the larger p(positive), from p(positive) on its positive rows (B,)
    and negative rows (B,); inside the compiled passes they cost no extra pass."""
    eps = 1e-7
    loss = -(torch.log(p_pos + eps).mean() + torch.log(1 - p_neg + eps).mean())
    return loss, (p_neg > p_pos).float().mean()


def first_layer_pass(shared: torch.Tensor, W1: torch.Tensor, y: torch.Tensor, y_neg: torch.Tensor, strength: float,
                     r: torch.Tensor, b1: torch.Tensor, mean_states: torch.Tensor | None, theta: float, temp: float,
                     peer_norm: float, peer_decay: float, sign: float, activation: str):
    """Layer 1's positive and negative rows, from the shared image product shared (B, H1) and the
    label rows of W1 (D, H1), to its learning signal: the step's one body for layer 1, compiled
    under rule.compile_update (FFLearner._run): z = [shared + s W1[y]; shared + s W1[y_neg]] * r + b1 with r (2B, 1) the
    rows' 1 / rms, states f(z), goodness, ff_layer_signal, and the signal * r the weight gradient
    takes. Returns states (2B, H1), their sums of squares (2B,), the positive + negative halves of
    signal * r (B, H1) for the image pixels, each half (B, H1) for the label pixels, signal.sum(0)
    (H1,), and the layer's FF loss and pair error (`pair_metrics`)."""
    batch = len(y)
    z = torch.cat([shared + strength * W1[y], shared + strength * W1[y_neg]]) * r + b1  # (2B, H1)
    states = activate(z, activation)
    sumsq = states.square().sum(1)
    signal, p_pos, p_neg = ff_layer_signal(states, batch, theta, temp, mean_states, peer_norm, peer_decay, sign,
                                           activation, sumsq)
    scaled = signal * r  # the input row is x * r, so dC/dW = x^T (signal * r)
    pos, neg = scaled[:batch], scaled[batch:]
    return states, sumsq, pos + neg, pos, neg, signal.sum(0), *pair_metrics(p_pos, p_neg)


def int8_layer_states(prev: torch.Tensor, prev_sumsq: torch.Tensor, in_scale: torch.Tensor, q: torch.Tensor,
                      bias: torch.Tensor, activation: str):
    """A layer's states from the previous layer's states prev (N, D) and their sums of squares (N,) in
    int8 training, as one function for torch.compile (rule.precision=int8 with compile_update):
    r = inverse_rms(prev_sumsq) (N, 1), prev * in_scale rounded per row (round_activity_rows), the
    exact int32 product with the layer's int8 weights q (D, H), then f(acc * r * row + bias) and the
    goodness in one pass over the product. Returns states (N, H), their sums of squares (N,), r,
    qa (N, D) int8 and the row maxima (N, 1) whose int8_scales is row."""
    r = inverse_rms(prev_sumsq, prev.shape[1])
    qa, amax = round_activity_rows(prev, in_scale)
    z = torch.addcmul(bias, int8_matmul(qa, q).float(), r * int8_scales(amax))  # (N, H)
    states = activate(z, activation)
    return states, states.square().sum(1), r, qa, amax


def lowp_layer_states(prev: torch.Tensor, prev_sumsq: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
                      activation: str):
    """`int8_layer_states` for bf16 products (rule.precision=bfloat16 with compile_update): prev (N, D)
    cast to w's dtype, the product with w (D, H) (fp32 accumulation, a bf16 result), then
    f(product * r + bias) and the goodness in one pass. Returns states (N, H), their sums of squares
    (N,), r (N, 1) and prev as multiplied (N, D) bf16 (the gradient product reuses it)."""
    r = inverse_rms(prev_sumsq, prev.shape[1])
    prev_lp = prev.to(w.dtype)
    states = activate(torch.addcmul(bias, torch.mm(prev_lp, w), r), activation)  # (N, H) float32
    return states, states.square().sum(1), r, prev_lp


def lowp_signal_pass(states: torch.Tensor, goodness: torch.Tensor, mean_states: torch.Tensor | None,
                     row_factor: torch.Tensor, scale: float, dtype: torch.dtype, batch: int, theta: float,
                     temp: float, peer_norm: float, peer_decay: float, sign: float, activation: str):
    """`int8_signal_pass` for bf16 products: ff_layer_signal, then the gradient product's (N, H)
    factor signal * row_factor * scale cast to `dtype`, and signal.sum(0) for the bias (one pass when
    compiled).
    Returns that factor, signal.sum(0) (H,), and the layer's FF loss and pair error (`pair_metrics`)."""
    signal, p_pos, p_neg = ff_layer_signal(states, batch, theta, temp, mean_states, peer_norm, peer_decay, sign,
                                           activation, goodness)
    return (signal * row_factor * scale).to(dtype), signal.sum(0), *pair_metrics(p_pos, p_neg)


def int8_signal_pass(states: torch.Tensor, goodness: torch.Tensor, mean_states: torch.Tensor | None,
                     row_factor: torch.Tensor, batch: int, theta: float, temp: float, peer_norm: float,
                     peer_decay: float, sign: float, activation: str):
    """ff_layer_signal, then the signal's int8 rounding for the gradient product and its column sums
    for the bias (rule.precision=int8); compiled under rule.compile_update, where the (2B, H) signal
    then never goes to memory. Returns q (2B, H) int8 and the column maxima (H,) of
    round_signal_columns(signal, row_factor), signal.sum(0) (H,), and the layer's FF loss and pair
    error (`pair_metrics`)."""
    signal, p_pos, p_neg = ff_layer_signal(states, batch, theta, temp, mean_states, peer_norm, peer_decay, sign,
                                           activation, goodness)
    q, amax = round_signal_columns(signal, row_factor)
    return q, amax, signal.sum(0), *pair_metrics(p_pos, p_neg)


def int8_goodness_pass(shared: torch.Tensor, label_rows: torch.Tensor, r: torch.Tensor, b1: torch.Tensor,
                       strength: float, qs: list[torch.Tensor], scales: list[torch.Tensor], biases: list[torch.Tensor],
                       activation: str, goodness_from: int) -> torch.Tensor:
    """The per-label goodness test of rule.test_precision=int8 from layer 1's shared image product on,
    as one function for torch.compile (rule.compile_update): the eager FFLearner.goodness_scores
    path's arithmetic, with each layer's epilogue (rescaling, bias, f, goodness) and the next layer's
    row rounding fused into one pass over its states (eager, ~ten passes over a (B*k, H) array).

    shared (B, H1): the image part of layer 1's total input; label_rows (1, C, H1) (all labels) or
    (B, k, H1) (a shortlist): the rows of W1 the label pixels select; r (B, 1): 1 / rms of an input
    row with any one-hot label. Layers 2..L as quantize_columns copies, q (D, H) int8 with scale (H,),
    and their biases; states rounded per row (each row's largest |entry| -> 127), the product exact
    in int32. Returns (B, k): the goodness (sum of squares) summed over layers goodness_from..L.
    """
    z = torch.addcmul(b1, shared[:, None, :] + strength * label_rows, r[:, None])  # (B, k, H1)
    states = activate(z, activation).reshape(-1, z.shape[2])  # (B*k, H1), row b*k + j: image b, j-th label
    sumsq = states.square().sum(1)  # (B*k,)
    scores = sumsq if goodness_from == 0 else torch.zeros_like(sumsq)
    for i, (q, scale, bias) in enumerate(zip(qs, scales, biases), start=1):
        r_prev = inverse_rms(sumsq, states.shape[1])  # (B*k, 1): normalizing the rows scales the product
        row = int8_scales(states.abs().amax(1, keepdim=True))  # (B*k, 1)
        qa = torch.round(states / row).to(torch.int8)  # (B*k, D)
        z = torch.addcmul(bias, int8_matmul(qa, q).float() * scale, r_prev * row)  # (B*k, H)
        states = activate(z, activation)
        sumsq = states.square().sum(1)
        if i >= goodness_from:
            scores = scores + sumsq
    return scores.reshape(len(shared), -1)


_COMPILED: dict[str, object] = {}


def compiled(fn):
    """fn compiled with torch.compile (once per process, on first use)."""
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = torch.compile(fn)
    return _COMPILED[fn.__name__]


def call_compiled(fn, *args):
    """compiled(fn)(*args), or a clear error when torch.compile cannot work here."""
    try:
        return compiled(fn)(*args)
    except Exception as exc:  # torch.compile needs a C++ compiler on CPU (Triton on GPU)
        raise RuntimeError(f"rule.compile_update=true but torch.compile failed ({type(exc).__name__}: "
                           f"{str(exc)[:300]}); run with rule.compile_update=false") from exc
