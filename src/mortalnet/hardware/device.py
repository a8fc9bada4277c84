"""The handles a learner holds: `Device` (one physical instance) and `DeviceLayer` (one of its layers).

A handle carries an opaque token, the shapes and the preset's name -- nothing physical. Every
call goes through `mortalnet.hardware._physics`, which keeps the instance's hidden state. What a
handle offers is exactly the contract of `mortalnet.hardware.interface.AnalogLayer`, plus the
device-level operations a community of mortal agents needs: the clock (drift), death, energy
counters, and a *sealed* snapshot for checkpoints that only the same instance can take back.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from mortalnet.hardware import _physics
from mortalnet.hardware.energy import EnergyModel, OpCounts
from mortalnet.hardware.interface import DeviceError, NoGradientError


def _check_no_grad(name: str, t: torch.Tensor | None) -> None:
    if t is not None and t.requires_grad:
        raise NoGradientError(
            f"{name} requires grad, but a physical device has no backward pass: nothing can be "
            "differentiated through it. Detach the tensor (and learn with a rule that does not "
            "need gradients through the hardware, e.g. Forward-Forward or perturbation)."
        )


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

        Args:
            x: inputs (B, in_features); must not require grad.
            input_perturbation: (B, in_features) added to the inputs before the converters.
            total_input_perturbation: (B, out_features) added to each neuron's summed input
                before its (hidden) nonlinearity, in nominal units of x W + b.

        Raises:
            NoGradientError: if any argument requires grad.
            DeadDeviceError: if the device is dead.
        """
        for name, t in (("x", x), ("input_perturbation", input_perturbation),
                        ("total_input_perturbation", total_input_perturbation)):
            _check_no_grad(name, t)
        _check_matrix("x", x, (-1, self.in_features))
        B = x.shape[0]
        if input_perturbation is not None:
            _check_matrix("input_perturbation", input_perturbation, (B, self.in_features))
        if total_input_perturbation is not None:
            _check_matrix("total_input_perturbation", total_input_perturbation, (B, self.out_features))
        s = self._state()
        with torch.no_grad():
            return s.layers[self.index].forward(x, input_perturbation, total_input_perturbation, s.noise_gen, s.counts)

    __call__ = forward

    def request_update(self, delta_weight: torch.Tensor, delta_bias: torch.Tensor | None = None) -> None:
        """Ask for W += delta_weight (in, out) and b += delta_bias (out,), in nominal units.

        The device applies a noisy, quantized, bounded, possibly asymmetric version of it; the
        nominal record (`nominal_weights`) adds exactly what was asked.
        """
        _check_no_grad("delta_weight", delta_weight)
        _check_no_grad("delta_bias", delta_bias)
        _check_matrix("delta_weight", delta_weight, (self.in_features, self.out_features))
        if delta_bias is None:
            delta_bias = torch.zeros(self.out_features, dtype=delta_weight.dtype, device=delta_weight.device)
        _check_matrix("delta_bias", delta_bias, (self.out_features,))
        s = self._state()
        with torch.no_grad():
            dw = torch.cat([delta_weight, delta_bias[None]]).to(s.torch_device, torch.float32)
            pulses = s.layers[self.index].update(dw, s.time, s.noise_gen)
        s.counts.write_pulses += pulses
        s.counts.weights_requested += dw.numel()
        s.count_write()

    def nominal_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the nominal weight (in, out) and bias (out,): what was programmed or asked for."""
        w = self._state().layers[self.index].nominal
        return w[:-1].clone(), w[-1].clone()

    def program(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Write nominal weights (e.g. copied from another instance) with closed-loop programming."""
        _check_no_grad("weight", weight)
        _check_no_grad("bias", bias)
        _check_matrix("weight", weight, (self.in_features, self.out_features))
        _check_matrix("bias", bias, (self.out_features,))
        s = self._state()
        with torch.no_grad():
            w = torch.cat([weight, bias[None]]).to(s.torch_device, torch.float32)
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

    def energy(self, model: EnergyModel = EnergyModel()) -> dict[str, float]:
        """Joules spent so far, by kind (see `mortalnet.hardware.energy`)."""
        return model.device_joules(self.counts())

    # -- checkpoints ------------------------------------------------------------------------------------
    def export_state(self) -> torch.Tensor:
        """A sealed snapshot (opaque uint8 tensor) of the physical state, for checkpoints.

        Only this same instance (preset, seed, shapes) can take it back (`restore_state`); it is
        simulation bookkeeping for resuming a run, not a way to copy a device.
        """
        return _physics.lookup(self._token).export()

    def restore_state(self, sealed: torch.Tensor) -> None:
        """Take back a snapshot made by `export_state` of this same instance (DeviceError otherwise)."""
        _physics.lookup(self._token).restore(sealed)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{a}x{b}" for a, b in self.shapes)
        return f"Device({self.preset_name!r}, seed={self.seed}, layers=[{shapes}])"
