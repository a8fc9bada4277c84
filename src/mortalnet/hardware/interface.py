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
  * get a derivative through a device: inputs that require grad, that carry a forward-mode tangent
    (`torch.autograd.forward_ad`), or that come wrapped by a `torch.func` transform (grad, jvp,
    jacfwd, vmap, ...) are refused with `NoGradientError` (`check_no_derivative`),
  * copy a device's physical state.
Implementations live in `mortalnet.hardware`; the rules in `mortalnet.rules` see only this.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.autograd.forward_ad as fwAD


class DeviceError(RuntimeError):
    """A device cannot do what was asked (it is dead, or the request is malformed)."""


class DeadDeviceError(DeviceError):
    """The device has died: it refuses to compute or to be written."""


class NoGradientError(DeviceError):
    """Something tried to differentiate through a device; physical hardware has no backward pass."""


def _functorch_wrapped(t: torch.Tensor) -> bool:
    """True if t is a tensor seen inside a torch.func transform (grad, jvp, jacfwd, vmap, ...)."""
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


def check_no_derivative(name: str, t: torch.Tensor | None) -> None:
    """Refuse, with `NoGradientError`, a tensor through which a derivative could be taken.

    Covers reverse mode (requires_grad), forward mode (a dual tensor of
    `torch.autograd.forward_ad`) and the `torch.func` transforms, whose inputs arrive wrapped
    (jvp and jacfwd would otherwise get the exact derivative of a device's hidden physics).
    """
    if t is None:
        return
    if t.requires_grad:
        raise NoGradientError(
            f"{name} requires grad, but a physical device has no backward pass: nothing can be "
            "differentiated through it. Detach the tensor (and learn with a rule that does not "
            "need gradients through the hardware, e.g. Forward-Forward or perturbation)."
        )
    if _functorch_wrapped(t):
        raise NoGradientError(
            f"{name} comes from inside a torch.func transform (grad, jvp, jacfwd, vmap, ...), but a "
            "physical device cannot be differentiated or vectorized through: call it outside the "
            "transform, with plain tensors, and estimate derivatives from its measured outputs."
        )
    if fwAD.unpack_dual(t).tangent is not None:
        raise NoGradientError(
            f"{name} carries a forward-mode tangent (torch.autograd.forward_ad), but a physical device "
            "has no derivative to propagate it: pass the primal (fwAD.unpack_dual(t).primal) and "
            "estimate derivatives by finite differences of measured outputs (perturbation)."
        )


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
        NoGradientError if an argument requires grad, carries a forward-mode tangent or comes
        from inside a torch.func transform; DeadDeviceError if the device is dead.
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
