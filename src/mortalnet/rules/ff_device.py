"""Forward-Forward on mortal hardware (Hinton 2022, sec. 2-3; ffnew.m), through the device interface only.

The FF layers are analog device layers (`mortalnet.hardware`). Per training step, for each layer
with normalized input h (2B, n) -- positive rows then negative rows -- the learner
  1. sends h through the device and *measures* the layer's activities s (2B, m);
  2. computes the layer's FF signal from s alone (`ff_layer_signal`: goodness = sum s^2,
     p = sigmoid((G - theta) / temp), dC = (1 - p) s on positive rows, -p s on negative rows);
     the device's true nonlinearity is unknown, so s stands in for d(goodness)/d(input) / 2;
  3. forms the layer's gradient from its measured input and output, -h^T dC / B, and keeps the
     optimizer's state (smoothed gradients, weight cost on the nominal weights) digitally;
  4. REQUESTS the resulting weight change; the device applies its own noisy, quantized version.
The learner normalizes every layer's measured output digitally before the next layer (ffnew.m's
row normalization), and the linear softmax readout is digital. No derivative crosses a layer or
a device: there is no model of the hardware anywhere in this file.

The learner keeps a digital copy of its *nominal* weights (what it asked for; the optimizer's
parameters). It never sees conductances; checkpoints carry the device's physical state as a
sealed blob that only the same instance can take back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.hardware import OpCounts, create_device
from mortalnet.nets.ff import embed_label, neutral_label, normalize_rows, one_hot
from mortalnet.optim import make_optimizer
from mortalnet.rules import register_rule
from mortalnet.rules.base import Learner, check_widths
from mortalnet.rules.ff_passes import ff_layer_signal, sample_wrong_labels
from mortalnet.rules.forward_forward import FFConfig, FFLearner


@dataclass(frozen=True)
class FFDeviceConfig:
    """Forward-Forward trained on the layers of a simulated analog device."""

    ff: FFConfig = field(default_factory=FFConfig)
    """FF hyper-parameters (ffnew.m defaults); ff.fast is ignored: every pass goes through the device."""
    hardware: str = "mild"
    """Device preset the FF layers live on (see mortalnet.hardware.list_devices())."""
    device_seed: int = -1
    """Which physical instance (seed of the device); -1 = the learner's seed."""
    accumulate: bool = True
    """Mixed-precision updates: keep wanted-but-unrequested changes digitally (error feedback), request whole pulses."""
    label_row_gain: float = 4.0
    """Weight-range multiplier of layer 1's label-pixel rows (driven harder by design: FF's label weights grow ~4x larger)."""


@register_rule("forward-forward-device")
class FFDeviceLearner(Learner):
    """A supervised FF network whose hidden layers are layers of one mortal device.

    Args:
        config: FF and device settings.
        hidden: widths of the hidden (device) layers.
        input_dim: pixels per image including the label pixels.
        num_classes: number of labels; the first `num_classes` pixels carry the label.
        seed: initial weights and negative sampling (and the device, unless config.device_seed >= 0).
        device: torch device of the simulation.
        hardware: an existing `mortalnet.hardware.Device` to train on (its shapes must fit);
            default: a new one from config.hardware and the device seed.
    """

    Config = FFDeviceConfig
    primary_metric = "error_goodness"

    def __init__(
        self,
        config: FFDeviceConfig = FFDeviceConfig(),
        hidden: tuple[int, ...] = (1000, 1000, 1000),
        input_dim: int = 784,
        num_classes: int = 10,
        seed: int = 0,
        device: torch.device | str = "cpu",
        hardware=None,
    ) -> None:
        super().__init__(seed, device)
        hidden = check_widths(hidden)
        ff = config.ff
        if not hidden:
            raise ConfigError("an FF network needs at least one hidden layer")
        if ff.precision != "float32" or ff.compile_update or ff.test_precision != "same":
            raise ConfigError("rule.ff.precision, rule.ff.compile_update and rule.ff.test_precision choose the "
                              "digital fast path's products; on a device every product is the device's own: "
                              "leave them at float32 / false / same")
        ignored = {"goodness": ("sum-squares", "the device's goodness is the sum of squared measured activities"),
                   "activation": ("relu", "the nonlinearity is the device's own, hidden from the learner"),
                   "readout": (True, "the hard negatives come from the readout"),
                   "goodness_shortlist": (0, "the device test scores all labels")}
        changed = [f"rule.ff.{k}={getattr(ff, k)!r} ({why})" for k, (default, why) in ignored.items()
                   if getattr(ff, k) != default]
        if changed:
            raise ConfigError("forward-forward-device does not support " + "; ".join(changed) +
                              ": leave these at their defaults")
        if not 0 <= ff.readout_from < len(hidden) or ff.goodness_from >= len(hidden):
            raise ConfigError(f"readout_from={ff.readout_from} / goodness_from={ff.goodness_from} must index one "
                              f"of the {len(hidden)} hidden layers")
        self.cfg, self.ff, self.num_classes = config, ff, num_classes
        self.hidden = tuple(hidden)
        dims = (input_dim, *hidden)
        self.shapes = tuple(zip(dims[:-1], dims[1:]))
        dev = self.device_
        # the learner's digital record of its nominal weights, initialized like nets.ff.FFDense
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(a, b, generator=self.generator, device=dev) / a**0.5, requires_grad=False)
            for a, b in self.shapes
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(b, device=dev), requires_grad=False) for b in hidden)
        self.readout = nn.ParameterList(
            nn.Parameter(torch.zeros(h, num_classes, device=dev), requires_grad=False) for h in hidden[ff.readout_from:]
        )
        for i, h in enumerate(hidden):
            self.register_buffer(f"mean_states_{i}", torch.full((h,), 0.5, device=dev))
        # digital work of the learner itself while training (fp32 MACs)
        self.register_buffer("learner_macs", torch.zeros((), dtype=torch.float64, device=dev))
        self.last_eval_counts = OpCounts()  # device work of the latest evaluate() (not part of the state)
        # mixed precision (Nandakumar et al. 2020): wanted but not yet requested changes per layer,
        # and each weight's fixed rounding threshold in [0, 1) (own stream: the main generator
        # draws the same initial weights and negatives as the digital FF rule)
        dither_gen = torch.Generator(device=dev).manual_seed(seed + 104729)
        for i, (a, b) in enumerate(self.shapes):
            self.register_buffer(f"pending_w_{i}", torch.zeros(a, b, device=dev))
            self.register_buffer(f"pending_b_{i}", torch.zeros(b, device=dev))
            self.register_buffer(f"dither_w_{i}", torch.rand(a, b, generator=dither_gen, device=dev))
            self.register_buffer(f"dither_b_{i}", torch.rand(b, generator=dither_gen, device=dev))
        self.optimizers = [
            make_optimizer(ff.optimizer, list(self.weights), list(self.biases)),
            make_optimizer(ff.optimizer, list(self.readout), lr=ff.readout_lr, weight_decay=ff.readout_weight_cost),
        ]
        if hardware is None:
            hardware = self.make_hardware(seed if config.device_seed < 0 else config.device_seed)
        self.attach(hardware)

    @classmethod
    def quick_config(cls) -> FFDeviceConfig:
        """FF's quick recipe (3x learning rate) on the ideal device: a check of the rule itself.

        (The 48-unit layers of the generic rules test drown in mild's output noise, which is
        relative to the full-scale current; tests/test_hardware_ff.py trains on mild and harsh.)
        """
        return FFDeviceConfig(ff=FFLearner.quick_config(), hardware="ideal")

    # ------------------------------------------------------------------------------------------
    # The device
    # ------------------------------------------------------------------------------------------
    def make_hardware(self, device_seed: int, preset: str | None = None):
        """A new device instance laid out for this network (label rows of layer 1 driven at
        config.label_row_gain): instance `device_seed` of `preset` (default config.hardware)."""
        gains = [[self.cfg.label_row_gain] * self.num_classes + [1.0] * (self.shapes[0][0] - self.num_classes)]
        gains += [None] * (len(self.shapes) - 1)
        return create_device(preset or self.cfg.hardware, self.shapes, seed=device_seed, torch_device=self.device_,
                             row_gains=gains)

    def attach(self, hardware, program: bool = True) -> None:
        """Train/test on `hardware` from now on; program the nominal weights onto it unless
        program=False (e.g. when re-attaching the instance that already holds them)."""
        shapes = tuple(tuple(s) for s in hardware.shapes)
        if shapes != self.shapes:
            raise ValueError(f"device layers {shapes} do not fit this network's layers {self.shapes}")
        self.hardware = hardware
        if program:
            hardware.program(self.nominal_weights())

    def nominal_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The learner's nominal (weight (in, out), bias (out,)) per layer: what may be copied."""
        return [(w.detach().clone(), b.detach().clone()) for w, b in zip(self.weights, self.biases)]

    def mean_states(self, i: int) -> torch.Tensor:
        return getattr(self, f"mean_states_{i}")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = super().state_tensors()
        out["hardware.sealed"] = self.hardware.export_state()  # opaque; only this instance can read it
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        if "hardware.sealed" in tensors:
            self.hardware.restore_state(tensors["hardware.sealed"])

    # ------------------------------------------------------------------------------------------
    # Passes through the device
    # ------------------------------------------------------------------------------------------
    def _measured_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Input rows (N, D) -> every device layer's measured activities (N, H_l)."""
        h = normalize_rows(x)
        states = []
        for layer in self.hardware.layers:
            s = layer.forward(h)  # measured, (N, H_l)
            states.append(s)
            h = normalize_rows(s)
        return states

    def _readout_logits(self, normed: list[torch.Tensor]) -> torch.Tensor:
        logits = None
        for w, h in zip(self.readout, normed[self.ff.readout_from:]):
            logits = h @ w if logits is None else logits + h @ w
        return logits  # (N, C)

    def _negative_labels(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A wrong label per row, from softmax(logits) with the true label masked (ffnew.m), or uniform."""
        return sample_wrong_labels(logits, y, self.num_classes, self.ff.negatives, self.generator)

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """One FF step on images x (B, D) with labels y (B,), every pass through the device."""
        ff, C = self.ff, self.num_classes
        B, s = len(y), ff.label_strength
        metrics: dict[str, torch.Tensor] = {}
        macs = 0
        # --- neutral pass: digital softmax readout on measured activities -> hard negatives ----------
        normed = [normalize_rows(st) for st in self._measured_states(embed_label(x, neutral_label(B, s, C, x.device)))]
        logits = self._readout_logits(normed)
        delta = (torch.softmax(logits, 1) - F.one_hot(y, C)) / B  # d(mean CE)/d logits, (B, C)
        for w, h in zip(self.readout, normed[ff.readout_from:]):
            w.grad = h.T @ delta  # (H, C)
            macs += 2 * h.numel() * C  # logits and gradient
        metrics["readout_loss"] = F.cross_entropy(logits, y)
        metrics["readout_error"] = (logits.argmax(1) != y).float().mean()
        y_neg = self._negative_labels(logits, y)
        # --- positive and negative rows through the device, layer by layer --------------------------
        h = normalize_rows(torch.cat([embed_label(x, one_hot(y, s, C)), embed_label(x, one_hot(y_neg, s, C))]))
        eps = 1e-7
        for i, (layer, w, b) in enumerate(zip(self.hardware.layers, self.weights, self.biases)):
            states = layer.forward(h)  # measured activities (2B, H)
            signal, p_pos, p_neg = ff_layer_signal(
                states, B, ff.threshold_per_unit * states.shape[1], ff.temperature,
                self.mean_states(i), ff.peer_norm, ff.peer_decay,
            )
            w.grad = (h.T @ signal).neg_().div_(B)  # (n, H): from the layer's measured input and output only
            b.grad = signal.sum(0).neg_().div_(B)
            macs += h.numel() * states.shape[1] + 3 * w.numel()  # outer product + optimizer arithmetic
            metrics[f"ff_loss/layer{i + 1}"] = -(torch.log(p_pos + eps).mean() + torch.log(1 - p_neg + eps).mean())
            metrics[f"pair_error/layer{i + 1}"] = (p_neg > p_pos).float().mean()
            h = normalize_rows(states)
        # --- digital optimizer on the nominal weights, then requests to the device -------------------
        before = [(w.clone(), b.clone()) for w, b in zip(self.weights, self.biases)]
        for opt in self.optimizers:
            opt.step()
        for i, (layer, w, b, (w0, b0)) in enumerate(zip(self.hardware.layers, self.weights, self.biases, before)):
            dw, db = w - w0, b - b0
            step_w, step_b = layer.nominal_steps()  # (n, 1) per input row, and the bias step
            if self.cfg.accumulate and step_b > 0:
                dw = self._whole_pulses(getattr(self, f"pending_w_{i}"), getattr(self, f"dither_w_{i}"), dw, step_w)
                db = self._whole_pulses(getattr(self, f"pending_b_{i}"), getattr(self, f"dither_b_{i}"), db, step_b)
            layer.request_update(dw, db)
        self.learner_macs += macs
        return metrics

    @staticmethod
    def _whole_pulses(pending: torch.Tensor, dither: torch.Tensor, delta: torch.Tensor,
                      step: torch.Tensor | float) -> torch.Tensor:
        """Error feedback with a fixed random threshold per weight: add delta to the accumulator,
        request its whole steps rounded at that weight's threshold, keep the rest.

        The requested sum never strays more than one step from the wanted sum (no random walk of
        the device away from the nominal weights), the thresholds differ between weights (so the
        device's lag behind the nominal weights is not aligned with the updates, as it would be
        with plain truncation), and a weight whose wanted change hovers around zero does not
        chatter up and down (as it would if the rounding were re-drawn every step).
        """
        pending += delta
        request = torch.floor(pending / step + dither) * step
        pending -= request
        return request

    # ------------------------------------------------------------------------------------------
    # Test procedures
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C): measured goodness summed over layers goodness_from..L, per label."""
        B, C = len(images), self.num_classes
        labels = torch.arange(C, device=images.device).repeat(B)  # row b*C + k: image b, label k
        x = embed_label(images.repeat_interleave(C, 0), one_hot(labels, self.ff.label_strength, C))
        states = self._measured_states(x)
        return sum(st.square().sum(1) for st in states[self.ff.goodness_from:]).reshape(B, C)

    @torch.no_grad()
    def softmax_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C): one neutral-label pass through the device into the digital softmax."""
        x = embed_label(images, neutral_label(len(images), self.ff.label_strength, self.num_classes, images.device))
        return self._readout_logits([normalize_rows(st) for st in self._measured_states(x)])

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Both test procedures. Evaluation leaves the device's noise stream and counters as they
        were (Device.isolated), so validation does not change training; its cost is kept in
        `last_eval_counts`."""
        with self.hardware.isolated() as spent:
            good = self.predict_batches(self.goodness_scores, x, chunk=200)
            soft = self.predict_batches(self.softmax_logits, x)
        self.last_eval_counts = spent
        return {
            "error_goodness": (good.argmax(1) != y).float().mean().item(),
            "error_softmax": (soft.argmax(1) != y).float().mean().item(),
        }
