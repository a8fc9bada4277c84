"""The boundary that matters: what a learning rule may do with a mortal (analog) device.

A learner gets a device only through these handles. It can
  * run a forward pass: inputs in, measured output activities out (`AnalogLayer.forward`);
  * perturb a layer's inputs or its total inputs by vectors it chooses (activity perturbation);
  * request weight changes (`request_update`); the device applies a noisy, quantized, bounded,
    possibly asymmetric version of the request, and the learner never learns which;
  * read and program *nominal* weights (what it asked for), which is all that "copying the
    weights to another instance" can mean.
It cannot
  * read the hidden physical parameters (conductances, gains, offsets, nonlinearities, noise),
  * get a gradient through a device: inputs that require grad are refused with `NoGradientError`,
  * copy a device's physical state.
Implementations live in `mortalnet.hardware`; the rules in `mortalnet.rules` see only this.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


class DeviceError(RuntimeError):
    """A device cannot do what was asked (it is dead, or the request is malformed)."""


class DeadDeviceError(DeviceError):
    """The device has died: it refuses to compute or to be written."""


class NoGradientError(DeviceError):
    """Something tried to differentiate through a device; physical hardware has no backward pass."""


@runtime_checkable
class AnalogLayer(Protocol):
    """One analog layer of a device, as a learner sees it: y = f(G x) with f, G unknown."""

    in_features: int
    out_features: int

    def forward(
        self,
        x: torch.Tensor,
        input_perturbation: torch.Tensor | None = None,
        total_input_perturbation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Measured output activities (B, out) for inputs x (B, in).

        `input_perturbation` (B, in) is added to the inputs, `total_input_perturbation`
        (B, out) to each neuron's summed input before its nonlinearity. Raises
        NoGradientError if x requires grad, DeadDeviceError if the device is dead.
        """
        ...

    def request_update(self, delta_weight: torch.Tensor, delta_bias: torch.Tensor | None = None) -> None:
        """Ask for W += delta_weight (in, out) and b += delta_bias (out,) on the nominal scale."""
        ...

    def nominal_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the nominal (requested) weight (in, out) and bias (out,)."""
        ...

    def nominal_steps(self) -> tuple[torch.Tensor, float]:
        """Data-sheet weight change of one write pulse: per input row (in, 1), and for the bias."""
        ...

    def program(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Write nominal weights (e.g. copied from another instance) through the write path."""
        ...
