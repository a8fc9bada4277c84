"""Simulated mortal (analog) hardware, behind a narrow interface (see interface.py).

    from mortalnet.hardware import create_device, list_devices
    dev = create_device("mild", shapes=[(784, 1000), (1000, 1000)], seed=3)
    y = dev.layers[0].forward(x)              # measured activities (B, 1000); no gradient
    dev.layers[0].request_update(dW, db)      # a noisy, quantized, bounded version gets applied
    other = create_device("mild", shapes=dev.shapes, seed=4)
    other.program(dev.nominal_weights())      # the only thing that can be copied
    dev.advance_time(3600.0); dev.kill()      # drift, death
    dev.counts(); dev.energy()                # MACs, conversions, pulses -> joules

Presets are registered with `@register_device("name")` on a zero-argument function returning a
`DevicePreset`; `list_devices()` names them. Physical state lives in the private
`mortalnet.hardware._physics` module; learners never import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, Callable

import torch

from mortalnet.hardware.energy import EnergyModel, OpCounts, energy_report
from mortalnet.hardware.interface import AnalogLayer, DeadDeviceError, DeviceError, NoGradientError
from mortalnet.hardware.preset import DevicePreset
from mortalnet.registry import Registry

DEVICES: Registry[Callable[[], DevicePreset]] = Registry("device preset", modules=("mortalnet.hardware.presets",))
register_device = DEVICES.register

__all__ = [
    "DEVICES", "register_device", "list_devices", "get_preset", "create_device", "Device", "DeviceLayer",
    "DevicePreset", "AnalogLayer", "DeviceError", "DeadDeviceError", "NoGradientError", "OpCounts",
    "EnergyModel", "energy_report",
]


def list_devices() -> list[str]:
    """Names of all registered device presets (at least ideal, mild, harsh)."""
    return DEVICES.names()


def get_preset(name: str, **overrides: Any) -> DevicePreset:
    """The registered preset `name`, with optional field overrides (e.g. lifetime_writes=100)."""
    preset = DEVICES.get(name)()
    if overrides:
        valid = {f.name for f in fields(DevicePreset)}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"unknown device preset field(s) {bad}; valid: {', '.join(sorted(valid))}")
        preset = replace(preset, **overrides)
    return preset


def create_device(
    preset: str | DevicePreset,
    shapes: Sequence[tuple[int, int]],
    seed: int,
    activation: str | Sequence[str] = "relu",
    torch_device: torch.device | str = "cpu",
    overrides: Mapping[str, Any] | None = None,
):
    """Make one physical instance: a network of analog layers of the given shapes.

    Args:
        preset: a registered preset name ("ideal", "mild", "harsh") or a DevicePreset.
        shapes: (in_features, out_features) of each layer, e.g. [(784, 1000), (1000, 1000)].
        seed: which instance: the same (preset, shapes, seed) is the same device, another seed
            another device with different hidden variations.
        activation: "relu" (rectifying neurons from the preset's family) or "linear" (no
            rectification: gain and offset only), for all layers or one per layer.
        torch_device: where the simulation runs.
        overrides: DevicePreset fields to change, e.g. {"lifetime_writes": 100}.

    Returns:
        a `Device`; its `layers` are the `DeviceLayer` handles a learner uses. The device starts
        with all nominal weights at zero: program() initial weights.
    """
    from mortalnet.hardware import _physics
    from mortalnet.hardware.device import Device

    if isinstance(preset, str):
        preset = get_preset(preset, **dict(overrides or {}))
    elif isinstance(preset, DevicePreset):
        if overrides:
            preset = replace(preset, **dict(overrides))
    else:
        raise TypeError(f"preset must be a preset name or a DevicePreset, got {type(preset).__name__}")
    shapes = [tuple(int(v) for v in s) for s in shapes]
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise ValueError(f"shapes must be a non-empty list of (in_features, out_features) >= 1, got {shapes}")
    acts = [activation] * len(shapes) if isinstance(activation, str) else list(activation)
    if len(acts) != len(shapes) or any(a not in ("relu", "linear") for a in acts):
        raise ValueError(f"activation must be 'relu' or 'linear' (or one per layer), got {activation!r}")
    if preset.adc_bits and not preset.out_bound:
        raise ValueError(f"device preset {preset.name!r}: an ADC (adc_bits={preset.adc_bits}) needs out_bound > 0")
    token = _physics.new_device(preset, shapes, acts, int(seed), torch.device(torch_device))
    return Device(token, preset.name, int(seed), shapes)


def __getattr__(name: str):  # lazy: `from mortalnet.hardware import Device` without import-time work
    if name in ("Device", "DeviceLayer"):
        from mortalnet.hardware import device

        return getattr(device, name)
    raise AttributeError(name)
