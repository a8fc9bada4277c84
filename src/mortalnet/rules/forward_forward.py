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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from mortalnet.config import ConfigError
from mortalnet.nets.ff import (
    INT8_MIN_ROWS,
    Activation,
    DerivedWeights,
    FFNet,
    activate,
    embed_label,
    int8_matmul,
    int8_product,
    int8_scales,
    inverse_rms,
    neutral_label,
    normalize_rows,
    one_hot,
    product,
    quantize_activity_rows,
    quantize_columns,
    quantize_weight_rows,
    round_activity_rows,
    workspace_buffer,
)
from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules import register_rule
from mortalnet.rules.base import Learner, check_widths
from mortalnet.rules.ff_passes import (
    call_compiled,
    ff_layer_signal,
    first_layer_pass,
    goodness_sign,
    int8_goodness_pass,
    int8_layer_states,
    int8_signal_pass,
    lowp_layer_states,
    lowp_signal_pass,
    pair_metrics,
    sample_wrong_labels,
)
from mortalnet.rules.ff_update import GradientSink


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

    def __post_init__(self) -> None:
        # each would train without a word and learn nothing (T = 0 divides by zero inside the
        # logistic; a negative peer-normalization strength pushes units apart)
        if not self.temperature > 0 or math.isinf(self.temperature):
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        for name in ("peer_norm", "readout_lr", "readout_weight_cost"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.peer_decay < 1.0:
            raise ConfigError(f"peer_decay must be in [0, 1), got {self.peer_decay}")


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
    """Matrix products in float32, or in bfloat16 (fast path only): bf16 copies of weights and activities are multiplied (fp32 accumulation inside each product); master weights, smoothed gradients and all other arithmetic stay float32. int8 (fast path, CPU): the training products of layers 2..L (forward and weight gradient) with int8 operands and exact int32 accumulation (weights rounded per input unit, activities per row, gradient signals per output unit), layer 1 in bfloat16, the softmax readout (10 columns) in float32 in every precision, the goodness test as test_precision=int8; an approximation whose cost in test error is measured (the speed-30-int8 preset's records), not assumed."""
    test_precision: Literal["same", "int8"] = "same"
    """Products of the per-label goodness test in layers 2..L: same = as `precision`; int8 = int8 weights (one scale per output unit) times int8 activities (one scale per row), exact int32 accumulation (torch._int_mm; ~2x bf16's rate on CPUs with VNNI or AMX). Fast path only; layer 1's shared image product, the softmax test and training keep `precision`. An approximation: its agreement with the exact test on trained nets is measured in benchmarks/goodness_test.py."""
    compile_update: bool = False
    """bfloat16 or int8 fast path with smoothed-sgd only: fold each layer's bf16 (int8: int32) gradient product into the smoothed gradient and update the weight in one torch.compile'd pass over the weights instead of four eager ones (int8: and re-quantize it for the next step); layer 1's pass up to its learning signal, and each layer's states pass (1/rms, int8 rounding or bf16 cast, product, epilogue, goodness) and signal pass (signal, its rounding or cast, bias sums, the layer's FF loss and pair error) become compiled functions too (the roundings bit for bit the eager ones, the rest to float rounding); so does the int8 goodness test (test_precision=int8, or precision=int8) from layer 1's shared product on, each layer's epilogue fused with the next layer's rounding (int8_goodness_pass; the same scores to float rounding) (needs a working torch.compile, i.e. a C++ compiler on CPU; compiling takes ~10-20 s at the first step). The same arithmetic as the eager update, to float rounding."""


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
        hidden = check_widths(hidden)
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
        return sample_wrong_labels(logits, y, self.num_classes, self.cfg.negatives, self.generator)

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
        self._record_pair_metrics(i, *pair_metrics(p_pos, p_neg), metrics)
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
    def _record_pair_metrics(i: int, loss: torch.Tensor, pair_error: torch.Tensor, metrics: dict) -> None:
        """Layer i's FF loss and pair error (`pair_metrics`) into the step's metrics."""
        metrics[f"ff_loss/layer{i + 1}"] = loss
        metrics[f"pair_error/layer{i + 1}"] = pair_error

    def gradient_sink(self) -> GradientSink:
        """Where one fast step's gradients go (its layers are updated as they complete)."""
        return GradientSink(self.optimizers[0], self._low_precision(), self.cfg.compile_update, self._weight_copies,
                             self._int8_train_copies, self._int8_workspace)

    def _low_precision(self) -> torch.dtype | None:
        """The dtype of the FF layers' products that are not int8: bf16 for precision bfloat16 and int8
        (int8's layer 1), else None (float32). The softmax readout's products stay float32."""
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

    def _int8_test(self) -> bool:
        """Whether the goodness test multiplies layers 2..L in int8 (test_precision=int8, or precision=int8)."""
        return "int8" in (self.cfg.test_precision, self.cfg.precision)

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
        if isinstance(w, tuple) and compiled_passes and len(prev) > INT8_MIN_ROWS:
            states, sumsq, r, qa, amax = call_compiled(int8_layer_states, prev, prev_sumsq, w[1], w[0], bias,
                                                       activation)
            return states, sumsq, r, (qa, int8_scales(amax))
        if compiled_passes and int8 is None and isinstance(w, torch.Tensor) and w.dtype != torch.float32:
            return call_compiled(lowp_layer_states, prev, prev_sumsq, w, bias, activation)
        r = inverse_rms(prev_sumsq, prev.shape[1])  # (N, 1)
        if isinstance(w, tuple):  # int8 training: (normalize_rows(prev) @ w) = r * row * (qa @ q)
            q, in_scale = w
            if compiled_passes:
                qa, amax = call_compiled(round_activity_rows, prev, in_scale)
                prev_m = (qa, int8_scales(amax))
            else:
                prev_m = quantize_activity_rows(prev, in_scale, workspace, name="train")  # (qa, row)
            acc = int8_matmul(prev_m[0], q, out=workspace_buffer(workspace, "train", (len(prev), q.shape[1]),
                                                                  torch.int32, prev.device))  # (N, H) int32
            z = torch.addcmul(bias, acc, r * prev_m[1])  # (N, H) float32
        elif int8 is None:
            prev_m = prev.to(w.dtype)
            z = torch.addcmul(bias, torch.mm(prev_m, w), r)  # (N, H)
        else:
            prev_m, z = None, int8_product(prev, *int8, row_factor=r, bias=bias, workspace=workspace)
        states = z.relu_() if activation == "relu" else activate(z, activation)
        return states, states.square().sum(1) if with_sumsq else None, r, prev_m

    def _step_fast(self, images: torch.Tensor, y: torch.Tensor, sink: GradientSink):
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


        metrics: dict[str, torch.Tensor] = {}
        readout_grads: list[torch.Tensor] = []
        if cfg.readout:  # --- neutral pass -> readout update and hard negative labels -------------
            r_neu = inverse_rms(sq_img + C * (s / C) ** 2, D)  # (B, 1): 1 / rms of the full input row
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

    def _first_layer_step(self, img, shared, sq_img, y, y_neg, sink: GradientSink, metrics: dict):
        """Layer 1 on positive (label y) and negative (label y_neg) rows; updates it through `sink`.

        img (B, D) has zeros in the label pixels and shared = img @ W1 (B, H1). Returns the
        states (2B, H1) and their sums of squares (2B,)."""
        s, B, D = self.cfg.label_strength, len(y), img.shape[1]
        W1, b1 = self.net.layers[0].weight, self.net.layers[0].bias
        r = inverse_rms(sq_img + s * s, D).repeat(2, 1)  # (2B, 1): any one-hot label
        states, sumsq, both, pos, neg, bias_grad, loss, pair_error = self._run(
            first_layer_pass, shared, W1, y, y_neg, s, r, b1, self.net.mean_states(0), *self._signal_hparams(W1.shape[1]))
        self._record_pair_metrics(0, loss, pair_error, metrics)
        # image rows are the same for positive and negative data: one (D, B) x (B, H1) product
        sink.product(W1, img.T, both, -1.0 / B)
        C = self.num_classes  # label pixels: one of W1's first C rows per row of data
        sink.rows(W1, y, pos, -s / B, within=C)
        sink.rows(W1, y_neg, neg, -s / B, within=C)
        sink.vector(b1, bias_grad, -1.0 / B)
        sink.done(W1, b1)
        return states, sumsq

    def _layer_step(self, i: int, prev: torch.Tensor, prev_sumsq: torch.Tensor, w: torch.Tensor,
                    sink: GradientSink, metrics: dict):
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
        if isinstance(prev_m, tuple):  # int8: prev ~= row * qa / in_scale (see GradientSink.int8_product)
            qa, row = prev_m
            qg, amax, bias_grad, loss, pair_error = self._run(int8_signal_pass, states, sumsq, mean, r_prev * row,
                                                              B, *hparams)
            sink.int8_product(layer.weight, qa, qg, int8_scales(amax), w[1], -1.0 / B)
        elif prev_m.dtype != torch.float32:  # bf16: the product's factor made (and cast) with the signal
            b, bias_grad, loss, pair_error = self._run(lowp_signal_pass, states, sumsq, mean, r_prev,
                                                       sink.factor(layer.weight, -1.0 / B), prev_m.dtype, B, *hparams)
            sink.lowp_product(layer.weight, prev_m.T, b)
        else:
            theta, temp, peer_norm, peer_decay, sign, activation = hparams
            signal, p_pos, p_neg = ff_layer_signal(states, B, theta, temp, mean, peer_norm, peer_decay, sign,
                                                   activation, sumsq)
            sink.product(layer.weight, prev_m.T, signal * r_prev, -1.0 / B)  # (D, H)
            bias_grad = signal.sum(0)
            loss, pair_error = pair_metrics(p_pos, p_neg)
        self._record_pair_metrics(i, loss, pair_error, metrics)
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
        all but layer 1's shared image product, ~1% of the test's arithmetic in 784-4x2000; with
        rule.compile_update as well, everything after that product is one compiled pass
        (ff_passes.int8_goodness_pass), else the eager passes of _goodness_of_layers.
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
        img = images.clone()
        img[:, :C] = 0.0
        r = inverse_rms(img.square().sum(1) + s * s, D)  # (B, 1)
        shared = self._total_input(img, self._matmul_weight(W1), torch.zeros_like(b1))  # (B, H1), as `precision`
        label_rows = W1[:C][None] if labels is None else W1[labels]  # (1, C, H1) or (B, k, H1)
        if self._int8_test() and self.cfg.compile_update:  # layers 2..L and their goodness: one compiled pass
            qs, scales = zip(*self._int8_weights()[1:])
            scores = call_compiled(int8_goodness_pass, shared, label_rows, r, b1, s, list(qs), list(scales),
                                   [layer.bias for layer in net.layers[1:]], self.cfg.activation,
                                   self.cfg.goodness_from).reshape(-1)  # (B*k,)
        else:
            scores = self._goodness_of_layers(shared, label_rows, r)
        if labels is not None:  # labels off the shortlist score -inf
            full = torch.full((B, C), float("-inf"), device=images.device)
            return full.scatter_(1, labels, scores.reshape(B, k) * self._sign)
        return scores.reshape(B, C) * self._sign  # neg-sum-squares: the label with the least activity

    def _goodness_of_layers(self, shared: torch.Tensor, label_rows: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """goodness_scores' eager passes: (B*k,) goodness summed over layers goodness_from..L, row
        b*k + j for image b with its j-th label (the arguments as int8_goodness_pass takes them)."""
        net, cfg = self.net, self.cfg
        if self._int8_test():  # layers 2..L in int8 (layer 1's shared product was as `precision`)
            Wm, int8 = [None] * len(net.layers), self._int8_weights()
        else:
            Wm, int8 = self._matmul_weights(), [None] * len(net.layers)
        z = torch.addcmul(net.layers[0].bias, shared[:, None, :] + cfg.label_strength * label_rows, r[:, None])
        z = z.relu_() if cfg.activation == "relu" else activate(z, cfg.activation)  # (B, k, H1)
        states = z.reshape(-1, z.shape[2])  # row b*k + j: image b with its j-th label
        sumsq = torch.linalg.vector_norm(states, dim=1).square_()  # (B*k,) one pass, no (B*k, H) temporary
        scores = sumsq.clone() if cfg.goodness_from == 0 else torch.zeros_like(sumsq)
        for i, layer in enumerate(net.layers[1:], start=1):
            states, _, _, _ = self._next_states(states, sumsq, Wm[i], layer.bias, cfg.activation, int8[i],
                                                self._int8_workspace, with_sumsq=False)
            sumsq = torch.linalg.vector_norm(states, dim=1).square_()
            if i >= cfg.goodness_from:
                scores += sumsq
        return scores

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
