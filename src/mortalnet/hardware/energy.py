"""Energy accounting: operation counts -> joules, with cited per-operation figures.

A device counts what it physically does (`OpCounts`): multiply-accumulates in its arrays,
converter operations, and write pulses. `EnergyModel.device_joules` turns the counts into joules;
`EnergyModel.digital_joules` prices the *same workload* on digital hardware (every MAC of the
arrays done as an fp32 or int8 MAC, every requested weight change as one digital multiply-add).
Memory traffic (weight fetches from SRAM/DRAM) is left out on both sides, which flatters the
digital side: Horowitz 2014 puts a 32-bit DRAM read at ~640 pJ, >100x an fp32 MAC.

Figures (pJ per operation):
  * digital fp32 MAC 4.6 = multiply 3.7 + add 0.9 (Horowitz, ISSCC 2014, 45 nm);
  * digital int8 MAC 0.23 = multiply 0.2 + add 0.03 (Horowitz 2014);
  * analog MAC 0.2 including periphery (converters, accumulation): Le Gallo et al., Nature
    Electronics 2023 (14 nm PCM chip, 9.76 TOPS/W at 8-bit; 1 MAC = 2 ops -> 0.205 pJ).
    Because that figure already includes the converters, DAC/ADC conversions cost 0 extra by
    default; they are still counted (set `dac_pj`/`adc_pj` to price them separately);
  * write pulse 10 pJ: a PCM programming pulse is ~100 uA at ~1 V for ~100 ns (~10 pJ), the order
    of magnitude reported for PCM in Burr et al., Adv. Phys. X 2017 (our estimate; configurable);
    closed-loop programming of a cell (program()) is priced as 10 such pulses (program-and-verify
    iterations; our assumption).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

FP32_MAC_PJ = 4.6  # Horowitz 2014: fp32 mult 3.7 pJ + add 0.9 pJ (45 nm)
INT8_MAC_PJ = 0.23  # Horowitz 2014: int8 mult 0.2 pJ + add 0.03 pJ
ANALOG_MAC_PJ = 0.2  # Le Gallo et al. 2023: 9.76 TOPS/W incl. periphery -> ~0.2 pJ per 8-bit MAC
WRITE_PULSE_PJ = 10.0  # PCM programming pulse ~100 uA x 1 V x 100 ns (order of Burr et al. 2017)
PROGRAM_PULSES_PER_CELL = 10.0  # our assumption: ~10 program-and-verify iterations per cell
PJ = 1e-12


@dataclass
class OpCounts:
    """What a device (or a digital learner) did, counted operation by operation."""

    macs: int = 0
    """Multiply-accumulates in the analog arrays (bias row included: (in + 1) * out per row)."""
    forward_rows: int = 0
    """Input vectors sent through a layer (one per example per layer per pass)."""
    dac_conversions: int = 0
    """Digital-to-analog conversions of inputs (0 when the preset has no DAC)."""
    adc_conversions: int = 0
    """Analog-to-digital conversions of outputs (0 with no output converter)."""
    write_requests: int = 0
    """Calls of request_update (one per layer per learner step)."""
    weights_requested: int = 0
    """Weight/bias entries named in those requests (what a digital learner would update)."""
    write_pulses: int = 0
    """Programming pulses fired by requested updates (both conductances of each pair)."""
    cells_programmed: int = 0
    """Cells whose level program() changed (closed-loop program-and-verify of whole matrices)."""

    def __add__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: "OpCounts") -> "OpCounts":
        return OpCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EnergyModel:
    """Per-operation energies in picojoules (defaults cited in the module docstring)."""

    analog_mac_pj: float = ANALOG_MAC_PJ
    """Analog MAC incl. periphery (Le Gallo et al. 2023)."""
    dac_pj: float = 0.0
    """Extra per DAC conversion (0: included in analog_mac_pj)."""
    adc_pj: float = 0.0
    """Extra per ADC conversion (0: included in analog_mac_pj)."""
    write_pulse_pj: float = WRITE_PULSE_PJ
    """Per programming pulse (PCM order of magnitude, see module docstring)."""
    program_pulses_per_cell: float = PROGRAM_PULSES_PER_CELL
    """Pulses that program-and-verify spends per programmed cell (our assumption)."""
    digital_mac_pj: float = FP32_MAC_PJ
    """Digital fp32 MAC (Horowitz 2014)."""
    digital_int8_mac_pj: float = INT8_MAC_PJ
    """Digital int8 MAC (Horowitz 2014)."""

    def device_joules(self, c: OpCounts) -> dict[str, float]:
        """Joules spent by a device for counts c, by kind, and their total."""
        parts = {
            "mac_J": c.macs * self.analog_mac_pj * PJ,
            "converters_J": (c.dac_conversions * self.dac_pj + c.adc_conversions * self.adc_pj) * PJ,
            "writes_J": (c.write_pulses + c.cells_programmed * self.program_pulses_per_cell) * self.write_pulse_pj * PJ,
        }
        parts["total_J"] = sum(parts.values())
        return parts

    def digital_joules(self, c: OpCounts) -> dict[str, float]:
        """Joules for the same workload on digital hardware: the arrays' MACs done digitally
        (fp32 and int8) plus one digital multiply-add per requested weight change."""
        fp32 = (c.macs + c.weights_requested) * self.digital_mac_pj * PJ
        int8 = (c.macs + c.weights_requested) * self.digital_int8_mac_pj * PJ
        return {"fp32_total_J": fp32, "int8_total_J": int8}

    def digital_macs_joules(self, macs: int) -> float:
        """Joules for `macs` fp32 MACs done by a digital learner (its own bookkeeping)."""
        return macs * self.digital_mac_pj * PJ


def energy_report(device_counts: OpCounts, learner_macs: int = 0, model: EnergyModel = EnergyModel()) -> dict[str, Any]:
    """A JSON-able summary: the device's energy, the learner's digital work, and the same
    workload on digital hardware (fp32 and int8)."""
    dev = model.device_joules(device_counts)
    dig = model.digital_joules(device_counts)
    learner = model.digital_macs_joules(learner_macs)
    out: dict[str, Any] = {"counts": device_counts.as_dict(), "learner_digital_macs": int(learner_macs)}
    out.update({f"device_{k}": v for k, v in dev.items()})
    out["learner_digital_J"] = learner
    out["mortal_total_J"] = dev["total_J"] + learner
    out["digital_fp32_total_J"] = dig["fp32_total_J"] + learner
    out["digital_int8_total_J"] = dig["int8_total_J"] + learner_macs * model.digital_int8_mac_pj * PJ
    out["device_vs_digital_fp32_forward_ratio"] = (
        dev["mac_J"] / (device_counts.macs * model.digital_mac_pj * PJ) if device_counts.macs else None
    )
    return out
