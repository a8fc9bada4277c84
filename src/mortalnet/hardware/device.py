"""The handles a learner holds: `Device` (one physical instance) and `DeviceLayer` (one of its layers).

A handle carries an opaque token, the shapes and the preset's name -- nothing physical. Every
call goes through `mortalnet.hardware._physics`, which keeps the instance's hidden state. What a
handle offers is exactly the contract of `mortalnet.hardware.interface.AnalogLayer`, plus the
device-level operations a community of mortal agents needs: the clock (drift), death, energy
counters, and a *sealed* snapshot for checkpoints that only the same instance can take back.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from mortalnet.hardware import _physics
from mortalnet.hardware.energy import EnergyModel, OpCounts
from mortalnet.hardware.interface import DeviceError, check_no_derivative

# pops the active TorchDispatchModes for the duration of a block (public since torch 2.0, underscored)
from torch.utils._python_dispatch import _disable_current_modes


def _check_argument(name: str, t: torch.Tensor | None) -> None:
    """What a learner hands a device must be a plain tensor through which no derivative can be taken.

    NoGradientError for autograd, forward AD and torch.func inputs (`check_no_derivative`);
    TypeError for a torch.Tensor subclass (nn.Parameter aside): its __torch_function__ or
    __torch_dispatch__ would be called by the physics' own operations, with the hidden tensors
    as arguments."""
    if t is None:
        return
    if isinstance(t, torch.Tensor) and type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise TypeError(f"{name} is a {type(t).__name__}, a torch.Tensor subclass: a device takes plain tensors "
                        "(its physics would otherwise call the subclass's hooks with its hidden state)")
    check_no_derivative(name, t)


@contextmanager
def _unobserved() -> Iterator[None]:
    """Run the hidden physics where nothing the learner installed can watch it: no autograd, no
    torch function modes or subclass hooks (torch.overrides), no dispatch modes (TorchDispatchMode).
    Without this a mode entered around a device call would receive every hidden tensor the physics
    computes with (conductances, gains, thresholds) as an argument of its operations."""
    with torch.no_grad(), torch._C.DisableTorchFunction(), _disable_current_modes():
        yield


def _physical(t: torch.Tensor | None) -> torch.Tensor | None:
    """What enters the physics: the value alone, a plain detached float32 tensor (no graph, tangent
    or subclass rides along). Call inside `_unobserved`."""
    return None if t is None else t.detach().to(torch.float32).as_subclass(torch.Tensor)


def _check_finite(what: str, t: torch.Tensor) -> None:
    """DeviceError, before any cell is touched, for a NaN or infinite write: a physical write has a
    finite size, and a NaN level would poison the device for good."""
    if not bool(torch.isfinite(t).all()):
        raise DeviceError(f"{what} contains NaN or inf; nothing was written (a device takes finite writes only)")


def _check_matrix(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape and not (len(shape) == 2 and shape[0] == -1 and t.dim() == 2 and t.shape[1] == shape[1]):
        want = "(B, %d)" % shape[1] if shape[0] == -1 else str(shape)
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {want}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


class DeviceLayer:
    """One analog layer as a learner sees it: y = f(x W + b) with f and the physics unknown.

    Implements `mortalnet.hardware.interface.AnalogLayer`. Shapes: x (B, in_features),
    y (B, out_features); weights are (in_features, out_features) as in `mortalnet.nets.ff`.
    """

    def __init__(self, device: "Device", index: int, in_features: int, out_features: int) -> None:
        self.device = device
        self.index = index
        self.in_features = in_features
        self.out_features = out_features

    def _state(self):
        s = _physics.lookup(self.device._token)
        s.check_alive()
        return s

    def forward(
        self,
        x: torch.Tensor,
        input_perturbation: torch.Tensor | None = None,
        total_input_perturbation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Measured output activities (B, out) for inputs x (B, in).

        The physics computes in float32; the output comes back in x's dtype (float64, bfloat16, ...).

        Args:
            x: inputs (B, in_features); no derivative may be taken through it (see Raises).
            input_perturbation: (B, in_features) added to the inputs before the converters.
            total_input_perturbation: (B, out_features) added to each neuron's summed input
                before its (hidden) nonlinearity, in nominal units of x W + b.

        Raises:
            NoGradientError: if any argument requires grad, carries a forward-mode tangent
                (torch.autograd.forward_ad) or comes from inside a torch.func transform.
            DeadDeviceError: if the device is dead.
        """
        for name, t in (("x", x), ("input_perturbation", input_perturbation),
                        ("total_input_perturbation", total_input_perturbation)):
            _check_argument(name, t)
        _check_matrix("x", x, (-1, self.in_features))
        B = x.shape[0]
        if input_perturbation is not None:
            _check_matrix("input_perturbation", input_perturbation, (B, self.in_features))
        if total_input_perturbation is not None:
            _check_matrix("total_input_perturbation", total_input_perturbation, (B, self.out_features))
        s = self._state()
        with _unobserved():
            y = s.layers[self.index].forward(_physical(x), _physical(input_perturbation),
                                             _physical(total_input_perturbation), s.noise_gen, s.counts)
            return y.to(x.dtype)

    __call__ = forward

    def request_update(self, delta_weight: torch.Tensor, delta_bias: torch.Tensor | None = None) -> None:
        """Ask for W += delta_weight (in, out) and b += delta_bias (out,), in nominal units.

        The device applies a noisy, quantized, bounded, possibly asymmetric version of it; the
        nominal record (`nominal_weights`) adds exactly what was asked.
        """
        _check_argument("delta_weight", delta_weight)
        _check_argument("delta_bias", delta_bias)
        _check_matrix("delta_weight", delta_weight, (self.in_features, self.out_features))
        if delta_bias is None:
            delta_bias = torch.zeros(self.out_features, dtype=delta_weight.dtype, device=delta_weight.device)
        _check_matrix("delta_bias", delta_bias, (self.out_features,))
        s = self._state()
        with _unobserved():
            dw = torch.cat([_physical(delta_weight), _physical(delta_bias)[None]]).to(s.torch_device)
            _check_finite("the requested update", dw)
            pulses = s.layers[self.index].update(dw, s.time, s.noise_gen)
        s.counts.write_pulses += pulses
        s.counts.weights_requested += dw.numel()
        s.count_write()

    def nominal_steps(self) -> tuple[torch.Tensor, float]:
        """Data-sheet weight change of one pulse on each cell of a pair: per input row (in, 1) for
        the weights, and one number for the biases; zeros for continuous cells.

        Known from the preset and the row gains chosen at design time. The real change per pulse
        varies from cell to cell and between up and down (hidden); a learner may use these
        nominal values to request whole pulses (mixed-precision updates), never more.
        """
        s = _physics.lookup(self.device._token)
        p, gains = s.preset, s.row_gains[self.index]
        if not p.levels:
            return torch.zeros(self.in_features, 1, device=s.torch_device), 0.0
        g = torch.tensor(gains if gains is not None else [1.0] * self.in_features, device=s.torch_device)
        return (2 * p.weight_range / self.in_features**0.5 / p.levels) * g[:, None], 2 * p.bias_range / p.levels

    def nominal_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the nominal weight (in, out) and bias (out,): what was programmed or asked for."""
        w = self._state().layers[self.index].nominal
        return w[:-1].clone(), w[-1].clone()

    def program(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Write nominal weights (e.g. copied from another instance) with closed-loop programming."""
        _check_argument("weight", weight)
        _check_argument("bias", bias)
        _check_matrix("weight", weight, (self.in_features, self.out_features))
        _check_matrix("bias", bias, (self.out_features,))
        s = self._state()
        with _unobserved():
            w = torch.cat([_physical(weight), _physical(bias)[None]]).to(s.torch_device)
            _check_finite("the weights to program", w)
            s.counts.cells_programmed += s.layers[self.index].program(w, s.time, s.noise_gen)

    def __repr__(self) -> str:
        return f"DeviceLayer({self.in_features} -> {self.out_features}, layer {self.index} of {self.device!r})"


class Device:
    """A handle on one physical instance: its layers, clock, fate and energy counters.

    Build it with `mortalnet.hardware.create_device`. Attributes: `preset_name`, `seed`,
    `shapes` ((in, out) per layer) and `layers` (tuple of `DeviceLayer`).
    """

    def __init__(self, token: str, preset_name: str, seed: int, shapes: Sequence[tuple[int, int]]) -> None:
        self._token = token
        self.preset_name = preset_name
        self.seed = seed
        self.shapes = tuple(tuple(s) for s in shapes)
        self.layers = tuple(DeviceLayer(self, i, a, b) for i, (a, b) in enumerate(self.shapes))
        self._finalizer = weakref.finalize(self, _physics.release, token)

    # -- life and time ----------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """False once the device has died (killed, worn out, or its random time of death passed)."""
        return _physics.lookup(self._token).alive

    @property
    def death_reason(self) -> str:
        """Why the device died ('' while alive)."""
        return _physics.lookup(self._token).death_reason

    @property
    def time(self) -> float:
        """Simulated seconds since the device was made (drift and random death follow it)."""
        return _physics.lookup(self._token).time

    def advance_time(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass: conductances drift, a random death may come."""
        with _unobserved():
            _physics.lookup(self._token).advance(seconds)

    def kill(self, reason: str = "killed on demand") -> None:
        """Kill the device: from now on it refuses to compute, to be written or read."""
        _physics.lookup(self._token).die(reason)

    @property
    def write_requests(self) -> int:
        """Write requests so far (the wear that `lifetime_writes` limits)."""
        return _physics.lookup(self._token).writes

    # -- whole-network conveniences -----------------------------------------------------------------
    def nominal_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's nominal (weight, bias): all that may be copied to another instance."""
        return [layer.nominal_weights() for layer in self.layers]

    def program(self, weights: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Program every layer's nominal (weight, bias), e.g. `other.program(source.nominal_weights())`."""
        if len(weights) != len(self.layers):
            raise ValueError(f"{len(weights)} (weight, bias) pairs for a device with {len(self.layers)} layers")
        for layer, (w, b) in zip(self.layers, weights):
            layer.program(w, b)

    # -- energy ---------------------------------------------------------------------------------------
    def counts(self) -> OpCounts:
        """A copy of the operation counters (MACs, conversions, pulses) since the device was made."""
        c = _physics.lookup(self._token).counts
        return OpCounts(**c.as_dict())

    def evaluation_counts(self) -> OpCounts:
        """A copy of what every pass inside `isolated()` cost, added up (kept apart from `counts`)."""
        return OpCounts(**_physics.lookup(self._token).evaluation_counts.as_dict())

    def energy(self, model: EnergyModel = EnergyModel()) -> dict[str, float]:
        """Joules spent so far, by kind (see `mortalnet.hardware.energy`)."""
        return model.device_joules(self.counts())

    @contextmanager
    def isolated(self) -> Iterator[OpCounts]:
        """Forward passes that must not disturb training, e.g. evaluation on held-out data.

        On exit the device's per-pass noise stream and its training counters are put back as they
        were, so how often a run evaluates does not change its training; what the passes cost is
        not erased: the yielded OpCounts receives it, and `evaluation_counts` adds it up over the
        device's life. Writes, and moving the clock, are not allowed inside (DeviceError): they
        change the physics. (Two blocks in a row see the same noise: a rule that wrapped its
        perturbed passes in isolated() would get noise-matched differences. No rule in the library
        does; this is evaluation's tool.)
        """
        s = _physics.lookup(self._token)
        gen_state, counts, writes, time = s.noise_gen.get_state(), OpCounts(**s.counts.as_dict()), s.writes, s.time
        spent = OpCounts()
        try:
            yield spent
        finally:
            delta = s.counts - counts
            for k, v in delta.as_dict().items():
                setattr(spent, k, v)
            s.evaluation_counts = s.evaluation_counts + delta
            s.counts = counts
            s.noise_gen.set_state(gen_state)
            if s.writes != writes or s.time != time:
                raise DeviceError("a write or a clock advance happened inside Device.isolated(); only forward "
                                  "passes may")

    # -- checkpoints ------------------------------------------------------------------------------------
    def export_state(self) -> torch.Tensor:
        """A sealed snapshot (1-D uint8 tensor) of the physical state, for checkpoints.

        The state is encrypted and authenticated with a key of this instance (see
        `_physics._DeviceState.export`): its bytes reveal no conductance, programming time or noise
        state, and only this same instance (preset, seed, shapes; also when rebuilt in a fresh
        process to resume a run) can take it back (`restore_state`). It is simulation bookkeeping
        for resuming a run, not a way to copy a device. It keeps learning rules that use these
        handles from reading or transplanting physical state; it does not protect against arbitrary
        code in the same process, which can reach the private physics module directly.
        """
        with _unobserved():
            return _physics.lookup(self._token).export()

    def restore_state(self, sealed: torch.Tensor) -> None:
        """Take back a snapshot made by `export_state` of this same instance.

        Raises:
            DeviceError: the blob is not a sealed state, belongs to another instance, or does not
                verify (one byte changed, or a forged blob).

        This is the harness's tool (resuming a run; an experiment putting an instance back to a
        moment of its life to compare what happens next, as `mortality` does), not a learning
        rule's: restoring can revive a dead instance or undo its wear. The rules call it only when
        a checkpoint is loaded (`load_state_tensors`).
        """
        with _unobserved():
            _physics.lookup(self._token).restore(sealed)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{a}x{b}" for a, b in self.shapes)
        return f"Device({self.preset_name!r}, seed={self.seed}, layers=[{shapes}])"
