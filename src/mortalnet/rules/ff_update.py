"""ffnew.m's weight update as the fast FF step applies it (Hinton 2022; the released `ffnew.m`):
smoothed gradients g = beta g + (1 - beta) grad, then w = (1 - lr weight_cost) w - lr g per layer,
as soon as that layer's gradient is complete (`GradientSink`), in one compiled pass over the
weights under `rule.compile_update` (`smoothed_update`, `smoothed_update_int8`).

A layer's gradient arrives as products a^T b (D, N) x (N, H), rows (the label pixels of layer 1)
and vectors (biases); with bf16 or int8 products the (D, H) product goes into a reused buffer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mortalnet.nets.ff import DerivedWeights, int8_matmul, int8_scales, round_weight_rows, workspace_buffer
from mortalnet.optim import SmoothedSGD
from mortalnet.rules.ff_passes import call_compiled


def smoothed_update(prod: torch.Tensor, smoothed: torch.Tensor, weight: torch.Tensor, beta: torch.Tensor,
                    lr: torch.Tensor, decay: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
    """ffnew.m's update of one weight matrix from its (already scaled) bf16 gradient product prod (D, H):
        smoothed = beta * smoothed + prod (+ head in the first rows);   weight = decay * weight - lr * smoothed
    with decay = 1 - lr * weight_cost; head (m, H) float32, when given, is more gradient for the
    first m rows (layer 1's label pixels, `GradientSink.leading_rows`). Returns the new weight in
    prod's dtype (the next step's matmul copy). Written for torch.compile, which turns it into one
    pass over smoothed and weight (eager PyTorch needs five, the bf16 copy included; the padded head
    is read in the same pass); the scalars are 0-d tensors so that a changing learning rate does
    not trigger a recompilation."""
    grad = prod.float()
    if head is not None:
        grad = grad + F.pad(head, (0, 0, 0, prod.shape[0] - head.shape[0]))  # (D, H), zero below row m
    smoothed.mul_(beta).add_(grad)
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


class GradientSink:
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
        # rows added to a parameter whose bf16 product is pending (layer 1's label pixels), gathered
        # into a small (m, H) block of its first m rows: its compiled pass adds the block (`done`),
        # so the layer keeps the one-pass update
        self.heads: dict[int, torch.Tensor] = {}
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

    def rows(self, p: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, scale: float, within: int) -> None:
        """grad(p)[index[k]] += scale * rows[k], every index below `within` (layer 1's label pixels:
        its first C rows)."""
        if id(p) in self.pending and not isinstance(self.pending[id(p)][2], tuple):  # for the compiled pass
            if id(p) not in self.heads:
                self.heads[id(p)] = rows.new_zeros(within, rows.shape[1])  # (within, H)
            self.heads[id(p)].index_add_(0, index, rows, alpha=self._scale(p, scale))
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
            head = self.heads.pop(id(p), None)
            if head is not None:
                buf[: len(head)].add_(head)

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
                    head = self.heads.pop(id(p), None)
                    copy = _run_compiled(False, (prod, smoothed, p), beta, lr, 1.0 - lr * wc, head)
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


def _run_compiled(int8: bool, tensors: tuple, beta: float, lr: float, decay: float,
                  head: torch.Tensor | None = None):
    """The compiled smoothed_update (int8: smoothed_update_int8) on tensors + (beta, lr, decay) (+ the
    bf16 update's head rows), the scalars as 0-d tensors (a changing learning rate then compiles
    nothing new)."""
    smoothed = tensors[-2]
    scalars = [torch.tensor(v, dtype=smoothed.dtype, device=smoothed.device) for v in (beta, lr, decay)]
    if int8:
        return call_compiled(smoothed_update_int8, *tensors, *scalars)
    return call_compiled(smoothed_update, *tensors, *scalars, *(() if head is None else (head,)))
