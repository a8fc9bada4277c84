"""Recurrent Forward-Forward (Hinton 2022, sec. 4): a static MNIST image treated as a video.

The net (`nets/recurrent.py`) starts with one bottom-up pass and then runs synchronous damped
iterations in which every hidden layer sees the normalized activities of the layers below and
above at the previous step; the label is the clamped top layer. Each layer at each trained
iteration t has the FF objective on its own (damped) state h_l(t): high goodness when the clamped
label is right, low when it is wrong. Its update uses only what the layer saw:

    dC/dz_l(t) = (1 - damping) f'(z_l(t)) * [ff_layer_signal of h_l(t)]     (old state held fixed)
    dW_up_l   += norm(h_{l-1}(t-1))^T dC,   dW_down_l += norm(h_{l+1}(t-1))^T dC

averaged over the trained iterations; no derivative crosses a layer or a time step. Each weight's
sum over iterations is one product: the inputs and signals of all trained iterations are stacked
along the batch dimension, (T 2B, H_in)^T @ (T 2B, H_l).

Negative data: the same image with a wrong label chosen in proportion to the predicted
probabilities of the wrong classes; the prediction is a linear softmax on the normalized
activities of the label-free bottom-up pass (trained alongside, like ffnew.m's readout).
Test: run the net with each label clamped and pick the label whose goodness, summed over the
hidden layers and averaged over iterations 3-5, is highest; or the bottom-up softmax (faster).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mortalnet.config import ConfigError
from mortalnet.nets.ff import activate, activation_slope, normalize_rows, product
from mortalnet.nets.recurrent import RecurrentFFNet
from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules import register_rule
from mortalnet.rules.base import Learner, check_widths
from mortalnet.rules.ff_passes import ff_layer_signal, goodness_sign, sample_wrong_labels
from mortalnet.rules.forward_forward import FFObjectiveConfig


@dataclass(frozen=True)
class FFRecurrentConfig(FFObjectiveConfig):
    """Recurrent FF hyper-parameters (the FF defaults are ffnew.m's; the dynamics the paper's sec. 4).
    Peer normalization's running means are updated once per trained iteration."""

    damping: float = 0.3
    """New state = damping * old + (1 - damping) * computed (paper: 0.3 old + 0.7 new)."""
    iterations: int = 8
    """Synchronous iterations after the bottom-up pass (paper: 8)."""
    train_from: int = 1
    """First iteration whose states get the FF objective during training (1 = all of them)."""
    test_from: int = 3
    """First iteration of the goodness average in the per-label test (paper: 3)."""
    test_to: int = 5
    """Last iteration of the goodness average in the per-label test (paper: 5)."""
    negatives: Literal["hard", "random"] = "hard"
    """hard: wrong label in proportion to the predicted probabilities; random: uniform wrong label."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Matrix products (the iterations' total inputs, the weight updates, the test) in float32, or in bfloat16: bf16 copies of the weights, made once per step, times bf16 activities, fp32 accumulation inside each product; weights, states, signals and the rest stay float32."""


@register_rule("ff-recurrent")
class FFRecurrentLearner(Learner):
    """Recurrent FF with a clamped label on top (see the module docstring).

    Args:
        config: hyper-parameters.
        hidden: hidden widths (the paper: 2 or 3 layers of 2000).
        input_dim, num_classes, seed, device: as for every rule.
    """

    Config = FFRecurrentConfig
    primary_metric = "error_goodness"

    def __init__(self, config: FFRecurrentConfig = FFRecurrentConfig(), hidden: tuple[int, ...] = (2000, 2000),
                 input_dim: int = 784, num_classes: int = 10, seed: int = 0, device: torch.device | str = "cpu"):
        super().__init__(seed, device)
        hidden = check_widths(hidden)
        if not 1 <= config.test_from <= config.test_to <= config.iterations:
            raise ConfigError(f"need 1 <= test_from <= test_to <= iterations, got {config.test_from}, "
                              f"{config.test_to}, {config.iterations}")
        if not 1 <= config.train_from <= config.iterations:
            raise ConfigError(f"train_from must be in 1..iterations, got {config.train_from}")
        self.cfg = config
        self.product_dtype = torch.bfloat16 if config.precision == "bfloat16" else torch.float32
        self.num_classes = num_classes
        self._sign = goodness_sign(config.goodness)
        self.net = RecurrentFFNet(input_dim, tuple(hidden), num_classes, config.damping, config.label_strength,
                                  config.activation, self.generator, self.device_)
        self.readout = torch.nn.ParameterList(
            torch.nn.Parameter(torch.zeros(h, num_classes, device=self.device_), requires_grad=False) for h in hidden
        )
        for i, h in enumerate(hidden):
            self.register_buffer(f"mean_states_{i}", torch.full((h,), 0.5, device=self.device_))
        net = self.net
        self.optimizers = [
            make_optimizer(config.optimizer, [*net.up, *net.down], list(net.bias)),
            make_optimizer(config.optimizer, list(self.readout), lr=config.readout_lr,
                           weight_decay=config.readout_weight_cost),
        ]

    @classmethod
    def quick_config(cls) -> FFRecurrentConfig:
        """A 3x larger learning rate and 4 iterations: small nets learn in a few epochs."""
        return FFRecurrentConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9,
                                                           weight_decay=0.001), iterations=4, test_from=2, test_to=4)

    # ------------------------------------------------------------------------------------------
    def damped_signal(self, i: int, h: torch.Tensor, z: torch.Tensor, batch: int, metrics: dict) -> torch.Tensor:
        """dC/dz (2B, H) of layer i whose damped state h = a h_old + (1 - a) f(z) is judged by FF."""
        cfg = self.cfg
        signal, p_pos, p_neg = ff_layer_signal(h, batch, cfg.threshold_per_unit * h.shape[1], cfg.temperature,
                                               sign=self._sign)  # (coef * h): dG/dh direction
        slope = (z > 0).to(h.dtype) if cfg.activation == "relu" else activation_slope(
            activate(z, cfg.activation), cfg.activation)
        signal = signal * slope * (1.0 - cfg.damping)
        if cfg.peer_norm:
            m = getattr(self, f"mean_states_{i}")
            m.mul_(cfg.peer_decay).add_(h[:batch].mean(0), alpha=1.0 - cfg.peer_decay)
            signal[:batch] += cfg.peer_norm * (m.mean() - m)  # revives dead units (not gated)
        eps = 1e-7
        loss = -(torch.log(p_pos + eps).mean() + torch.log(1 - p_neg + eps).mean())
        key = f"ff_loss/layer{i + 1}"
        metrics[key] = metrics.get(key, 0.0) + loss
        key = f"pair_error/layer{i + 1}"
        metrics[key] = metrics.get(key, 0.0) + (p_neg > p_pos).float().mean()
        return signal

    def _readout(self, states: list[torch.Tensor]) -> torch.Tensor:
        return sum(normalize_rows(s) @ w for s, w in zip(states, self.readout))

    def _negative_labels(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sample_wrong_labels(logits, y, self.num_classes, self.cfg.negatives, self.generator)

    @torch.no_grad()
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        cfg, net = self.cfg, self.net
        B, L = len(x), len(net.bias)
        metrics: dict[str, torch.Tensor] = {}
        weights = net.product_weights(self.product_dtype)  # bf16 copies: once per step, for all iterations
        # step 0: label-free bottom-up pass -> readout update and negative labels
        image_in = net.image_input(x, weights)  # (B, H1)
        init = net.bottom_up(image_in, weights)
        normed = [normalize_rows(s) for s in init]
        logits = sum(h @ w for h, w in zip(normed, self.readout))  # (B, C)
        delta = (torch.softmax(logits, 1) - F.one_hot(y, self.num_classes)) / B
        readout_grads = [h.T @ delta for h in normed]
        metrics["readout_loss"] = F.cross_entropy(logits, y)
        metrics["readout_error"] = (logits.argmax(1) != y).float().mean()
        y_neg = self._negative_labels(logits, y)

        # positive (rows [0, B)) and negative (rows [B, 2B)) videos share the bottom-up start
        image_in2 = torch.cat([image_in, image_in])
        label_top = torch.cat([net.label_layer(y), net.label_layer(y_neg)])  # (2B, C)
        states = [torch.cat([s, s]) for s in init]
        # per layer, what each trained iteration's products saw and its signal: [(2B, H_in)], [(2B, H_l)]
        below_seen: list[list[torch.Tensor]] = [[] for _ in range(L)]
        above_seen: list[list[torch.Tensor]] = [[] for _ in range(L)]
        signals: list[list[torch.Tensor]] = [[] for _ in range(L)]
        g_b = [torch.zeros_like(b) for b in net.bias]
        image_signal = torch.zeros_like(image_in)  # sum over steps and pos/neg rows of layer 1's signal
        trained = 0
        for t in range(1, cfg.iterations + 1):
            new, z, seen = net.step(image_in2, label_top, states, weights)
            if t >= cfg.train_from:
                trained += 1
                for l in range(L):
                    sig = self.damped_signal(l, new[l], z[l], B, metrics)  # (2B, H_l)
                    below, above = seen[l]
                    if l == 0:
                        image_signal += sig[:B] + sig[B:]
                    else:
                        below_seen[l].append(below)
                    above_seen[l].append(above)
                    signals[l].append(sig)
                    g_b[l] += sig.sum(0)
            states = new
        # sum over trained iterations of input^T @ signal, one product per weight: (H_in, T 2B) @ (T 2B, H_l)
        dtype = self.product_dtype
        sig_all = [torch.cat(s).to(dtype) for s in signals]
        g_up = [product(normalize_rows(x).T, image_signal.to(dtype))]  # the image row is the same at every step
        g_up += [product(torch.cat(below_seen[l]).T, sig_all[l]) for l in range(1, L)]
        g_down = [product(torch.cat(above_seen[l]).T, sig_all[l]) for l in range(L)]
        scale = -1.0 / (B * trained)  # descent convention, mean over examples and trained steps
        for w, g in zip([*net.up, *net.down, *net.bias], [*g_up, *g_down, *g_b]):
            w.grad = g.mul_(scale)
        for w, g in zip(self.readout, readout_grads):
            w.grad = g
        for opt in self.optimizers:
            opt.step()
        return {k: (v / trained if k.startswith(("ff_loss", "pair_error")) else v) for k, v in metrics.items()}

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def goodness_by_step(self, images: torch.Tensor, steps: int) -> torch.Tensor:
        """(N, D) -> (N, C, steps): goodness summed over hidden layers at steps 1..steps, each label clamped."""
        net, C = self.net, self.num_classes
        N = len(images)
        weights = net.product_weights(self.product_dtype)
        image_in = net.image_input(images, weights)  # computed once for the C labels
        init = net.bottom_up(image_in, weights)
        image_in = image_in.repeat_interleave(C, 0)  # row n*C + k: image n with label k
        states = [s.repeat_interleave(C, 0) for s in init]
        labels = torch.arange(C, device=images.device).repeat(N)
        label_top = net.label_layer(labels)
        out = []
        for _ in range(steps):
            states, _, _ = net.step(image_in, label_top, states, weights)
            out.append(self._sign * sum(s.square().sum(1) for s in states))
        return torch.stack(out, 1).reshape(N, C, steps)

    @torch.no_grad()
    def goodness_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C): goodness averaged over iterations test_from..test_to (paper: 3-5)."""
        g = self.goodness_by_step(images, self.cfg.test_to)
        return g[:, :, self.cfg.test_from - 1 : self.cfg.test_to].mean(2)

    @torch.no_grad()
    def softmax_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C): the linear softmax on the label-free bottom-up pass."""
        weights = self.net.product_weights(self.product_dtype)
        return self._readout(self.net.bottom_up(self.net.image_input(images, weights), weights))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        good = self.predict_batches(self.goodness_scores, x, chunk=100)
        soft = self.predict_batches(self.softmax_logits, x)
        return {
            "error_goodness": (good.argmax(1) != y).float().mean().item(),
            "error_softmax": (soft.argmax(1) != y).float().mean().item(),
        }
