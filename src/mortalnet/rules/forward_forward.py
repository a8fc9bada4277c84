"""Supervised Forward-Forward (Hinton 2022, sections 2-3), following the released `ffnew.m`.

Per layer l with states s = relu(h W + b) (B, H) of normalized input h:
    goodness G = sum_j s_j**2,   p(positive) = sigmoid((G - theta) / temp),   theta = H
The layer ascends log p on positive data and log(1 - p) on negative data. Its update uses only
its own input h and output s ("dC/dtotal-input" of ffnew.m, which is temp/2 times the exact
derivative of the log-probability, the factor being absorbed in the learning rate):
    positive rows: dC = (1 - p) * s + peer_norm * (mean(m) - m)    [m: running mean activity]
    negative rows: dC = -p * s
    dC/dW = h^T dC / B,  dC/db = sum(dC) / B
The normalized states go on to the next layer with no derivative attached: nothing crosses a
layer boundary. Negative data = the same image with a wrong label, sampled from the linear
softmax's prediction on a neutral-label pass with the true label excluded (hard negatives,
section 3.3), or uniformly among wrong labels.

Two test procedures (section 3.3): the label whose input gives the largest goodness summed over
hidden layers `goodness_from`..L, or one neutral-label pass into the linear softmax.

The paper's open variants (section 2) are options: `goodness="neg-sum-squares"` makes positive data
have *low* sum of squares, p = sigmoid((theta - G) / temp) (the paper reports this works slightly
better), and `activation` picks the nonlinearity (`nets.ff.ACTIVATIONS`). The defaults are ffnew.m's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from mortalnet.config import ConfigError
from mortalnet.nets.ff import (
    INT8_MIN_ROWS,
    NORM_EPS,
    Activation,
    DerivedWeights,
    FFNet,
    activate,
    activation_slope,
    embed_label,
    int8_matmul,
    int8_product,
    int8_scales,
    neutral_label,
    normalize_rows,
    one_hot,
    product,
    quantize_activity_rows,
    quantize_columns,
    quantize_weight_rows,
    round_activity_rows,
    round_signal_columns,
    round_weight_rows,
    workspace_buffer,
)
from mortalnet.optim import OptimizerConfig, SmoothedSGD, make_optimizer
from mortalnet.rules import register_rule
from mortalnet.rules.base import Learner


@dataclass(frozen=True)
class FFObjectiveConfig:
    """What every Forward-Forward rule shares: the goodness objective, peer normalization, the label input,
    the optimizer and the softmax readout (defaults: ffnew.m, the FF paper's Matlab code)."""

    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="smoothed-sgd", lr=0.01, momentum=0.9, weight_decay=0.001)
    )
    """Optimizer of the FF weights (ffnew.m: smoothed gradients 0.9, lr 0.01, weight cost 0.001)."""
    readout_lr: float = 0.1
    """Learning rate of the linear softmax readout (ffnew.m epsilonsup)."""
    readout_weight_cost: float = 0.003
    """Weight cost of the softmax readout (ffnew.m supwc)."""
    threshold_per_unit: float = 1.0
    """theta = threshold_per_unit * layer width (ffnew.m: theta = number of units)."""
    temperature: float = 1.0
    """Divides (G - theta) inside the logistic (ffnew.m temp)."""
    peer_norm: float = 0.03
    """Strength of peer normalization (ffnew.m lambdamean); 0 turns it off."""
    peer_decay: float = 0.9
    """Smoothing of each unit's running mean activity used by peer normalization."""
    label_strength: float = 1.0
    """Value of the one-hot label input (ffnew.m labelstrength); in ff-recurrent, the scale of the top layer, the one-hot label normalized to mean square 1."""
    goodness: Literal["sum-squares", "neg-sum-squares"] = "sum-squares"
    """sum-squares: positive data has G > theta (ffnew.m); neg-sum-squares: positive data has G < theta (paper sec. 2)."""
    activation: Activation = "relu"
    """Hidden nonlinearity: relu (paper) | leaky-relu | softplus."""


@dataclass(frozen=True)
class FFConfig(FFObjectiveConfig):
    """Hyper-parameters of supervised Forward-Forward on dense layers (defaults: ffnew.m)."""

    negatives: Literal["hard", "random"] = "hard"
    """hard: wrong label sampled from the neutral-pass softmax (true label excluded); random: uniform wrong label."""
    readout_from: int = 1
    """First hidden layer (0-based) feeding the softmax readout (ffnew.m minlevelsup=3 -> 1)."""
    readout: bool = True
    """Train the linear softmax readout on a neutral-label pass each step (needed by hard negatives, the softmax test and the shortlist); False trains the FF layers alone (goodness test only)."""
    goodness_from: int = 1
    """First hidden layer (0-based) whose goodness counts in the per-label test (ffnew.m minlevelenergy=3 -> 1)."""
    fast: bool = True
    """Use the fused fast path (shared image part of layer 1, pos+neg in one matmul); False = straightforward."""
    goodness_shortlist: int = 0
    """Per-label test on a shortlist: 0 = score all labels by goodness (exact, the paper's test); k > 0 = rank labels by one neutral pass into the softmax and score only the top k by goodness (cheaper; its agreement with the exact test is measured, not assumed)."""
    precision: Literal["float32", "bfloat16", "int8"] = "float32"
    """Matrix products in float32, or in bfloat16 (fast path only): bf16 copies of weights and activities are multiplied (fp32 accumulation inside each product); master weights, smoothed gradients and all other arithmetic stay float32. int8 (fast path, CPU): the training products of layers 2..L (forward and weight gradient) with int8 operands and exact int32 accumulation (weights rounded per input unit, activities per row, gradient signals per output unit), layer 1 and the softmax in bfloat16, the goodness test as test_precision=int8; an approximation whose cost in test error is measured (the speed-30-int8 preset's records), not assumed."""
    test_precision: Literal["same", "int8"] = "same"
    """Products of the per-label goodness test in layers 2..L: same = as `precision`; int8 = int8 weights (one scale per output unit) times int8 activities (one scale per row), exact int32 accumulation (torch._int_mm; ~2x bf16's rate on CPUs with VNNI or AMX). Fast path only; layer 1's shared image product, the softmax test and training keep `precision`. An approximation: its agreement with the exact test on trained nets is measured in benchmarks/goodness_test.py."""
    compile_update: bool = False
    """bfloat16 or int8 fast path with smoothed-sgd only: fold each layer's bf16 (int8: int32) gradient product into the smoothed gradient and update the weight in one torch.compile'd pass over the weights instead of four eager ones (int8: and re-quantize it for the next step); layer 1's pass up to its learning signal and, with int8, each layer's rounding + product + epilogue and its signal + rounding become compiled functions too (the roundings bit for bit the eager ones, the rest to float rounding) (needs a working torch.compile, i.e. a C++ compiler on CPU; compiling takes ~10-20 s at the first step). The same arithmetic as the eager update, to float rounding."""


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


def first_layer_pass(shared: torch.Tensor, W1: torch.Tensor, y: torch.Tensor, y_neg: torch.Tensor, strength: float,
                     r: torch.Tensor, b1: torch.Tensor, mean_states: torch.Tensor | None, theta: float, temp: float,
                     peer_norm: float, peer_decay: float, sign: float, activation: str):
    """Layer 1's positive and negative rows, from the shared image product shared (B, H1) and the
    label rows of W1 (D, H1), to its learning signal: the step's one body for layer 1, compiled
    under rule.compile_update (FFLearner._run): z = [shared + s W1[y]; shared + s W1[y_neg]] * r + b1 with r (2B, 1) the
    rows' 1 / rms, states f(z), goodness, ff_layer_signal, and the signal * r the weight gradient
    takes. Returns states (2B, H1), their sums of squares (2B,), the positive + negative halves of
    signal * r (B, H1) for the image pixels, each half (B, H1) for the label pixels, signal.sum(0)
    (H1,), p_pos (B,) and p_neg (B,)."""
    batch = len(y)
    z = torch.cat([shared + strength * W1[y], shared + strength * W1[y_neg]]) * r + b1  # (2B, H1)
    states = activate(z, activation)
    sumsq = states.square().sum(1)
    signal, p_pos, p_neg = ff_layer_signal(states, batch, theta, temp, mean_states, peer_norm, peer_decay, sign,
                                           activation, sumsq)
    scaled = signal * r  # the input row is x * r, so dC/dW = x^T (signal * r)
    pos, neg = scaled[:batch], scaled[batch:]
    return states, sumsq, pos + neg, pos, neg, signal.sum(0), p_pos, p_neg


def int8_layer_states(prev: torch.Tensor, r: torch.Tensor, in_scale: torch.Tensor, q: torch.Tensor,
                      bias: torch.Tensor, activation: str):
    """A layer's states from the previous layer's states prev (N, D) in int8 training, as one function
    for torch.compile (rule.precision=int8 with compile_update): prev * in_scale rounded per row
    (round_activity_rows), the exact int32 product with the layer's int8 weights q (D, H), then
    f(acc * r * row + bias) and the goodness in one pass over the product (r (N, 1) = 1 / rms of
    prev's rows). Returns states (N, H), their sums of squares (N,), qa (N, D) int8 and the row
    maxima (N, 1) whose int8_scales is row."""
    qa, amax = round_activity_rows(prev, in_scale)
    z = torch.addcmul(bias, int8_matmul(qa, q).float(), r * int8_scales(amax))  # (N, H)
    states = activate(z, activation)
    return states, states.square().sum(1), qa, amax


def lowp_layer_states(prev: torch.Tensor, r: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, activation: str):
    """`int8_layer_states` for bf16 products (rule.precision=bfloat16 with compile_update): prev (N, D)
    cast to w's dtype, the product with w (D, H) (fp32 accumulation, a bf16 result), then
    f(product * r + bias) and the goodness in one pass. Returns states (N, H), their sums of squares
    (N,) and prev as multiplied (N, D) bf16 (the gradient product reuses it)."""
    prev_lp = prev.to(w.dtype)
    states = activate(torch.addcmul(bias, torch.mm(prev_lp, w), r), activation)  # (N, H) float32
    return states, states.square().sum(1), prev_lp


def lowp_signal_pass(states: torch.Tensor, goodness: torch.Tensor, mean_states: torch.Tensor | None,
                     row_factor: torch.Tensor, scale: float, dtype: torch.dtype, batch: int, theta: float,
                     temp: float, peer_norm: float, peer_decay: float, sign: float, activation: str):
    """`int8_signal_pass` for bf16 products: ff_layer_signal, then the gradient product's (N, H)
    factor signal * row_factor * scale cast to `dtype`, and signal.sum(0) for the bias (one pass when
    compiled).
    Returns that factor, signal.sum(0) (H,), p_pos (B,) and p_neg (B,)."""
    signal, p_pos, p_neg = ff_layer_signal(states, batch, theta, temp, mean_states, peer_norm, peer_decay, sign,
                                           activation, goodness)
    return (signal * row_factor * scale).to(dtype), signal.sum(0), p_pos, p_neg


def int8_signal_pass(states: torch.Tensor, goodness: torch.Tensor, mean_states: torch.Tensor | None,
                     row_factor: torch.Tensor, batch: int, theta: float, temp: float, peer_norm: float,
                     peer_decay: float, sign: float, activation: str):
    """ff_layer_signal, then the signal's int8 rounding for the gradient product and its column sums
    for the bias (rule.precision=int8); compiled under rule.compile_update, where the (2B, H) signal
    then never goes to memory. Returns q (2B, H) int8 and the column maxima (H,) of
    round_signal_columns(signal, row_factor), signal.sum(0) (H,), p_pos (B,) and p_neg (B,)."""
    signal, p_pos, p_neg = ff_layer_signal(states, batch, theta, temp, mean_states, peer_norm, peer_decay, sign,
                                           activation, goodness)
    q, amax = round_signal_columns(signal, row_factor)
    return q, amax, signal.sum(0), p_pos, p_neg


def smoothed_update(prod: torch.Tensor, smoothed: torch.Tensor, weight: torch.Tensor, beta: torch.Tensor,
                    lr: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """ffnew.m's update of one weight matrix from its (already scaled) bf16 gradient product prod (D, H):
        smoothed = beta * smoothed + prod;   weight = decay * weight - lr * smoothed
    with decay = 1 - lr * weight_cost; returns the new weight in prod's dtype (the next step's
    matmul copy). Written for torch.compile, which turns it into one pass over smoothed and weight
    (eager PyTorch needs five, the bf16 copy included); the scalars are 0-d tensors so that a
    changing learning rate does not trigger a recompilation."""
    smoothed.mul_(beta).add_(prod.float())
    weight.mul_(decay).sub_(smoothed * lr)
    return weight.to(prod.dtype)


def smoothed_update_int8(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, smoothed: torch.Tensor,
                         weight: torch.Tensor, beta: torch.Tensor, lr: torch.Tensor, decay: torch.Tensor):
    """`smoothed_update` for rule.precision=int8: the gradient product is acc (D, H) int32 times
    row_scale (D, 1) and col_scale (H,) (the scale of the step folded in);
        smoothed = beta * smoothed + acc * row_scale * col_scale;   weight = decay * weight - lr * smoothed
    and returns the new weight's rounding for the next step's products, `round_weight_rows(weight)`
    = (q (D, H) int8, row maximum (D, 1)); `int8_scales` of the latter is quantize_weight_rows'
    in_scale. Compiled, it is one pass over the rows: each row is updated, its maximum taken and
    the row rounded while it is in cache (~84 MB of memory traffic for a 2000x2000 layer)."""
    smoothed.mul_(beta).add_(acc.float() * row_scale * col_scale)
    weight.mul_(decay).sub_(smoothed * lr)
    return round_weight_rows(weight)


_COMPILED: dict[str, object] = {}


def compiled(fn):
    """fn compiled with torch.compile (once per process, on first use)."""
    if fn.__name__ not in _COMPILED:
        _COMPILED[fn.__name__] = torch.compile(fn)
    return _COMPILED[fn.__name__]


def compiled_smoothed_update(int8: bool = False):
    """`smoothed_update` (int8: `smoothed_update_int8`) compiled with torch.compile."""
    return compiled(smoothed_update_int8 if int8 else smoothed_update)


def call_compiled(fn, *args):
    """compiled(fn)(*args), or a clear error when torch.compile cannot work here."""
    try:
        return compiled(fn)(*args)
    except Exception as exc:  # torch.compile needs a C++ compiler on CPU (Triton on GPU)
        raise RuntimeError(f"rule.compile_update=true but torch.compile failed ({type(exc).__name__}: "
                           f"{str(exc)[:300]}); run with rule.compile_update=false") from exc


class _GradientSink:
    """Receives a step's descent gradients piece by piece: products a @ b, rows, vectors.

    With `SmoothedSGD` (ffnew.m) it folds them straight into the optimizer's smoothed gradient
    (g = a g + (1 - a) grad, one in-place addmm) and updates each parameter as soon as its layer
    is done; the state it keeps is the optimizer's own, so checkpoints are the same either way.
    With any other optimizer it fills `.grad` and `done` calls `optimizer.step()` per layer.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, low_precision: torch.dtype | None = None,
                 compile_update: bool = False, weight_copies: DerivedWeights | None = None,
                 int8_copies: DerivedWeights | None = None, workspace: dict | None = None) -> None:
        self.optimizer = optimizer
        self.low_precision = low_precision
        self.fused = isinstance(optimizer, SmoothedSGD)
        self.groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.started: set[int] = set()
        # compile_update: a parameter's first bf16 (or int8) product waits here, (beta, product), until
        # `done` applies it and the weight update in one compiled pass (FFConfig.compile_update); an
        # int8 product is the tuple (acc (D, H) int32, row_scale (D, 1), col_scale (H,))
        self.deferred = compile_update and self.fused and low_precision is not None
        self.pending: dict[int, tuple[torch.Tensor, float, torch.Tensor | tuple]] = {}  # id(p) -> (p, beta, prod)
        # rows added to a parameter whose bf16 product is pending (layer 1's label pixels): applied
        # after its compiled pass (`done`), so that the layer keeps the one-pass update
        self.late_rows: dict[int, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        # the compiled update also writes the new weight's bf16 copy, or (precision=int8) its
        # quantize_weight_rows copy: kept in the learner's caches for the next step's products
        self.weight_copies = weight_copies
        self.int8_copies = int8_copies
        # int8 and (lowp_product) bf16 gradient products (D, H) are written into one reused buffer per
        # shape (a fresh 16 MB tensor per layer and step costs page faults); see _shared_out
        self.workspace = workspace

    def _buffer(self, p: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(buffer, beta) to accumulate into: the smoothed gradient (fused) or p.grad."""
        first = id(p) not in self.started
        self.started.add(id(p))
        if self.fused:
            state = self.optimizer.state[p]
            if "smoothed_grad" not in state:
                state["smoothed_grad"] = torch.zeros_like(p)
            return state["smoothed_grad"], (self.groups[id(p)]["smoothing"] if first else 1.0)
        if first:
            p.grad = torch.zeros_like(p)
        return p.grad, 1.0

    def _scale(self, p: torch.Tensor, scale: float) -> float:
        return scale * (1.0 - self.groups[id(p)]["smoothing"]) if self.fused else scale

    def product(self, p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        """grad(p) += scale * (a @ b)."""
        buf, beta = self._buffer(p)
        if self.low_precision is None:
            buf.addmm_(a, b, beta=beta, alpha=self._scale(p, scale))
            return
        # bf16 operands, fp32 accumulation inside torch.mm, the (D, H) result rounded to bf16. The
        # scale goes into the small (batch, H) factor b, and the product is widened to fp32 before
        # the add: on CPU an fp32 += bf16 add is ~2.5x slower than widening first, and mul_ + add_
        # would read the (D, H) buffer twice.
        lp = self.low_precision
        prod = torch.mm(a.to(lp), (b * self._scale(p, scale)).to(lp))  # (D, H) bf16
        self._accumulate(p, buf, beta, prod)

    def factor(self, p: torch.Tensor, scale: float) -> float:
        """The factor `product` puts onto b for p (scale, times 1 - smoothing with ffnew.m's optimizer)."""
        return self._scale(p, scale)

    def lowp_product(self, p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """`product` with both factors already in the low precision and b already scaled by
        `factor(p, scale)`: grad(p) += a @ b (lowp_signal_pass makes b)."""
        buf, beta = self._buffer(p)
        out = self._shared_out(p, "lowp gradient", (a.shape[0], b.shape[1]), a.dtype, a.device)
        self._accumulate(p, buf, beta, torch.mm(a, b) if out is None else torch.mm(a, b, out=out))

    def _shared_out(self, p: torch.Tensor, name: str, shape: tuple[int, int], dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor | None:
        """The workspace's reused (D, H) buffer for p's gradient product (None without a workspace):
        a fresh 16 MB tensor per layer and step costs page faults. Another parameter's product still
        waiting in that buffer for its compiled update is applied first."""
        if self.workspace is None:
            return None
        out = workspace_buffer(self.workspace, name, shape, dtype, device)
        for key, (param, _, prod) in list(self.pending.items()):
            if key != id(p) and (prod[0] if isinstance(prod, tuple) else prod) is out:
                self._flush(param)
        return out

    def int8_product(self, p: torch.Tensor, qa: torch.Tensor, qg: torch.Tensor, col: torch.Tensor,
                     in_scale: torch.Tensor, scale: float) -> None:
        """grad(p) += scale * a^T g for activities a (N, D) known only as their int8 rows qa (N, D),
        a * in_scale ~= row * qa, and g (N, H) = signal * (f * row) known as its per-column rounding
        qg (N, H) int8 times col (H,) (int8_signal_pass): a^T g = diag(1 / in_scale) qa^T (qg col),
        the (D, N) x (N, H) product accumulated exactly in int32 (rule.precision=int8)."""
        buf, beta = self._buffer(p)
        out = self._shared_out(p, "gradient", (qa.shape[1], qg.shape[1]), torch.int32, qa.device)
        acc = int8_matmul(qa.T, qg, out=out)  # (D, H) int32
        self._accumulate(p, buf, beta, (acc, in_scale.reciprocal()[:, None], col * self._scale(p, scale)))

    def _accumulate(self, p: torch.Tensor, buf: torch.Tensor, beta: float, prod: torch.Tensor | tuple) -> None:
        """buf = beta * buf + prod for a bf16 product (D, H), or an int8 one (acc, row_scale, col_scale);
        deferred to `done` when the update is compiled and this is p's first contribution."""
        if self.deferred and beta != 1.0:
            self.pending[id(p)] = (p, beta, prod)
            return
        self._flush(p)
        wide = _widen(prod)
        if beta == 1.0:
            buf.add_(wide)
        else:
            torch.add(wide, buf, alpha=beta, out=buf)  # buf = beta * buf + prod, one pass

    def rows(self, p: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, scale: float) -> None:
        """grad(p)[index[k]] += scale * rows[k]."""
        if id(p) in self.pending and not isinstance(self.pending[id(p)][2], tuple):  # after the compiled pass
            self.late_rows.setdefault(id(p), []).append((index, rows, self._scale(p, scale)))
            return
        self._flush(p)
        buf, beta = self._buffer(p)
        if beta != 1.0:
            buf.mul_(beta)
        buf.index_add_(0, index, rows, alpha=self._scale(p, scale))

    def vector(self, p: torch.Tensor, v: torch.Tensor, scale: float) -> None:
        """grad(p) += scale * v."""
        self._flush(p)
        buf, beta = self._buffer(p)
        if beta != 1.0:
            buf.mul_(beta)
        buf.add_(v, alpha=self._scale(p, scale))

    def _flush(self, p: torch.Tensor) -> None:
        """Apply p's deferred product to its smoothed gradient now (another contribution follows)."""
        if id(p) in self.pending:
            _, beta, prod = self.pending.pop(id(p))
            buf = self.optimizer.state[p]["smoothed_grad"]
            torch.add(_widen(prod), buf, alpha=beta, out=buf)
            for index, rows, alpha in self.late_rows.pop(id(p), []):
                buf.index_add_(0, index, rows, alpha=alpha)

    def done(self, *params: torch.Tensor) -> None:
        """The gradients of `params` are complete: update them now."""
        if not self.fused:
            return  # the optimizer steps once, after all layers (FFLearner.train_batch)
        for p in params:
            group = self.groups[id(p)]
            lr, wc = group["lr"], group["weight_cost"]
            if id(p) in self.pending:  # the product, the smoothing and the update in one pass
                _, beta, prod = self.pending.pop(id(p))
                smoothed = self.optimizer.state[p]["smoothed_grad"]
                if isinstance(prod, tuple):  # int8: the new weight's int8 copy comes back
                    q, amax = _run_compiled(True, (*prod, smoothed, p), beta, lr, 1.0 - lr * wc)
                    copy = (q, int8_scales(amax)[:, 0])
                    if self.int8_copies is not None:
                        self.int8_copies.put(p, copy)
                else:
                    copy = _run_compiled(False, (prod, smoothed, p), beta, lr, 1.0 - lr * wc)
                    late = self.late_rows.pop(id(p), [])
                    for index, rows, alpha in late:  # smoothed += a rows, so w -= lr a rows (rows of W only)
                        smoothed.index_add_(0, index, rows, alpha=alpha)
                        p.index_add_(0, index, rows, alpha=-lr * alpha)
                    if late:
                        touched = torch.cat([index for index, _, _ in late]).unique()
                        copy[touched] = p[touched].to(copy.dtype)
                    if self.weight_copies is not None:
                        self.weight_copies.put(p, copy)
                continue
            if wc:
                p.mul_(1.0 - lr * wc)  # ffnew.m: w += lr (g - wc w), the weight cost unsmoothed
            p.add_(self.optimizer.state[p]["smoothed_grad"], alpha=-lr)


def _widen(prod: torch.Tensor | tuple) -> torch.Tensor:
    """A gradient product as float32 (D, H): a bf16 product widened, or an int8 one (acc, row_scale,
    col_scale) rescaled."""
    if isinstance(prod, tuple):
        acc, row_scale, col_scale = prod
        return acc.float().mul_(row_scale).mul_(col_scale)
    return prod.float()


def _run_compiled(int8: bool, tensors: tuple, beta: float, lr: float, decay: float):
    """compiled_smoothed_update(int8)(*tensors, beta, lr, decay), with the scalars as 0-d tensors."""
    smoothed = tensors[-2]
    scalars = [torch.tensor(v, dtype=smoothed.dtype, device=smoothed.device) for v in (beta, lr, decay)]
    return call_compiled(smoothed_update_int8 if int8 else smoothed_update, *tensors, *scalars)


@register_rule("forward-forward")
class FFLearner(Learner):
    """A supervised FF network and its training rule.

    Args:
        config: FF hyper-parameters.
        hidden: widths of the hidden layers, e.g. (1000, 1000, 1000).
        input_dim: pixels per image including the 10 label pixels (784).
        num_classes: number of labels (10); the first `num_classes` pixels carry the label.
        seed: seeds weight initialization and negative sampling.
        device: torch device.
    """

    Config = FFConfig
    primary_metric = "error_goodness"

    def __init__(
        self,
        config: FFConfig = FFConfig(),
        hidden: tuple[int, ...] = (1000, 1000, 1000),
        input_dim: int = 784,
        num_classes: int = 10,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if config.precision == "int8" and torch.device(device).type != "cpu":
            raise ConfigError("rule.precision=int8 (int8 training products) is implemented and tested on CPU only; "
                              "on a GPU use rule.precision=bfloat16 (rule.test_precision=int8 works there)")
        super().__init__(seed, device)
        if not config.readout and (config.negatives == "hard" or config.goodness_shortlist):
            raise ConfigError("hard negatives and the goodness shortlist need the softmax readout: "
                              "set rule.readout=true, or rule.negatives=random and rule.goodness_shortlist=0")
        if config.goodness_from >= len(hidden):
            raise ConfigError(f"goodness_from={config.goodness_from} but the net has {len(hidden)} hidden layers")
        if config.compile_update and not (config.precision in ("bfloat16", "int8") and config.fast
                                          and config.optimizer.name == "smoothed-sgd"):
            raise ConfigError("rule.compile_update fuses the bf16 (or int8) fast path's smoothed-sgd update: it "
                              "needs rule.precision=bfloat16 or int8, rule.fast=true and "
                              "rule.optimizer.name=smoothed-sgd")
        if config.precision == "int8" and not config.fast:
            raise ConfigError("rule.precision=int8 is a fast-path option (rule.fast=false is the plain float32 "
                              "reference): set rule.fast=true or rule.precision=float32")
        if config.test_precision == "int8" and not config.fast:
            raise ConfigError("rule.test_precision=int8 is a fast-path option (rule.fast=false is the plain "
                              "float32 reference): set rule.fast=true or rule.test_precision=same")
        if config.test_precision == "int8" and torch.device(device).type == "cuda" and any(h % 8 for h in hidden):
            raise ConfigError(f"rule.test_precision=int8 on CUDA needs hidden widths that are multiples of 8 "
                              f"(torch._int_mm); got {tuple(hidden)}")
        self.cfg = config
        self.num_classes = num_classes
        # copies of the weights as the products use them, each kept while its weight is unchanged
        lp = self._low_precision()
        self._weight_copies = DerivedWeights(lambda w: w.to(lp))  # bf16 (precision bfloat16 / int8's layer 1)
        self._int8_copies = DerivedWeights(quantize_columns)  # the int8 goodness test's (layers 2..L)
        self._int8_train_copies = DerivedWeights(quantize_weight_rows)  # precision=int8 training's
        self._int8_workspace: dict = {}  # int8_product's reused buffers (filled by the first int8 test)
        self.net = FFNet(input_dim, tuple(hidden), num_classes, config.readout_from, self.generator, self.device_,
                         activation=config.activation)
        self._sign = goodness_sign(config.goodness)
        layers = self.net.layers
        self.optimizers = [
            make_optimizer(config.optimizer, [l.weight for l in layers], [l.bias for l in layers]),
            make_optimizer(
                config.optimizer, list(self.net.readout), lr=config.readout_lr, weight_decay=config.readout_weight_cost
            ),
        ]

    @classmethod
    def quick_config(cls) -> FFConfig:
        """ffnew.m's recipe with a 3x larger learning rate: small nets learn in a few epochs."""
        return FFConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9, weight_decay=0.001))

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """One FF step on images x (B, 784) with labels y (B,)."""
        if self.cfg.fast:
            sink = self.gradient_sink()
            readout_grads, metrics = self._step_fast(x, y, sink)
            if not sink.fused:
                self.optimizers[0].step()
        else:
            grads_w, grads_b, readout_grads, metrics = self._step_reference(x, y)
            for layer, gw, gb in zip(self.net.layers, grads_w, grads_b):
                layer.weight.grad, layer.bias.grad = gw, gb
            self.optimizers[0].step()
        for w, g in zip(self.net.readout, readout_grads):
            w.grad = g
        self.optimizers[1].step()
        return metrics

    def _theta(self, width: int) -> float:
        return self.cfg.threshold_per_unit * width

    def _sample_negative_labels(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A wrong label per row: from softmax(logits) with the true label masked, or uniform."""
        if self.cfg.negatives == "random":
            offset = torch.randint(1, self.num_classes, y.shape, generator=self.generator, device=y.device)
            return (y + offset) % self.num_classes
        masked = logits - 1000.0 * F.one_hot(y, self.num_classes)  # ffnew.m: labinothers
        probs = torch.softmax(masked, dim=1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)

    def _readout_step(self, normed: list[torch.Tensor], y: torch.Tensor):
        """Softmax on the neutral pass: descent gradients for the readout, and its logits."""
        logits = self.net.readout_logits(normed)  # (B, C)
        probs = torch.softmax(logits, dim=1)
        delta = (probs - F.one_hot(y, self.num_classes)) / len(y)  # d(mean CE)/d logits
        # (H_l, C) each, made contiguous from delta^T h (C, H_l): on CPU ~2x faster than h^T delta for C = 10
        grads = [(delta.T @ h).T.contiguous() for h in normed[self.cfg.readout_from :]]
        metrics = {
            "readout_loss": F.cross_entropy(logits, y),
            "readout_error": (logits.argmax(1) != y).float().mean(),
        }
        return logits, grads, metrics

    def _layer_signal(self, i: int, states: torch.Tensor, batch: int, metrics: dict,
                      goodness: torch.Tensor | None = None) -> torch.Tensor:
        """dC/d(total input) for fused [positive; negative] states (2B, H) of layer i."""
        theta, temp, peer_norm, peer_decay, sign, activation = self._signal_hparams(states.shape[1])
        signal, p_pos, p_neg = ff_layer_signal(states, batch, theta, temp, self.net.mean_states(i), peer_norm,
                                               peer_decay, sign, activation, goodness)
        self._pair_metrics(i, p_pos, p_neg, metrics)
        return signal

    def _signal_hparams(self, width: int) -> tuple[float, float, float, float, float, str]:
        """(theta, temp, peer_norm, peer_decay, sign, activation) of a layer of `width` units: the last
        arguments of ff_layer_signal's compiled callers (first_layer_pass, int8_signal_pass, lowp_signal_pass)."""
        cfg = self.cfg
        return self._theta(width), cfg.temperature, cfg.peer_norm, cfg.peer_decay, self._sign, cfg.activation

    def _run(self, fn, *args):
        """fn(*args): compiled with rule.compile_update (call_compiled), else called as it is."""
        return call_compiled(fn, *args) if self.cfg.compile_update else fn(*args)

    @staticmethod
    def _pair_metrics(i: int, p_pos: torch.Tensor, p_neg: torch.Tensor, metrics: dict) -> None:
        """Layer i's FF loss and pair error from its p(positive) on positive and negative rows."""
        eps = 1e-7
        metrics[f"ff_loss/layer{i + 1}"] = -(torch.log(p_pos + eps).mean() + torch.log(1 - p_neg + eps).mean())
        metrics[f"pair_error/layer{i + 1}"] = (p_neg > p_pos).float().mean()

    def gradient_sink(self) -> _GradientSink:
        """Where one fast step's gradients go (its layers are updated as they complete)."""
        return _GradientSink(self.optimizers[0], self._low_precision(), self.cfg.compile_update, self._weight_copies,
                             self._int8_train_copies, self._int8_workspace)

    def _low_precision(self) -> torch.dtype | None:
        """The dtype of the products that are not int8: bf16 for precision bfloat16 and int8 (layer 1,
        the softmax), else None (float32)."""
        return torch.bfloat16 if self.cfg.precision in ("bfloat16", "int8") else None

    def _matmul_weights(self) -> list[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """The weights as the training products use them: the fp32 masters, or bf16 copies; with
        precision=int8, layer 1's bf16 copy and the quantize_weight_rows copies of layers 2..L."""
        layers = self.net.layers
        if self.cfg.precision == "int8":
            return [self._matmul_weight(layers[0].weight)] + [self._int8_train_weight(l.weight) for l in layers[1:]]
        return [self._matmul_weight(l.weight) for l in layers]

    def _matmul_weight(self, w: torch.Tensor) -> torch.Tensor:
        """One weight as the float products use it: the fp32 master, or its bf16 copy."""
        lp = self._low_precision()
        return w if lp is None else self._weight_copies.get(w)

    def _int8_train_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """quantize_weight_rows(w) (precision=int8): the compiled update's copy, or one made now."""
        return self._int8_train_copies.get(w)

    def _int8_weights(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, quantize_columns(weight) for the int8 goodness test (None for layer 1, whose
        shared image product keeps `precision`); each copy is reused while its weight is unchanged
        (version counter and storage), so a 10k-image test quantizes each weight once, not per chunk."""
        return [None] + [self._int8_copies.get(layer.weight) for layer in self.net.layers[1:]]

    @staticmethod
    def _total_input(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """h (N, D) @ w (D, H) + bias in w's precision; the result in float32 (N, H)."""
        if w.dtype == torch.float32:
            return torch.addmm(bias, h, w)
        return product(h, w).add_(bias)

    @staticmethod
    def _next_states(prev: torch.Tensor, prev_sumsq: torch.Tensor, w: torch.Tensor | tuple | None,
                     bias: torch.Tensor, activation: str = "relu", int8: tuple[torch.Tensor, torch.Tensor] | None = None,
                     workspace: dict | None = None, compiled_passes: bool = False, with_sumsq: bool = True):
        """f(normalize_rows(prev) @ w + bias) without materializing the normalized rows.

        normalize_rows divides row n by rms_n, so its product with w is (prev @ w) * r_n with
        r_n = 1 / rms_n, computed from the sum of squares the caller already has (the goodness).
        With int8 = quantize_columns(w), the product is int8_product's (test_precision=int8), its
        buffers in `workspace`: the states returned then live there until the next such call.
        With w = quantize_weight_rows(weight) (precision=int8 training), prev * in_scale is rounded
        to int8 rows (qa, row) and multiplied exactly in int32; compiled_passes (rule.compile_update)
        makes the rounding, the product and its epilogue one compiled function (int8_layer_states: the
        same roundings, the epilogue to float rounding); for bf16 products, lowp_layer_states.
        Returns the states (N, H) float32, their sums of squares (N,) (None without with_sumsq), r (N, 1),
        and prev as multiplied: fp32 or bf16, the tuple (qa (N, D) int8, row (N, 1)) for int8 training
        (the gradient product reuses it), None for int8.
        """
        r = 1.0 / ((prev_sumsq / prev.shape[1]).sqrt() + NORM_EPS)  # (N,)
        if isinstance(w, tuple) and compiled_passes and len(prev) > INT8_MIN_ROWS:
            states, sumsq, qa, amax = call_compiled(int8_layer_states, prev, r[:, None], w[1], w[0], bias, activation)
            return states, sumsq, r[:, None], (qa, int8_scales(amax))
        if compiled_passes and int8 is None and isinstance(w, torch.Tensor) and w.dtype != torch.float32:
            states, sumsq, prev_m = call_compiled(lowp_layer_states, prev, r[:, None], w, bias, activation)
            return states, sumsq, r[:, None], prev_m
        if isinstance(w, tuple):  # int8 training: (normalize_rows(prev) @ w) = r * row * (qa @ q)
            q, in_scale = w
            if compiled_passes:
                qa, amax = call_compiled(round_activity_rows, prev, in_scale)
                prev_m = (qa, int8_scales(amax))
            else:
                prev_m = quantize_activity_rows(prev, in_scale, workspace, name="train")  # (qa, row)
            acc = int8_matmul(prev_m[0], q, out=workspace_buffer(workspace, "train", (len(prev), q.shape[1]),
                                                                  torch.int32, prev.device))  # (N, H) int32
            z = torch.addcmul(bias, acc, r[:, None] * prev_m[1])  # (N, H) float32
        elif int8 is None:
            prev_m = prev.to(w.dtype)
            z = torch.addcmul(bias, torch.mm(prev_m, w), r[:, None])  # (N, H)
        else:
            prev_m, z = None, int8_product(prev, *int8, row_factor=r[:, None], bias=bias, workspace=workspace)
        states = z.relu_() if activation == "relu" else activate(z, activation)
        return states, states.square().sum(1) if with_sumsq else None, r[:, None], prev_m

    def _step_fast(self, images: torch.Tensor, y: torch.Tensor, sink: _GradientSink):
        """Fused step. Layer 1's image part is computed once for the neutral, positive and
        negative inputs (they differ only in the 10 label pixels); positive and negative rows
        share one matmul per layer; normalized activities are never materialized (each row's
        1/rms scales the product instead); each layer's gradient goes straight into `sink`,
        which with ffnew.m's optimizer folds it into the smoothed gradient and updates the layer
        at once (allowed: layer l's update needs nothing from layers above, and the layers above
        use layer l's pre-update output, already computed)."""
        cfg, net = self.cfg, self.net
        B, D = images.shape
        C, s = self.num_classes, cfg.label_strength
        first = net.layers[0]
        W1, b1 = first.weight, first.bias  # (D, H1), (H1,)
        Wm = self._matmul_weights()  # weights as multiplied (fp32 or bf16 copies; int8 ones for precision=int8)
        img = images.clone()
        img[:, :C] = 0.0  # label pixels are written separately
        shared = self._total_input(img, Wm[0], torch.zeros_like(b1))  # (B, H1): image part of layer 1
        sq_img = img.square().sum(1)  # (B,)

        def inv_rms(label_sq: float) -> torch.Tensor:  # 1 / rms of the full input row
            return 1.0 / (((sq_img + label_sq) / D).sqrt() + NORM_EPS)

        metrics: dict[str, torch.Tensor] = {}
        readout_grads: list[torch.Tensor] = []
        if cfg.readout:  # --- neutral pass -> readout update and hard negative labels -------------
            r_neu = inv_rms(C * (s / C) ** 2)[:, None]  # (B, 1)
            states = activate((shared + (s / C) * W1[:C].sum(0)) * r_neu + b1, cfg.activation)  # (B, H1)
            sumsq = states.square().sum(1)
            normed: list[torch.Tensor | None] = []  # kept only for the layers the readout reads
            keep = cfg.readout_from
            for i, layer in enumerate(net.layers[1:], start=1):
                nxt, nxt_sumsq, r_prev, _ = self._next_states(states, sumsq, Wm[i], layer.bias, self.cfg.activation,
                                                              workspace=self._int8_workspace,
                                                              compiled_passes=self.cfg.compile_update)
                normed.append(states * r_prev if i - 1 >= keep else None)
                states, sumsq = nxt, nxt_sumsq
            normed.append(normalize_rows(states))
            logits, readout_grads, m = self._readout_step(normed, y)
            metrics.update(m)
        else:
            logits = None
        y_neg = self._sample_negative_labels(logits, y)

        # --- positive and negative passes, fused: rows [0, B) positive, [B, 2B) negative -------
        states, sumsq = self._first_layer_step(img, shared, sq_img, y, y_neg, sink, metrics)
        for i in range(1, len(net.layers)):
            states, sumsq = self._layer_step(i, states, sumsq, Wm[i], sink, metrics)
        return readout_grads, metrics

    def _first_layer_step(self, img, shared, sq_img, y, y_neg, sink: _GradientSink, metrics: dict):
        """Layer 1 on positive (label y) and negative (label y_neg) rows; updates it through `sink`.

        img (B, D) has zeros in the label pixels and shared = img @ W1 (B, H1). Returns the
        states (2B, H1) and their sums of squares (2B,)."""
        s, B, D = self.cfg.label_strength, len(y), img.shape[1]
        W1, b1 = self.net.layers[0].weight, self.net.layers[0].bias
        r = (1.0 / (((sq_img + s * s) / D).sqrt() + NORM_EPS))[:, None].repeat(2, 1)  # (2B, 1): any one-hot label
        states, sumsq, both, pos, neg, bias_grad, p_pos, p_neg = self._run(
            first_layer_pass, shared, W1, y, y_neg, s, r, b1, self.net.mean_states(0), *self._signal_hparams(W1.shape[1]))
        self._pair_metrics(0, p_pos, p_neg, metrics)
        # image rows are the same for positive and negative data: one (D, B) x (B, H1) product
        sink.product(W1, img.T, both, -1.0 / B)
        sink.rows(W1, y, pos, -s / B)  # label pixels: one row of W1 per label
        sink.rows(W1, y_neg, neg, -s / B)
        sink.vector(b1, bias_grad, -1.0 / B)
        sink.done(W1, b1)
        return states, sumsq

    def _layer_step(self, i: int, prev: torch.Tensor, prev_sumsq: torch.Tensor, w: torch.Tensor,
                    sink: _GradientSink, metrics: dict):
        """Layer i (>= 1) on the previous layer's states prev (2B, D); updates it through `sink`.

        Needs nothing from other layers but prev: this is what lets each layer live on its own
        process (parallel/ff_pipeline.py). Returns its states (2B, H) and sums of squares (2B,)."""
        layer = self.net.layers[i]
        B = len(prev) // 2
        states, sumsq, r_prev, prev_m = self._next_states(prev, prev_sumsq, w, layer.bias, self.cfg.activation,
                                                          workspace=self._int8_workspace,
                                                          compiled_passes=self.cfg.compile_update)  # (2B, H)
        mean, hparams = self.net.mean_states(i), self._signal_hparams(states.shape[1])
        # dC/dW = normalize_rows(prev)^T signal = prev^T (signal * r_prev)
        if isinstance(prev_m, tuple):  # int8: prev ~= row * qa / in_scale (see _GradientSink.int8_product)
            qa, row = prev_m
            qg, amax, bias_grad, p_pos, p_neg = self._run(int8_signal_pass, states, sumsq, mean, r_prev * row, B,
                                                          *hparams)
            sink.int8_product(layer.weight, qa, qg, int8_scales(amax), w[1], -1.0 / B)
        elif prev_m.dtype != torch.float32:  # bf16: the product's factor made (and cast) with the signal
            b, bias_grad, p_pos, p_neg = self._run(lowp_signal_pass, states, sumsq, mean, r_prev,
                                                   sink.factor(layer.weight, -1.0 / B), prev_m.dtype, B, *hparams)
            sink.lowp_product(layer.weight, prev_m.T, b)
        else:
            theta, temp, peer_norm, peer_decay, sign, activation = hparams
            signal, p_pos, p_neg = ff_layer_signal(states, B, theta, temp, mean, peer_norm, peer_decay, sign,
                                                   activation, sumsq)
            sink.product(layer.weight, prev_m.T, signal * r_prev, -1.0 / B)  # (D, H)
            bias_grad = signal.sum(0)
        self._pair_metrics(i, p_pos, p_neg, metrics)
        sink.vector(layer.bias, bias_grad, -1.0 / B)
        sink.done(layer.weight, layer.bias)
        return states, sumsq

    def _step_reference(self, images: torch.Tensor, y: torch.Tensor):
        """The same step written plainly: three full passes, as ffnew.m does (for tests/benchmarks)."""
        cfg, net = self.cfg, self.net
        B = len(y)
        s = cfg.label_strength
        metrics: dict[str, torch.Tensor] = {}
        logits, readout_grads = None, []
        if cfg.readout:
            x_neu = embed_label(images, neutral_label(B, s, self.num_classes, images.device))
            normed = [normalize_rows(st) for st in net.forward_states(x_neu)]
            logits, readout_grads, m = self._readout_step(normed, y)
            metrics.update(m)
        y_neg = self._sample_negative_labels(logits, y)
        x_pos = embed_label(images, one_hot(y, s, self.num_classes))
        x_neg = embed_label(images, one_hot(y_neg, s, self.num_classes))
        grads_w, grads_b = self.local_gradients(x_pos, x_neg, metrics)
        return grads_w, grads_b, readout_grads, metrics

    def local_gradients(self, x_pos: torch.Tensor, x_neg: torch.Tensor, metrics: dict | None = None):
        """Every layer's descent gradient from its own FF objective, for positive input rows
        x_pos (B, D) and negative rows x_neg (B, D): ([dW_l], [db_l]).

        Each layer sees the normalized states of the layer below as a constant: the gradient of
        layer l depends only on layer l's input and output.
        """
        metrics = {} if metrics is None else metrics
        B = len(x_pos)
        h = normalize_rows(torch.cat([x_pos, x_neg]))  # (2B, D)
        grads_w, grads_b = [], []
        for i, layer in enumerate(self.net.layers):
            states = layer(h)  # (2B, H)
            signal = self._layer_signal(i, states, B, metrics)
            grads_w.append(-(h.T @ signal) / B)
            grads_b.append(-signal.sum(0) / B)
            h = normalize_rows(states)
        return grads_w, grads_b

    # ------------------------------------------------------------------------------------------
    # Test procedures
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 784) -> (B, C): goodness summed over layers goodness_from..L for each label.

        Only the 10 label pixels change between the C inputs of an image, and a one-hot label
        adds the same amount to the row's norm whatever the label, so layer 1's total input is
        shared + W1[label] * s / rms: the image part is computed once, not C times. With
        rule.test_precision=int8 the products of layers 2..L are int8 ones (nets.ff.int8_product):
        all but layer 1's shared image product, ~1% of the test's arithmetic in 784-4x2000.
        """
        if not self.cfg.fast:
            return self.goodness_scores_reference(images)
        net, C, s = self.net, self.num_classes, self.cfg.label_strength
        B, D = images.shape
        k = self.cfg.goodness_shortlist
        if 0 < k < C:
            labels = self.softmax_logits(images).topk(k, dim=1).indices  # (B, k) candidates
        else:
            k, labels = C, None
        W1, b1 = net.layers[0].weight, net.layers[0].bias
        if "int8" in (self.cfg.test_precision, self.cfg.precision):  # layers 2..L in int8; layer 1 as `precision`
            int8 = self._int8_weights()
            Wm = [self._matmul_weight(W1)] + [None] * (len(net.layers) - 1)
        else:
            Wm, int8 = self._matmul_weights(), [None] * len(net.layers)
        img = images.clone()
        img[:, :C] = 0.0
        r = 1.0 / (((img.square().sum(1) + s * s) / D).sqrt() + NORM_EPS)  # (B,)
        shared = self._total_input(img, Wm[0], torch.zeros_like(b1))  # (B, H1)
        label_rows = W1[:C][None] if labels is None else W1[labels]  # (1, C, H1) or (B, k, H1)
        z = torch.addcmul(b1, shared[:, None, :] + s * label_rows, r[:, None, None])  # (B, k, H1)
        z = z.relu_() if self.cfg.activation == "relu" else activate(z, self.cfg.activation)
        states = z.reshape(B * k, -1)  # row b*k + j: image b with its j-th label
        sumsq = torch.linalg.vector_norm(states, dim=1).square_()  # (B*k,) one pass, no (B*k, H) temporary
        scores = sumsq.clone() if self.cfg.goodness_from == 0 else torch.zeros_like(sumsq)
        for i, layer in enumerate(net.layers[1:], start=1):
            states, _, _, _ = self._next_states(states, sumsq, Wm[i], layer.bias, self.cfg.activation, int8[i],
                                                self._int8_workspace, with_sumsq=False)
            sumsq = torch.linalg.vector_norm(states, dim=1).square_()
            if i >= self.cfg.goodness_from:
                scores += sumsq
        if labels is not None:  # labels off the shortlist score -inf
            full = torch.full((B, C), float("-inf"), device=images.device)
            return full.scatter_(1, labels, scores.reshape(B, k) * self._sign)
        return scores.reshape(B, C) * self._sign  # neg-sum-squares: the label with the least activity

    @torch.no_grad()
    def goodness_scores_reference(self, images: torch.Tensor) -> torch.Tensor:
        """The per-label test done naively: C full passes (ffenergytest.m). With a shortlist of k,
        labels outside the softmax's top k score -inf, as in the fast path."""
        B, C = len(images), self.num_classes
        cols = []
        for k in range(C):
            labels = torch.full((B,), k, dtype=torch.long, device=images.device)
            x = embed_label(images, one_hot(labels, self.cfg.label_strength, C))
            states = self.net.forward_states(x)
            cols.append(self._sign * sum(st.square().sum(1) for st in states[self.cfg.goodness_from :]))
        scores = torch.stack(cols, dim=1)  # (B, C)
        k = self.cfg.goodness_shortlist
        if 0 < k < C:
            shortlist = self.softmax_logits(images).topk(k, dim=1).indices  # (B, k)
            off = torch.ones_like(scores, dtype=torch.bool).scatter_(1, shortlist, False)
            scores = scores.masked_fill(off, float("-inf"))
        return scores

    @torch.no_grad()
    def softmax_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 784) -> (B, C): one neutral-label pass into the linear softmax (ffsoftmaxtest.m)."""
        x = embed_label(images, neutral_label(len(images), self.cfg.label_strength, self.num_classes, images.device))
        if self._low_precision() is None or not self.cfg.fast:
            return self.net.readout_logits([normalize_rows(st) for st in self.net.forward_states(x)])
        h, normed = normalize_rows(x), []
        for layer in self.net.layers:  # bf16 products (precision bfloat16 or int8)
            w = self._matmul_weight(layer.weight)
            h = normalize_rows(activate(self._total_input(h, w, layer.bias), self.cfg.activation))
            normed.append(h)
        return self.net.readout_logits(normed)

    @torch.no_grad()
    def layer_states(self, images: torch.Tensor, label_pixels: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's states for images with the given label pixels (for plots and analysis)."""
        return self.net.forward_states(embed_label(images, label_pixels))

    @property
    def goodness_chunk(self) -> int:
        """Images per call of goodness_scores in evaluate: about 2000 rows (image, label) per matrix
        product whatever the shortlist (200 images x 10 labels, 666 x 3): cache-friendly."""
        k = self.cfg.goodness_shortlist
        return max(1, 2000 // (k if 0 < k < self.num_classes else self.num_classes))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        good = self.predict_batches(self.goodness_scores, x, chunk=self.goodness_chunk)
        out = {"error_goodness": (good.argmax(1) != y).float().mean().item()}
        if self.cfg.readout:
            soft = self.predict_batches(self.softmax_logits, x)
            out["error_softmax"] = (soft.argmax(1) != y).float().mean().item()
        return out
