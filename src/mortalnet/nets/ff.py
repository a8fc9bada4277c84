"""Forward-Forward network pieces (Hinton 2022, "The Forward-Forward Algorithm"; ffnew.m).

Conventions, as in the released MATLAB code:
  * an input row is the image with its first 10 pixels replaced by the label
    (one-hot for positive/negative data, 0.1 each for the neutral label), section 3.3;
  * every layer's input is normalized to mean square 1 per unit (`ffnormrows.m`), so a layer
    sees only the *direction* of the activity below, not its goodness (section 2.1);
  * weights are stored (fan_in, fan_out) and initialized N(0, 1/fan_in); biases start at 0.

The activation is ReLU as in the paper; `ACTIVATIONS` lists the other choices (the paper leaves it
open, section 2). Each is one whose slope can be read off its output, so a layer's FF update still
needs only its measured states: dG/dz = 2 s f'(z) with f'(z) = `activation_slope(s)`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NUM_LABEL_PIXELS = 10
NORM_EPS = 1e-12  # ffnormrows.m adds exp(-100); any tiny constant that avoids 0/0 will do
LEAKY_SLOPE = 0.01

Activation = Literal["relu", "leaky-relu", "softplus"]
ACTIVATIONS: tuple[str, ...] = ("relu", "leaky-relu", "softplus")


def product(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a (N, D) @ w (D, H) in w's dtype (a is cast to it; bf16 operands, fp32 accumulation); the result
    in float32 (N, H). The one low-precision product the FF rules share."""
    if w.dtype == torch.float32:
        return a @ w
    return torch.mm(a.to(w.dtype), w).float()


INT8_LEVELS = 127.0  # symmetric int8: integers -127..127 (-128 unused, so that q and -q both fit)
INT8_MIN_ROWS = 16  # torch._int_mm on CUDA needs more rows than this (and widths that are multiples of 8)


def int8_scales(amax: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scales from the largest |entry| of each row or column (any shape): amax / 127,
    kept above the smallest normal float so that an all-zero row divides cleanly."""
    return amax.float().clamp_min(torch.finfo(torch.float32).tiny) / INT8_LEVELS


def quantize_columns(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 copy of w (D, H), one scale per column (per output unit): w ~= q * scale.

    Returns q (D, H) int8 and scale (H,) float32. Each column's largest |w| maps to 127, so the
    rounding error of an entry is at most scale / 2 = max|w_col| / 254."""
    scale = int8_scales(w.abs().amax(0))  # (H,)
    return torch.round(w / scale).to(torch.int8), scale


def workspace_buffer(workspace: dict | None, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """An uninitialized tensor: the workspace's buffer of this name, shape and dtype (made on first
    use, then reused), or a fresh one without a workspace."""
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device)
    key = (name, shape, dtype, device)
    if key not in workspace:
        workspace[key] = torch.empty(shape, dtype=dtype, device=device)
    return workspace[key]


class DerivedWeights:
    """Copies made from weights (a bf16 conversion, an int8 quantization), each reused while its
    weight is unchanged: the weight's version counter (bumped by every in-place write: an update, a
    checkpoint load) and its storage tell. A test in chunks then converts each weight once, and a
    copy made elsewhere for the weight's current state (the compiled update's) is `put` here."""

    def __init__(self, make) -> None:
        self.make = make  # weight (detached) -> copy
        self._copies: dict[int, tuple[int, int, object]] = {}  # id(w) -> (version, data_ptr, copy)

    def get(self, w: torch.Tensor):
        """make(w), or the copy kept for w's current state."""
        version, ptr, copy = self._copies.get(id(w), (None, None, None))
        if copy is None or version != w._version or ptr != w.data_ptr():
            copy = self.make(w.detach())
            self.put(w, copy)
        return copy

    def put(self, w: torch.Tensor, copy) -> None:
        """Keep `copy` as w's copy for w's current state."""
        self._copies[id(w)] = (w._version, w.data_ptr(), copy)


def round_weight_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_weight_rows' rounding: q (D, H) int8 and each row's largest |w| (D, 1), the scale
    left to `int8_scales`. Returning the row maximum itself (not the scale) lets torch.compile
    fuse the row reduction and the rounding into one pass over w (one outer loop over rows, each row
    read twice while it sits in cache), where a returned scale costs a pass of its own."""
    amax = w.abs().amax(1, keepdim=True)  # (D, 1)
    return torch.round(w / int8_scales(amax)).to(torch.int8), amax


def quantize_weight_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 copy of w (D, H), one scale per row (per input unit): w ~= in_scale[:, None] * q.

    Returns q (D, H) int8 and in_scale (D,) float32. The training products of rule.precision=int8 use
    this form: a @ w = (a * in_scale) @ q, so the scale goes onto the activities' columns before they
    are rounded (int8_product's in_scale), and the gradient product's rows take 1 / in_scale. A row
    reduction is contiguous in the (D, H) layout, which keeps the compiled update one cheap pass."""
    q, amax = round_weight_rows(w)
    return q, int8_scales(amax)[:, 0]


def quantize_activity_rows(a: torch.Tensor, in_scale: torch.Tensor | None = None, workspace: dict | None = None,
                           name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 copy of the rows of a (N, D), each row's largest |entry| -> 127, after
    multiplying column d by in_scale[d] when given: a * in_scale ~= row * q.

    Returns q (N, D) int8 and row (N, 1) float32. With a workspace, q lives in its buffer
    (named `name`) until the next call of the same name and shape; a is read in full first."""
    n, D = a.shape
    buf = workspace_buffer(workspace, f"rounded{name}", (n, D), torch.float32, a.device)
    src = a if in_scale is None else torch.mul(a, in_scale, out=buf)
    # (N, 1) largest |a| per row; two plain reductions (inf-norm and aminmax are ~20x slower on CPU)
    row = int8_scales(torch.maximum(src.amax(1, keepdim=True), src.amin(1, keepdim=True).neg_()))
    rounded = torch.div(src, row, out=buf).round_()
    return workspace_buffer(workspace, f"qa{name}", (n, D), torch.int8, a.device).copy_(rounded), row


def round_activity_rows(a: torch.Tensor, in_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_activity_rows(a, in_scale) as one pure function for torch.compile (rule.compile_update):
    q (N, D) int8 and each row's largest |a * in_scale| (N, 1), whose `int8_scales` is the row scale.
    The same roundings as the eager function, bit for bit; compiled, one pass over the rows."""
    src = a * in_scale
    amax = src.abs().amax(1, keepdim=True)  # (N, 1)
    return torch.round(src / int8_scales(amax)).to(torch.int8), amax


def round_signal_columns(signal: torch.Tensor, row_factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_columns(signal * row_factor) as one pure function for torch.compile: q (N, H) int8 and
    each column's largest |entry| (H,), whose `int8_scales` is the column scale (bit for bit the
    eager rounding)."""
    g = signal * row_factor  # (N, H) * (N, 1)
    amax = g.abs().amax(0)  # (H,)
    return torch.round(g / int8_scales(amax)).to(torch.int8), amax


def int8_matmul(qa: torch.Tensor, q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """qa (N, K) int8 @ q (K, H) int8, accumulated exactly in int32 (torch._int_mm: VNNI/AMX on x86
    CPUs, tensor cores on GPUs); (N, H) int32, written into `out` when given. torch._int_mm on CUDA
    wants more than 16 rows: fewer are padded with zero rows (on any device, so that the numbers
    do not depend on it)."""
    n = len(qa)
    if n <= INT8_MIN_ROWS:
        pad = qa.new_zeros(INT8_MIN_ROWS + 1 - n, qa.shape[1])
        return torch._int_mm(torch.cat([qa, pad]), q)[:n]
    return torch._int_mm(qa, q) if out is None else torch._int_mm(qa, q, out=out)


def int8_product(a: torch.Tensor, q: torch.Tensor, scale: torch.Tensor | None, row_factor: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, workspace: dict | None = None,
                 in_scale: torch.Tensor | None = None) -> torch.Tensor:
    """a (N, D) @ w (D, H) with int8 operands, for w given as quantize_columns(w) = (q, scale), or as
    quantize_weight_rows(w) = (q, in_scale) with scale None; times row_factor (N, 1) and plus bias
    (H,) when given (folded into the one rescaling pass).

    Each row of a (times in_scale) is rounded to int8 with its own scale (its largest |a| maps to
    127), the product of the integers accumulates exactly in int32, and the result is rescaled by
    the row and column scales: float32 (N, H). Only the roundings of a and w are approximate (each
    within half a step of 1/127 of its row's or column's largest entry); used by the per-label
    goodness test when rule.test_precision=int8.

    workspace: a dict the caller keeps between calls; the temporaries and the result then live in
    its buffers, reused by every later call of the same shapes (the result is overwritten by the
    next such call, and may be that call's `a`: a is read in full before the result is written).
    The numbers are the same with or without it; the point is speed: on a 2-core CPU, fresh 16 MB
    tensors for each 2000x2000x2000 product cost ~10 ms of page faults next to its ~19 ms."""
    qa, row = quantize_activity_rows(a, in_scale, workspace)  # (N, D) int8, (N, 1)
    n, H = len(a), q.shape[1]
    acc = int8_matmul(qa, q, out=workspace_buffer(workspace, "acc", (n, H), torch.int32, a.device))  # (N, H) int32
    out = workspace_buffer(workspace, "out", (n, H), torch.float32, a.device).copy_(acc)  # float32
    if scale is not None:
        out.mul_(scale)  # * (H,)
    if row_factor is not None:
        row = row * row_factor
    return out.mul_(row) if bias is None else torch.addcmul(bias, out, row, out=out)


def activate(z: torch.Tensor, name: str = "relu") -> torch.Tensor:
    """The layer nonlinearity applied to total inputs z (any shape)."""
    if name == "relu":
        return torch.relu(z)
    if name == "leaky-relu":
        return F.leaky_relu(z, LEAKY_SLOPE)
    if name == "softplus":
        return F.softplus(z)
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


def activation_slope(states: torch.Tensor, name: str = "relu") -> torch.Tensor | float:
    """f'(z) written as a function of the output s = f(z) (1.0 for ReLU, where s f' = s)."""
    if name == "relu":
        return 1.0
    if name == "leaky-relu":
        return torch.where(states > 0, 1.0, LEAKY_SLOPE)
    if name == "softplus":
        return -torch.expm1(-states)  # sigmoid(z) = 1 - exp(-softplus(z))
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, D) with mean(x**2) = 1 in every row (all-zero rows stay zero)."""
    return x / (x.square().mean(dim=-1, keepdim=True).sqrt() + NORM_EPS)


def inverse_rms(sumsq: torch.Tensor, width: int) -> torch.Tensor:
    """1 / rms of rows of `width` entries from their sums of squares (N,): (N, 1), the factor by which
    normalize_rows scales each row (a product of normalized rows is the product of the rows times it)."""
    return (1.0 / ((sumsq / width).sqrt() + NORM_EPS))[:, None]


def embed_label(images: torch.Tensor, label_pixels: torch.Tensor) -> torch.Tensor:
    """Replace the first C pixels of images (B, D) by label_pixels (B, C) (C = 10 for MNIST)."""
    x = images.clone()
    x[:, : label_pixels.shape[1]] = label_pixels
    return x


def one_hot(labels: torch.Tensor, strength: float = 1.0, num_classes: int = 10) -> torch.Tensor:
    """(B,) int -> (B, num_classes) float with `strength` at the label."""
    return F.one_hot(labels, num_classes).to(torch.float32) * strength


def neutral_label(batch: int, strength: float = 1.0, num_classes: int = 10, device=None) -> torch.Tensor:
    """(B, num_classes) filled with strength / num_classes (0.1 each): 'no label'."""
    return torch.full((batch, num_classes), strength / num_classes, device=device)


def goodness(states: torch.Tensor) -> torch.Tensor:
    """Sum of squared activities: (B, H) -> (B,)."""
    return states.square().sum(dim=-1)


class FFDense(nn.Module):
    """A fully connected ReLU layer trained by its own local objective.

    forward: (B, fan_in) normalized activities -> (B, fan_out) ReLU states.
    """

    def __init__(self, fan_in: int, fan_out: int, generator: torch.Generator | None = None, device=None,
                 activation: Activation = "relu"):
        super().__init__()
        self.activation = activation
        w = torch.randn(fan_in, fan_out, generator=generator, device=device) / fan_in**0.5
        self.weight = nn.Parameter(w, requires_grad=False)  # (fan_in, fan_out)
        self.bias = nn.Parameter(torch.zeros(fan_out, device=device), requires_grad=False)

    @property
    def fan_in(self) -> int:
        return self.weight.shape[0]

    @property
    def fan_out(self) -> int:
        return self.weight.shape[1]

    def total_input(self, h: torch.Tensor) -> torch.Tensor:
        """(B, fan_in) -> (B, fan_out) pre-activation h W + b."""
        return torch.addmm(self.bias, h, self.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.total_input(h)
        return torch.relu(z) if self.activation == "relu" else activate(z, self.activation)


class FFNet(nn.Module):
    """A stack of FF layers plus the linear softmax readout of ffnew.m.

    The readout predicts the label from the normalized activities of hidden layers
    `readout_from` .. L (0-based; ffnew.m's minlevelsup=3 is readout_from=1), with no bias.
    `mean_states` holds each layer's running mean activity for peer normalization.
    """

    def __init__(
        self,
        input_dim: int,
        hidden: tuple[int, ...],
        num_classes: int = 10,
        readout_from: int = 1,
        generator: torch.Generator | None = None,
        device=None,
        activation: Activation = "relu",
    ):
        super().__init__()
        if not hidden:
            raise ValueError("an FF network needs at least one hidden layer")
        if not 0 <= readout_from < len(hidden):
            raise ValueError(f"readout_from={readout_from} must index a hidden layer (0..{len(hidden) - 1})")
        dims = (input_dim, *hidden)
        self.layers = nn.ModuleList(
            FFDense(a, b, generator=generator, device=device, activation=activation) for a, b in zip(dims[:-1], dims[1:])
        )
        self.readout_from = readout_from
        self.num_classes = num_classes
        # readout weights (H_l, C) for l >= readout_from; zero init as in ffnew.m
        self.readout = nn.ParameterList(
            nn.Parameter(torch.zeros(h, num_classes, device=device), requires_grad=False)
            for h in hidden[readout_from:]
        )
        for i, h in enumerate(hidden):
            self.register_buffer(f"mean_states_{i}", torch.full((h,), 0.5, device=device))

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(layer.fan_out for layer in self.layers)

    def mean_states(self, i: int) -> torch.Tensor:
        return getattr(self, f"mean_states_{i}")

    def forward_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Plain pass (no label handling): input rows (B, D) -> every layer's states (B, H_l)."""
        h = normalize_rows(x)
        states = []
        for layer in self.layers:
            s = layer(h)
            states.append(s)
            h = normalize_rows(s)
        return states

    def readout_logits(self, normed: list[torch.Tensor]) -> torch.Tensor:
        """Softmax logits (B, C) from the normalized states of every hidden layer."""
        logits = None
        for w, h in zip(self.readout, normed[self.readout_from :]):  # (H_l, C), (B, H_l)
            logits = h @ w if logits is None else logits + h @ w
        return logits
