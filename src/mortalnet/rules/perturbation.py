"""Shared machinery of the perturbation rules: layers seen as black boxes, and the estimators.

Every rule in this family sees a network only through the device interface
(`mortalnet.hardware.interface.AnalogLayer`): forward passes that return measured activities,
perturbation vectors added to a layer's total inputs, and requested weight changes. A layer is
either a `DigitalLayer` (exact float arithmetic behind that same interface) or a layer of a
simulated analog device; the estimators below cannot tell them apart and never differentiate
through either (a `DigitalLayer` refuses inputs that carry a derivative, like a device).

Estimators (finite differences through forward passes; Werfel, Xie & Seung 2005; Ren, Kornblith,
Liao & Hinton 2023, sec. 3). With u ~ N(0, I) and scale sigma, the antithetic difference
    d = (L(theta + sigma u) - L(theta - sigma u)) / (2 sigma)  ~=  u . dL/dtheta
gives the estimate g = d u, unbiased up to O(sigma^2) since E[u u^T] = I.
  * weight perturbation: theta = every weight and bias, one u shared by the minibatch; the
    perturbation of layer l's weights is applied as its effect on the total inputs, x_l E_l + e_l,
    which is what perturbing the weights does to a crossbar (no write cycles needed).
    Relative variance E|g - grad|^2 / |grad|^2 ~= N_w + 1 for N_w weights and biases and one
    direction (g = (u . grad) u; Werfel et al.), whatever the batch size: the whole minibatch
    shares u, so nothing averages over its examples. (Ren et al.'s (pq+2)/N V, with a 1/N in the
    batch size, is for independent perturbations per example, which this estimator does not draw.)
  * activity (node) perturbation: theta = each neuron's total input z, one u per example, so each
    example gives its own d_b; dL/dW_l = x_l^T dL/dz_l / B uses the layer's measured input x_l.
    Variance ~ number of perturbed neurons, and it does average over the minibatch's examples
    (independent u per example: Ren et al.'s (q+2)/N V).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.hardware.energy import OpCounts
from mortalnet.hardware.interface import AnalogLayer, check_no_derivative
from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules.base import Learner

Activation = Literal["relu", "linear"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (N, C) logits, (N,) labels -> (N,)


@dataclass(frozen=True)
class PerturbationConfig:
    """What every perturbation rule shares: the optimizer of its gradient estimates, how it perturbs, and
    what hardware its layers are."""

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3, momentum=0.9))
    """Optimizer applied to the gradient estimates (the shared ones: smoothed-sgd, sgd, adam, adamw)."""
    sigma: float = 1e-3
    """Perturbation scale: each perturbed variable (a weight, or a neuron's total input) moves by sigma * N(0, 1)."""
    directions: int = 1
    """Perturbations averaged per step, each a +/- pair of forward passes: per minibatch for weight
    perturbation, per example for activity perturbation and local losses."""
    antithetic: bool = True
    """Central differences from +/- pairs; False: one-sided differences against the clean pass."""
    hardware: str = "digital"
    """What the layers are: 'digital' or a device preset (ideal, mild, harsh)."""
    hardware_seed: int = 0
    """Which physical device instance (device presets only)."""


# ----------------------------------------------------------------------------------------------
# A digital layer behind the device interface
# ----------------------------------------------------------------------------------------------
class DigitalLayer(nn.Module):
    """y = act(x W + b): the exact digital counterpart of an analog layer, same interface.

    Weights are buffers (in, out), never autograd leaves, and an input a derivative could be taken
    through (requires grad, a forward-mode tangent, a torch.func transform) is refused with
    `NoGradientError`, as a physical device would: no derivative can flow through.
    """

    def __init__(self, in_features: int, out_features: int, activation: Activation = "relu", device=None):
        super().__init__()
        if activation not in ("relu", "linear"):
            raise ConfigError(f"activation must be 'relu' or 'linear', got {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.register_buffer("weight", torch.zeros(in_features, out_features, device=device))  # (in, out)
        self.register_buffer("bias", torch.zeros(out_features, device=device))  # (out,)

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        input_perturbation: torch.Tensor | None = None,
        total_input_perturbation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, in) -> (B, out) activities; perturbations (B, in) / (B, out) are added before use."""
        for name, t in (("x", x), ("input_perturbation", input_perturbation),
                        ("total_input_perturbation", total_input_perturbation)):
            check_no_derivative(name, t)  # no reverse-mode, forward-mode or torch.func derivative, as a device
        _check_shape("x", x, (None, self.in_features))
        x = x.detach()
        if input_perturbation is not None:
            _check_shape("input_perturbation", input_perturbation, tuple(x.shape))
            x = x + input_perturbation.detach()
        z = torch.addmm(self.bias, x, self.weight)  # (B, out) total inputs
        if total_input_perturbation is not None:
            _check_shape("total_input_perturbation", total_input_perturbation, tuple(z.shape))
            z = z + total_input_perturbation.detach()
        return torch.relu(z) if self.activation == "relu" else z

    @torch.no_grad()
    def request_update(self, delta_weight: torch.Tensor, delta_bias: torch.Tensor | None = None) -> None:
        """W += delta_weight (in, out); b += delta_bias (out,). Exact: a digital write is perfect."""
        _check_shape("delta_weight", delta_weight, tuple(self.weight.shape))
        self.weight.add_(delta_weight)
        if delta_bias is not None:
            _check_shape("delta_bias", delta_bias, tuple(self.bias.shape))
            self.bias.add_(delta_bias)

    def nominal_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of W (in, out) and b (out,)."""
        return self.weight.clone(), self.bias.clone()

    def nominal_steps(self) -> tuple[torch.Tensor, float]:
        """Weight change of one write pulse: none, a digital layer is written exactly (zeros, as for
        a device with continuous cells)."""
        return torch.zeros(self.weight.shape[0], 1, device=self.weight.device), 0.0

    @torch.no_grad()
    def program(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set W and b."""
        _check_shape("weight", weight, tuple(self.weight.shape))
        _check_shape("bias", bias, tuple(self.bias.shape))
        self.weight.copy_(weight)
        self.bias.copy_(bias)


def _check_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if t.dim() != len(shape) or any(s is not None and a != s for a, s in zip(t.shape, shape)):
        want = "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {want}")


# ----------------------------------------------------------------------------------------------
# Building the layers of a network: digital, or a simulated device
# ----------------------------------------------------------------------------------------------
def build_layers(
    hardware: str,
    dims: Sequence[int],
    activations: Sequence[Activation],
    seed: int,
    device: torch.device | str = "cpu",
):
    """Layers dims[0] -> dims[1] -> ... as `hardware` provides them.

    Args:
        hardware: 'digital' (`DigitalLayer`s) or a registered device preset ('ideal', 'mild',
            'harsh'): one physical instance made by `mortalnet.hardware.create_device`.
        dims: widths, input first.
        activations: 'relu' or 'linear' per layer.
        seed: which device instance (device presets only).
        device: torch device of the tensors.

    Returns:
        (layers, handle): the layers (input to output) and the device handle (None if digital).
    """
    if len(activations) != len(dims) - 1:
        raise ConfigError(f"{len(dims) - 1} layers need {len(dims) - 1} activations, got {len(activations)}")
    if hardware == "digital":
        return [DigitalLayer(a, b, act, device) for a, b, act in zip(dims[:-1], dims[1:], activations)], None
    from mortalnet.hardware import DEVICES, create_device

    if hardware not in DEVICES.names():
        raise ConfigError(f"unknown hardware {hardware!r}; valid: digital, {', '.join(DEVICES.names())}")
    handle = create_device(hardware, list(zip(dims[:-1], dims[1:])), seed, activation=list(activations),
                           torch_device=device)
    return list(handle.layers), handle


def forward_layers(
    layers: Sequence[AnalogLayer],
    x: torch.Tensor,
    perturbations: Sequence[torch.Tensor | None] | None = None,
    start: int = 0,
) -> list[torch.Tensor]:
    """Measured activities [x, a_start, ..., a_L] of layers[start:], each with its total-input perturbation."""
    acts = [x]
    for i, layer in enumerate(layers[start:], start):
        pert = perturbations[i] if perturbations is not None else None
        acts.append(layer.forward(acts[-1], total_input_perturbation=pert))
    return acts


def per_example_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row: (N, C), (N,) -> (N,). A digital function of measured outputs."""
    return F.cross_entropy(logits, y, reduction="none")


def _normal(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    """A gradient estimate for every layer, and what it cost.

    weight: per layer (in, out); bias: per layer (out,); loss: the clean minibatch loss (0-dim) or
    None; logits: the clean pass's output (B, C) or None; digital_macs: multiply-accumulates the
    learner did itself, digitally (update outer products, weight perturbations' x E, local heads);
    the layers' own forward work is counted by a device.
    """

    weight: list[torch.Tensor]
    bias: list[torch.Tensor]
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    digital_macs: int
    extra: list[torch.Tensor] = field(default_factory=list)
    """Gradients of the learner's extra (digital) parameters, in `PerturbationLearner.extra` order."""
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    """Further 0-dim training metrics."""


def _differences(loss_pm: torch.Tensor, loss_clean: torch.Tensor | None, k: int, sigma: float, antithetic: bool):
    """Directional derivatives from losses of the perturbed rows: (R, ...) -> (K, ...)."""
    if antithetic:
        return (loss_pm[:k] - loss_pm[k:]) / (2.0 * sigma)
    return (loss_pm - loss_clean) / sigma


def activity_perturbation(
    layers: Sequence[AnalogLayer],
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    directions: int,
    generator: torch.Generator,
    antithetic: bool = True,
    mode: Literal["simultaneous", "layerwise"] = "layerwise",
    mask_inactive: bool = False,
    loss_fn: LossFn = per_example_ce,
    estimator: Literal["finite-difference", "jvp"] = "finite-difference",
) -> Estimate:
    """Node-perturbation estimate of d mean_b L_b / d(W_l, b_l) for every layer.

    Args:
        layers: the network, input to output; the last layer's activities are the logits.
        x: (B, D) inputs; y: (B,) labels.
        sigma: perturbation scale on each total input.
        directions: K perturbations per example, averaged.
        generator: source of the perturbations.
        antithetic: +/- pairs (central difference) instead of one-sided differences from the clean pass.
        mode: 'simultaneous' perturbs every layer's total inputs in one pass pair (noise ~ all
            neurons); 'layerwise' runs a pass pair per layer, from that layer up (noise ~ its width).
        mask_inactive: zero the estimate of hidden neurons whose measured activity is <= 0
            (a rectifier that is off passes no perturbation, so its true derivative is 0).
        loss_fn: per-example loss of the logits.
        estimator: 'finite-difference' (black box: forward passes only) or 'jvp' (the exact
            directional derivative by forward-mode autodiff, Ren et al.'s forward gradient: needs an
            exact model of the forward pass, so digital layers only; sigma and antithetic unused).
    """
    b, k = x.shape[0], directions
    jvp = _check_estimator(estimator, layers)
    acts = forward_layers(layers, x)  # clean pass: [x, a_1, ..., a_L]
    loss_clean = loss_fn(acts[-1], y)  # (B,)
    reps = 2 * k if antithetic else k
    y_rep = _repeat_rows(y, reps)
    n_layers = len(layers)
    grads_z: list[torch.Tensor] = []  # per layer (B, H_l): estimate of dL_b/dz_l
    if mode == "simultaneous":
        us = [_normal((k, b, layer.out_features), generator, x) for layer in layers]  # (K, B, H_l)
        if jvp:
            tangents = [u.reshape(k * b, -1) for u in us]
            d = _jvp_activity(layers, x.repeat(k, 1), _repeat_rows(y, k), tangents, 0, loss_fn).view(k, b)
        else:
            perts = [_signed(u, sigma, antithetic) for u in us]  # (R*B, H_l)
            out = forward_layers(layers, x.repeat(reps, 1), perts)[-1]
            d = _differences(loss_fn(out, y_rep).view(reps, b), loss_clean, k, sigma, antithetic)  # (K, B)
        grads_z = [(d[..., None] * u).mean(0) for u in us]
    elif mode == "layerwise":
        for l, layer in enumerate(layers):
            u = _normal((k, b, layer.out_features), generator, x)  # (K, B, H_l)
            if jvp:
                tangents = [u.reshape(k * b, -1)] + [torch.zeros(k * b, m.out_features, device=x.device, dtype=x.dtype)
                                                     for m in layers[l + 1:]]
                d = _jvp_activity(layers, acts[l].repeat(k, 1), _repeat_rows(y, k), tangents, l, loss_fn).view(k, b)
            else:
                perts: list[torch.Tensor | None] = [None] * n_layers
                perts[l] = _signed(u, sigma, antithetic)
                out = forward_layers(layers, acts[l].repeat(reps, 1), perts, start=l)[-1]
                d = _differences(loss_fn(out, y_rep).view(reps, b), loss_clean, k, sigma, antithetic)
            grads_z.append((d[..., None] * u).mean(0))
    else:
        raise ConfigError(f"mode must be 'simultaneous' or 'layerwise', got {mode!r}")
    gw, gb = [], []
    for l, g in enumerate(grads_z):
        if mask_inactive and l < n_layers - 1:
            g = g * (acts[l + 1] > 0)
        gw.append(acts[l].T @ g / b)  # (in, out) = x_l^T dL/dz_l / B
        gb.append(g.mean(0))
    macs = sum(b * layer.in_features * layer.out_features for layer in layers)  # x_l^T g_z
    return Estimate(gw, gb, loss_clean.mean(), acts[-1], macs)


def _repeat_rows(t: torch.Tensor, reps: int) -> torch.Tensor:
    """(B, ...) -> (reps * B, ...): the minibatch stacked reps times."""
    return t.repeat(reps, *([1] * (t.dim() - 1)))


def _signed(u: torch.Tensor, sigma: float, antithetic: bool) -> torch.Tensor:
    """(K, B, H) directions -> (R*B, H) perturbations: [+sigma u; -sigma u] or [sigma u]."""
    p = sigma * u
    if antithetic:
        p = torch.cat([p, -p])
    return p.reshape(-1, u.shape[-1])


def weight_perturbation(
    layers: Sequence[AnalogLayer],
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    directions: int,
    generator: torch.Generator,
    antithetic: bool = True,
    loss_fn: LossFn = per_example_ce,
    clean_pass: bool = True,
    estimator: Literal["finite-difference", "jvp"] = "finite-difference",
) -> Estimate:
    """Weight-perturbation estimate of d mean_b L_b / d(W_l, b_l): one perturbation of every weight
    per direction, shared by the minibatch, applied as x_l E_l + e_l on each layer's total inputs.

    Args as in `activity_perturbation`; `clean_pass` also runs an unperturbed pass (needed for
    one-sided differences; with antithetic pairs only for the reported loss).
    """
    b, k = x.shape[0], directions
    if _check_estimator(estimator, layers):
        return _weight_perturbation_jvp(layers, x, y, directions, generator, loss_fn)
    reps = 2 * k if antithetic else k
    sign = torch.ones(reps, 1, 1, device=x.device, dtype=x.dtype)
    if antithetic:
        sign[k:] = -1.0
    loss_clean, logits = None, None
    if clean_pass or not antithetic:
        logits = forward_layers(layers, x)[-1]
        loss_clean = per_example_loss_mean(loss_fn, logits, y)
    us_w, us_b = [], []
    h = x.repeat(reps, 1)  # (R*B, D)
    for layer in layers:
        uw = _normal((k, layer.in_features, layer.out_features), generator, x)  # (K, in, out)
        ub = _normal((k, layer.out_features), generator, x)  # (K, out)
        us_w.append(uw)
        us_b.append(ub)
        ew = sigma * (uw.repeat(2, 1, 1) if antithetic else uw) * sign  # (R, in, out)
        eb = sigma * (ub.repeat(2, 1) if antithetic else ub)[:, None, :] * sign  # (R, 1, out)
        pert = torch.baddbmm(eb, h.view(reps, b, -1), ew).reshape(reps * b, -1)  # (R*B, out) = x E + e
        h = layer.forward(h, total_input_perturbation=pert)
    loss_pm = loss_fn(h, _repeat_rows(y, reps)).view(reps, b).mean(1)  # (R,) minibatch losses
    d = _differences(loss_pm, loss_clean, k, sigma, antithetic)  # (K,)
    gw = [(d[:, None, None] * uw).mean(0) for uw in us_w]
    gb = [(d[:, None] * ub).mean(0) for ub in us_b]
    n_weights = sum(layer.in_features * layer.out_features for layer in layers)
    return Estimate(gw, gb, loss_clean, logits, reps * b * n_weights + k * n_weights)  # x E, and d u


def _weight_perturbation_jvp(layers, x, y, k, generator, loss_fn) -> Estimate:
    """Weight-perturbed forward gradient with exact directional derivatives (jvp; digital layers only)."""
    b = x.shape[0]
    us_w, us_b = [], []  # drawn in the same order as the finite-difference version
    for l in layers:
        us_w.append(_normal((k, l.in_features, l.out_features), generator, x))  # (K, in, out)
        us_b.append(_normal((k, l.out_features), generator, x))  # (K, out)

    def batch_losses(*eps):  # eps: per layer E (K, in, out) then e (K, out) -> (K,) minibatch losses
        h = x.expand(k, b, x.shape[1])
        for i, layer in enumerate(layers):
            z = torch.baddbmm(eps[len(layers) + i][:, None, :], h, layer.weight + eps[i]) + layer.bias
            h = torch.relu(z) if layer.activation == "relu" else z
        return loss_fn(h.reshape(k * b, -1), _repeat_rows(y, k)).view(k, b).mean(1)

    primals = tuple(torch.zeros_like(u) for u in us_w + us_b)
    loss, d = torch.func.jvp(batch_losses, primals, tuple(us_w + us_b))  # d (K,) = U . grad
    gw = [(d[:, None, None] * uw).mean(0) for uw in us_w]
    gb = [(d[:, None] * ub).mean(0) for ub in us_b]
    n_weights = sum(l.in_features * l.out_features for l in layers)
    return Estimate(gw, gb, loss[0].detach(), None, 2 * k * b * n_weights)  # forward + tangent passes, digital


def _jvp_activity(layers, h, y, tangents, start, loss_fn) -> torch.Tensor:
    """Exact d L_b / d(total inputs of layers[start:]) . tangent per row, by forward-mode autodiff."""

    def losses(*perts):
        a = h
        for layer, p in zip(layers[start:], perts):
            z = torch.addmm(layer.bias, a, layer.weight) + p
            a = torch.relu(z) if layer.activation == "relu" else z
        return loss_fn(a, y)

    primals = tuple(torch.zeros_like(t) for t in tangents)
    return torch.func.jvp(losses, primals, tuple(tangents))[1]


def _check_estimator(estimator: str, layers) -> bool:
    """True for 'jvp' (after checking that the layers are an exact digital model)."""
    if estimator == "finite-difference":
        return False
    if estimator != "jvp":
        raise ConfigError(f"estimator must be 'finite-difference' or 'jvp', got {estimator!r}")
    if not all(isinstance(l, DigitalLayer) for l in layers):
        raise ConfigError("estimator='jvp' needs an exact model of the forward pass (digital layers); "
                          "on a device use estimator='finite-difference'")
    return True


def per_example_loss_mean(loss_fn: LossFn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of the per-example loss (0-dim)."""
    return loss_fn(logits, y).mean()


# ----------------------------------------------------------------------------------------------
# A learner whose layers are black boxes
# ----------------------------------------------------------------------------------------------
class LayerMirror(nn.Module):
    """The learner's own copy of what it asked each layer to hold (its nominal weights).

    The shared optimizers step these parameters from a rule's gradient estimates; the change of
    each step is then *requested* from the layer (`request_update`), which may apply it exactly
    (digital) or noisily (a device). The mirror never reads the layer's physical state.
    """

    def __init__(self, layers: Sequence[AnalogLayer], generator: torch.Generator, device, init_gain: float = 1.0):
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer in layers:
            # uniform in ±init_gain sqrt(3 / fan_in) (LeCun-uniform at gain 1, as the backprop MLP),
            # from the learner's generator
            bound = init_gain * (3.0 / layer.in_features) ** 0.5
            w = (torch.rand(layer.in_features, layer.out_features, generator=generator, device=device) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w, requires_grad=False))
            self.biases.append(nn.Parameter(torch.zeros(layer.out_features, device=device), requires_grad=False))
            layer.program(w.clone(), torch.zeros(layer.out_features, device=device))

    def params(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return list(self.weights), list(self.biases)


def apply_estimates(
    optimizer: torch.optim.Optimizer,
    mirror: LayerMirror,
    layers: Sequence[AnalogLayer],
    grad_w: Sequence[torch.Tensor],
    grad_b: Sequence[torch.Tensor],
    extra: Sequence[tuple[nn.Parameter, torch.Tensor]] = (),
) -> None:
    """Put the estimates into .grad, step the optimizer on the mirror, request the changes.

    `extra` pairs (parameter, gradient) of digital parameters the optimizer also holds.
    """
    old = [(w.detach().clone(), bb.detach().clone()) for w, bb in zip(mirror.weights, mirror.biases)]
    pairs = [*zip(mirror.weights, grad_w), *zip(mirror.biases, grad_b), *extra]
    for p, g in pairs:
        p.grad = g
    optimizer.step()
    for layer, w, bb, (w0, b0) in zip(layers, mirror.weights, mirror.biases, old):
        layer.request_update(w.detach() - w0, bb.detach() - b0)
    for p, _ in pairs:
        p.grad = None


class PerturbationLearner(Learner):
    """A network of black-box layers (digital or device) with a mirror and one optimizer.

    Subclasses implement `estimate(x, y) -> Estimate` (for `self.layers`) and may add layers.
    """

    primary_metric = "error"

    def __init__(self, config, dims: Sequence[int], activations: Sequence[Activation], seed: int, device) -> None:
        super().__init__(seed, device)
        self.cfg = config
        _validate_common(config)
        layers, self.hardware = build_layers(config.hardware, dims, activations, config.hardware_seed, self.device_)
        _check_estimator(getattr(config, "estimator", "finite-difference"), layers)  # jvp on a device: refused now
        # digital layers are modules (their weights go into checkpoints); device layers are opaque handles
        self.layers = nn.ModuleList(layers) if self.hardware is None else layers
        self.mirror = LayerMirror(layers, self.generator, self.device_)
        self.register_buffer("digital_macs", torch.zeros((), dtype=torch.int64))  # the learner's own digital work
        self.last_eval_counts = OpCounts()  # device work of the latest evaluate() (not part of the state)
        extra_w, extra_b = self.build_extra()
        self.extra = [*extra_w, *extra_b]
        weights, biases = self.mirror.params()
        self.optimizers = [make_optimizer(config.optimizer, weights + extra_w, biases + extra_b)]

    def build_extra(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Digital parameters besides the layers' (e.g. local heads): (weights, biases) for the optimizer."""
        return [], []

    def estimate(self, x: torch.Tensor, y: torch.Tensor) -> Estimate:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Mirror, optimizer and generator state, plus a device's sealed snapshot (only it can take it back)."""
        out = super().state_tensors()
        if self.hardware is not None:
            out["hardware.sealed"] = self.hardware.export_state()
        return out

    def load_state_tensors(self, tensors) -> None:
        super().load_state_tensors(tensors)
        if self.hardware is not None and "hardware.sealed" in tensors:
            self.hardware.restore_state(tensors["hardware.sealed"])

    def energy(self) -> dict | None:
        """The device's energy report so far (None on digital layers): device joules, and the same
        workload on digital hardware (`mortalnet.hardware.energy_report`). Training only: evaluation
        runs isolated (its latest cost is `last_eval_counts`)."""
        if self.hardware is None:
            return None
        from mortalnet.hardware import energy_report

        return energy_report(self.hardware.counts(), learner_macs=int(self.digital_macs))

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        est = self.estimate(x, y)
        apply_estimates(self.optimizers[0], self.mirror, self.layers, est.weight, est.bias,
                        list(zip(self.extra, est.extra)))
        self.digital_macs += est.digital_macs
        out = {"loss": est.loss.detach(), **est.metrics}
        if est.logits is not None:
            out["train_error"] = (est.logits.argmax(1) != y).float().mean()
        return out

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return forward_layers(self.layers, x)[-1]

    @contextmanager
    def isolated(self) -> Iterator[None]:
        """Forward passes that must not disturb training, e.g. evaluation on held-out data.

        On a device they run inside `Device.isolated`: its noise stream and counters are left as
        they were, so how often a run evaluates changes neither its weights nor its reported
        energy; what the passes cost goes to `last_eval_counts`. Digital layers: nothing to isolate.
        """
        if self.hardware is None:
            yield
            return
        with self.hardware.isolated() as spent:
            yield
        self.last_eval_counts = spent

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Test error of the logits; isolated from training on a device (see `isolated`)."""
        with self.isolated():
            out = self.predict_batches(self.logits, x)
        return {"error": (out.argmax(1) != y).float().mean().item()}


def _validate_common(cfg) -> None:
    if not cfg.sigma > 0:
        raise ConfigError(f"sigma (perturbation scale) must be > 0, got {cfg.sigma}")
    if cfg.directions < 1:
        raise ConfigError(f"directions must be >= 1, got {cfg.directions}")
