"""Forward-Forward on any stack of layers: dense or locally connected, with or without labels,
with an optional black box between two layers (Hinton 2022, secs. 3.2-3.4 and 7).

The FF machinery is the supervised rule's (`rules/ff_passes.py`): each layer's update is
`ff_layer_signal` of its own states (goodness, threshold, peer normalization, the goodness and
activation variants), contracted with its own input; inputs are normalized to mean square 1
(`normalize_rows`) so a layer sees only the direction of the activity below; nothing crosses a
layer boundary. What this module adds is layer-agnostic wiring:

  * layers are `FFDense` (`nets/ff.py`) or `LocallyConnected2d` (`nets/local.py`); a layer's
    weight update comes from `layer_descent_grads(layer, h, signal)`;
  * supervised (`negatives` hard | random): the input row is the image with C label "pixels"
    appended, [x, s onehot(y)], normalized as a whole as in ffnew.m; the image part feeds layer 1
    through its own (dense or local) weights and the label part through dense weights W_label
    (C, U1), so every unit of a locally connected layer sees the label. Hard negatives and the
    softmax readout use a neutral-label pass (s/C per label); the two test procedures are those of
    `FFLearner`;
  * unsupervised (`negatives` hybrid, `FFUnsupervisedLearner`): negatives are hybrid images
    (`data/negatives.py`) and no label reaches an FF layer. Labels train only the linear softmax
    on the normalized activities of the last `readout_layers` layers, whose gradient never
    reaches the FF layers (it is trained alongside, as ffnew.m trains its readout);
  * a black box (any function of a (N, H) tensor: NumPy, a quantizer, a device) may sit after
    layer `i`: layer i+1 sees normalize(box(normalize(states_i))). FF needs no derivative of it;
  * `precision` bfloat16 (dense layers): every product of a weight (layers' total inputs, their
    updates h^T signal, the tests) takes bf16 operands with fp32 accumulation, as the supervised
    rule's `precision` does; weights, states, signals and the readout stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.data.negatives import hybrid_negatives
from mortalnet.nets.ff import DerivedWeights, FFDense, activate, inverse_rms, normalize_rows, product
from mortalnet.nets.local import LocallyConnected2d
from mortalnet.optim import OptimizerConfig, make_optimizer, schedule_factor, set_lr_scale
from mortalnet.rules import register_rule
from mortalnet.rules.base import Learner, check_widths
from mortalnet.rules.ff_passes import ff_layer_signal, goodness_sign, sample_wrong_labels
from mortalnet.rules.forward_forward import FFObjectiveConfig

BlackBox = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FFLayerwiseConfig(FFObjectiveConfig):
    """Forward-Forward on a stack of dense or locally connected layers (defaults: ffnew.m's recipe)."""

    negatives: Literal["hard", "random", "hybrid"] = "hard"
    """hard/random: supervised (wrong label from the neutral-pass softmax / uniform); hybrid: unsupervised hybrid images."""
    readout_layers: int = 3
    """The softmax reads the normalized activities of the last N hidden layers (ffnew.m: layers 2..4 = 3)."""
    goodness_from: int = 1
    """First hidden layer (0-based) whose goodness counts in the per-label test (supervised)."""
    layer: Literal["dense", "local"] = "dense"
    """dense: `hidden` = widths; local: locally connected, `hidden` = channels per position of each map."""
    image_channels: int = 1
    """Channels of the input image (1 for MNIST, 3 for CIFAR-10); its side is sqrt(input_dim / channels)."""
    kernel: int = 11
    """Receptive field side of a locally connected unit (odd)."""
    tile: tuple[int, ...] = ()
    """Output positions per tile (th, tw) of locally connected layers; empty = automatic."""
    blur_steps: int = 10
    """Hybrid negatives: blurs of the random bit image with [1/4, 1/2, 1/4] before thresholding."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Dense layers' matrix products (total inputs, weight updates, tests) in float32, or in bfloat16: bf16 copies of the weights (made once per change) times bf16 activities, fp32 accumulation inside each product; weights, states, signals, the readout and the rest stay float32. Locally connected layers multiply in float32 only."""


def layer_descent_grads(layer: nn.Module, h: torch.Tensor, signal: torch.Tensor, batch: int,
                        product_dtype: torch.dtype = torch.float32):
    """Descent gradients (dW, db) of one FF layer from its input h (N, D_in) and ascent signal (N, D_out).

    product_dtype bfloat16 (dense layers): the (D_in, D_out) product h^T signal is taken of bf16
    operands and widened to float32.
    """
    if isinstance(layer, LocallyConnected2d):
        gw, gb = layer.local_grads(h, signal)
    elif product_dtype == torch.float32:
        gw, gb = h.T @ signal, signal.sum(0)
    else:
        gw, gb = product(h.T, signal.to(product_dtype)), signal.sum(0)
    return gw.neg_().div_(batch), gb.neg_().div_(batch)


@register_rule("ff-layerwise")
class FFLayerwiseLearner(Learner):
    """FF on a stack of dense or locally connected layers (see the module docstring).

    Args:
        config: hyper-parameters.
        hidden: widths (dense) or channels per position (local) of the hidden layers.
        input_dim: input size (784 for MNIST, 3072 for CIFAR-10).
        num_classes: number of labels.
        seed: seeds initialization and sampling.
        device: torch device.
    """

    Config = FFLayerwiseConfig
    primary_metric = "error_goodness"

    def __init__(
        self,
        config: FFLayerwiseConfig = FFLayerwiseConfig(),
        hidden: tuple[int, ...] = (1000, 1000, 1000),
        input_dim: int = 784,
        num_classes: int = 10,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed, device)
        hidden = check_widths(hidden)
        if not hidden:
            raise ConfigError("an FF network needs at least one hidden layer")
        if config.readout_layers < 1:
            raise ConfigError(f"rule.readout_layers must be >= 1, got {config.readout_layers}")
        if config.blur_steps < 0:
            raise ConfigError(f"rule.blur_steps must be >= 0, got {config.blur_steps}")
        if config.precision not in ("float32", "bfloat16"):
            raise ConfigError(f"rule.precision={config.precision!r} is not one of 'float32', 'bfloat16'")
        if config.precision == "bfloat16" and config.layer != "dense":
            raise ConfigError("rule.precision=bfloat16 needs rule.layer=dense (locally connected layers multiply in float32)")
        self.cfg = config
        self.product_dtype = torch.bfloat16 if config.precision == "bfloat16" else torch.float32
        # bf16 copies of the dense weights, remade when a weight changes
        self._weight_copies = DerivedWeights(lambda w: w.to(self.product_dtype))
        self.num_classes = num_classes
        self.input_dim = input_dim
        self.supervised = config.negatives != "hybrid"
        self._sign = goodness_sign(config.goodness)
        self.layers = nn.ModuleList(self._build_layers(config, tuple(hidden), input_dim))
        widths = [layer.fan_out for layer in self.layers]
        L = len(widths)
        self.readout_from = max(0, L - config.readout_layers)
        self.goodness_from = min(config.goodness_from, L - 1)
        dev = self.device_
        # weights from the label "pixels" to layer 1 (supervised), initialized like layer 1's own
        self.label_weight = nn.Parameter(
            torch.randn(num_classes, widths[0], generator=self.generator, device=dev) / self.layers[0].fan_in**0.5
            if self.supervised else torch.zeros(0, widths[0], device=dev),
            requires_grad=False,
        )  # (C, U1)
        self.readout = nn.ParameterList(
            nn.Parameter(torch.zeros(w, num_classes, device=dev), requires_grad=False) for w in widths[self.readout_from:]
        )  # (U_l, C), zero init as in ffnew.m
        for i, w in enumerate(widths):
            self.register_buffer(f"mean_states_{i}", torch.full((w,), 0.5, device=dev))
        self.box: BlackBox | None = None
        self.box_after = -1
        weights = [layer.weight for layer in self.layers] + ([self.label_weight] if self.supervised else [])
        self.optimizers = [
            make_optimizer(config.optimizer, weights, [layer.bias for layer in self.layers]),
            make_optimizer(config.optimizer, list(self.readout), lr=config.readout_lr,
                           weight_decay=config.readout_weight_cost),
        ]

    def _build_layers(self, cfg: FFLayerwiseConfig, hidden: tuple[int, ...], input_dim: int) -> list[nn.Module]:
        g, dev = self.generator, self.device_
        if cfg.layer == "dense":
            dims = (input_dim, *hidden)
            return [FFDense(a, b, g, dev, cfg.activation) for a, b in zip(dims[:-1], dims[1:])]
        side = round((input_dim / cfg.image_channels) ** 0.5)
        if cfg.image_channels * side * side != input_dim:
            raise ConfigError(f"input_dim={input_dim} is not rule.image_channels={cfg.image_channels} square image channels")
        tile = tuple(cfg.tile) if cfg.tile else None
        if tile is not None and len(tile) != 2:
            raise ConfigError(f"rule.tile must be (rows, cols) or empty, got {cfg.tile}")
        layers, shape = [], (cfg.image_channels, side, side)
        for ch in hidden:
            layer = LocallyConnected2d(shape, ch, cfg.kernel, tile, g, dev, cfg.activation)
            layers.append(layer)
            shape = layer.out_shape
        return layers

    @classmethod
    def quick_config(cls) -> FFLayerwiseConfig:
        """Dense layers with a 3x larger learning rate: small nets learn in a few epochs."""
        return cls.Config(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9, weight_decay=0.001))

    def set_black_box(self, after_layer: int, box: BlackBox | None) -> None:
        """Insert `box` between hidden layer `after_layer` (0-based) and the next; None removes it."""
        if box is not None and not 0 <= after_layer < len(self.layers) - 1:
            raise ConfigError(f"a black box must sit between two hidden layers: after_layer in 0..{len(self.layers) - 2}")
        self.box, self.box_after = box, (after_layer if box is not None else -1)

    def mean_states(self, i: int) -> torch.Tensor:
        return getattr(self, f"mean_states_{i}")

    def _product_weight(self, layer: FFDense) -> torch.Tensor:
        """A dense layer's weight (D_in, D_out) in the product dtype: the master, or its bf16 copy
        (converted again only after the optimizer has changed the master)."""
        w = layer.weight
        if self.product_dtype == torch.float32:
            return w
        return self._weight_copies.get(w)

    def _layer_states(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """A hidden layer's states (N, D_out) from its input h (N, D_in), in the rule's product precision."""
        if self.product_dtype == torch.float32 or not isinstance(layer, FFDense):
            return layer(h)
        z = product(h, self._product_weight(layer)).add_(layer.bias)
        return activate(z, self.cfg.activation)

    # ------------------------------------------------------------------------------------------
    # Passes
    # ------------------------------------------------------------------------------------------
    def _next_input(self, i: int, states: torch.Tensor) -> torch.Tensor:
        """What layer i+1 sees: the normalized states of layer i, through the black box if it sits there."""
        h = normalize_rows(states)
        if i == self.box_after and self.box is not None:
            h = normalize_rows(self.box(h))
        return h

    def _image_part(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer 1's input from the raw image, before normalization: (u = x W1 (N, U1), sum x^2 (N,))."""
        first = self.layers[0]
        if self.product_dtype != torch.float32 and isinstance(first, FFDense):
            return product(images, self._product_weight(first)), images.square().sum(1)
        return first.total_input(images) - first.bias, images.square().sum(1)

    def _z1(self, u: torch.Tensor, sq: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer 1's total input for the row [x, label pixels] normalized to mean square 1.

        labels: (N,) one-hot labels, or None for the neutral label (s/C each; unsupervised: none).
        Returns z1 (N, U1) and the row scale r (N, 1) = 1 / rms([x, label]).
        """
        s, C = self.cfg.label_strength, self.num_classes
        if not self.supervised:
            r = inverse_rms(sq, self.input_dim)  # (N, 1)
            return u * r + self.layers[0].bias, r
        label_sq = s * s if labels is not None else s * s / C  # the same for every one-hot label
        r = inverse_rms(sq + label_sq, self.input_dim + C)  # (N, 1)
        lab = s * self.label_weight[labels] if labels is not None else (s / C) * self.label_weight.sum(0)
        return (u + lab) * r + self.layers[0].bias, r

    def states_from_first(self, z1: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's states, given layer 1's total input z1 (N, U1)."""
        states = [activate(z1, self.cfg.activation)]
        for i, layer in enumerate(self.layers[1:]):
            states.append(self._layer_states(layer, self._next_input(i, states[-1])))
        return states

    def forward_states(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(N, D) images (+ labels, or the neutral label when None) -> every layer's states (N, U_l)."""
        return self.states_from_first(self._z1(*self._image_part(images), labels)[0])

    def readout_logits(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Linear softmax logits (N, C) from the normalized states of the readout layers."""
        return sum(normalize_rows(s) @ w for s, w in zip(states[self.readout_from:], self.readout))

    @torch.no_grad()
    def refit_readout(self, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int = 100,
                      seed: int = 0, chunk: int = 1000) -> list[float]:
        """Train the linear softmax afresh on the frozen FF layers; returns the training error per epoch.

        The paper (sec. 3.2) reads the unsupervised net out with "a softmax that is trained to predict
        the label" from the normalized activities of the last three layers; during FF training that
        softmax (trained alongside, as ffnew.m does) chases features that are still moving. Here the
        features of x (N, D) are computed once (N x sum of readout widths floats), the readout is
        zeroed, and the rule's own readout optimizer (readout_lr, readout_weight_cost) runs `epochs`
        epochs, lr constant for the first half and then linearly to 0. No FF layer changes.
        """
        feats = [torch.cat(parts) for parts in zip(*(
            [normalize_rows(s) for s in self.forward_states(x[i : i + chunk])[self.readout_from:]]
            for i in range(0, len(x), chunk)))]  # per readout layer: (N, U_l)
        for w in self.readout:
            w.zero_()
        opt = make_optimizer(self.cfg.optimizer, list(self.readout), lr=self.cfg.readout_lr,
                             weight_decay=self.cfg.readout_weight_cost)
        self.optimizers[1] = opt  # the readout's optimizer state now belongs to the refit readout
        g = torch.Generator(device=x.device).manual_seed(seed)
        errors = []
        for epoch in range(1, epochs + 1):
            set_lr_scale(opt, schedule_factor("half-then-linear", epoch, epochs))
            wrong = 0
            for idx in torch.randperm(len(x), generator=g, device=x.device).split(batch_size):
                logits = sum(h[idx] @ w for h, w in zip(feats, self.readout))  # (B, C)
                delta = (torch.softmax(logits, 1) - F.one_hot(y[idx], self.num_classes)) / len(idx)
                for h, w in zip(feats, self.readout):
                    w.grad = h[idx].T @ delta
                opt.step()
                wrong += int((logits.argmax(1) != y[idx]).sum())
            errors.append(wrong / len(x))
        return errors

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    def _signal(self, i: int, states: torch.Tensor, batch: int, metrics: dict) -> torch.Tensor:
        cfg = self.cfg
        signal, p_pos, p_neg = ff_layer_signal(
            states, batch, cfg.threshold_per_unit * states.shape[1], cfg.temperature,
            self.mean_states(i), cfg.peer_norm, cfg.peer_decay, self._sign, cfg.activation,
        )
        eps = 1e-7
        metrics[f"ff_loss/layer{i + 1}"] = -(torch.log(p_pos + eps).mean() + torch.log(1 - p_neg + eps).mean())
        metrics[f"pair_error/layer{i + 1}"] = (p_neg > p_pos).float().mean()
        return signal

    def _readout_grads(self, states: list[torch.Tensor], y: torch.Tensor, metrics: dict):
        """Descent gradients of the readout's mean cross-entropy, and its logits (no FF layer is touched)."""
        normed = [normalize_rows(s) for s in states[self.readout_from:]]
        logits = sum(h @ w for h, w in zip(normed, self.readout))  # (B, C)
        delta = (torch.softmax(logits, 1) - F.one_hot(y, self.num_classes)) / len(y)
        metrics["readout_loss"] = F.cross_entropy(logits, y)
        metrics["readout_error"] = (logits.argmax(1) != y).float().mean()
        return logits, [h.T @ delta for h in normed]

    def _negative_labels(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sample_wrong_labels(logits, y, self.num_classes, self.cfg.negatives, self.generator)

    def _upper_layer_grads(self, h: torch.Tensor, start: int, batch: int, metrics: dict, grads: list):
        """FF updates of layers start.. from their inputs h (2B, D) (rows [0, B) positive); returns states."""
        all_states = []
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            states = self._layer_states(layer, h)
            signal = self._signal(i, states, batch, metrics)
            grads.append(layer_descent_grads(layer, h, signal, batch, self.product_dtype))
            all_states.append(states)
            if i + 1 < len(self.layers):
                h = self._next_input(i, states)
        return all_states

    @torch.no_grad()
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """One FF step on inputs x (B, D); y trains only the readout (and picks negatives when supervised)."""
        metrics: dict[str, torch.Tensor] = {}
        B = len(x)
        grads: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.supervised:
            label_grad, readout_grads = self._supervised_step(x, y, metrics, grads)
        elif B < 2:
            # a hybrid needs a second image of the batch: a last batch of one image (training set
            # size = 1 mod batch size) trains only the readout; the FF layers skip it
            label_grad = None
            _, readout_grads = self._readout_grads(self.forward_states(x), y, metrics)
        else:
            label_grad = None
            c = self.cfg.image_channels
            side = round((x.shape[1] / c) ** 0.5)
            x_neg = hybrid_negatives(x, self.generator, side, self.cfg.blur_steps, channels=c)
            states = self._upper_layer_grads(normalize_rows(torch.cat([x, x_neg])), 0, B, metrics, grads)
            _, readout_grads = self._readout_grads([s[:B] for s in states], y, metrics)  # positive pass only
        for w, g in zip(self.readout, readout_grads):
            w.grad = g
        if not grads:  # no FF update this step: only the readout's optimizer steps
            self.optimizers[1].step()
            return metrics
        for layer, (gw, gb) in zip(self.layers, grads):
            layer.weight.grad, layer.bias.grad = gw, gb
        if label_grad is not None:
            self.label_weight.grad = label_grad
        for opt in self.optimizers:
            opt.step()
        return metrics

    def _supervised_step(self, x, y, metrics, grads):
        """Neutral pass -> readout and hard negatives; then the positive and negative passes."""
        B, s = len(x), self.cfg.label_strength
        u, sq = self._image_part(x)  # (B, U1): the image part, shared by the three passes
        neutral = self.states_from_first(self._z1(u, sq, None)[0])
        logits, readout_grads = self._readout_grads(neutral, y, metrics)
        y_neg = self._negative_labels(logits, y)
        z_pos, r = self._z1(u, sq, y)
        z_neg, _ = self._z1(u, sq, y_neg)  # same r: every one-hot label adds s^2 to the row
        states = activate(torch.cat([z_pos, z_neg]), self.cfg.activation)  # (2B, U1)
        signal = self._signal(0, states, B, metrics)
        # the image part of the input row, x * r, is the same for positive and negative data
        gw, _ = layer_descent_grads(self.layers[0], x * r, signal[:B] + signal[B:], B, self.product_dtype)
        grads.append((gw, signal.sum(0).neg_().div_(B)))
        label_grad = torch.zeros_like(self.label_weight)
        label_grad.index_add_(0, y, s * r * signal[:B]).index_add_(0, y_neg, s * r * signal[B:])
        label_grad.neg_().div_(B)
        if len(self.layers) > 1:
            self._upper_layer_grads(self._next_input(0, states), 1, B, metrics, grads)
        return label_grad, readout_grads

    # ------------------------------------------------------------------------------------------
    # Test procedures
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C): goodness summed over layers goodness_from..L for each label (layer 1's
        image part computed once)."""
        N, C = len(images), self.num_classes
        u, sq = self._image_part(images)  # (N, U1), computed once for the C labels
        r = inverse_rms(sq + self.cfg.label_strength**2, self.input_dim + C)[:, None]  # (N, 1, 1)
        z1 = (u[:, None, :] + self.cfg.label_strength * self.label_weight[None]) * r + self.layers[0].bias
        states = self.states_from_first(z1.reshape(N * C, -1))  # row n*C + k: image n with label k
        scores = sum(s.square().sum(1) for s in states[self.goodness_from:])
        return self._sign * scores.reshape(N, C)

    @torch.no_grad()
    def softmax_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C): one pass (neutral label when supervised) into the linear softmax."""
        return self.readout_logits(self.forward_states(images, None))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = {"error_softmax": (self.predict_batches(self.softmax_logits, x, 500).argmax(1) != y).float().mean().item()}
        if self.supervised:
            good = self.predict_batches(self.goodness_scores, x, chunk=100)
            out["error_goodness"] = (good.argmax(1) != y).float().mean().item()
        return out
