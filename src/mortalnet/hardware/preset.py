"""`DevicePreset`: the *distribution* physical instances are drawn from (a data sheet, not an instance).

A preset says how large each non-ideality is on average; `create_device(preset, shapes, seed)`
draws one fixed instance from it. Knowing the preset does not tell a learner the instance's hidden
values (which conductance is stuck, which neuron has which threshold), only their spread.

Units. Weights are nominal numbers, as a digital layer would hold them. A layer with `fan_in`
inputs maps |w| = weight_range / sqrt(fan_in) to a full conductance swing (G+ = g_max, G- = 0);
conductances are in units of the nominal g_max (25 uS in aihwkit's PCM presets). Noise, offsets,
thresholds and converter ranges are in "full-scale units" of the array's output current: the
output of one input at full scale through one weight at full swing (aihwkit's convention:
inputs scaled to [-1, 1] by their absolute maximum, out_noise 0.06 and out_bound 12 in these
units).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePreset:
    """Sizes of every non-ideality of a simulated analog device (0 turns one off)."""

    name: str = "custom"
    """Name of the preset (recorded with results)."""
    # --- conductances ----------------------------------------------------------------------
    levels: int = 0
    """Programmable levels per conductance in [0, g_max] (0: continuous)."""
    bounded: bool = False
    """Conductances are confined to [0, g_max] (False: unbounded, only for the ideal device)."""
    weight_range: float = 10.0
    """|w| * sqrt(fan_in) represented by a full conductance swing."""
    bias_range: float = 1.0
    """|b| represented by a full swing of the bias row's conductance pair."""
    g_max_dtod: float = 0.0
    """Relative device-to-device spread of each conductance's g_max (sets its range and level size)."""
    program_noise: float = 0.0
    """Std of the error left by closed-loop programming (program()), in units of nominal g_max."""
    # --- writes (request_update): open-loop pulses ------------------------------------------
    step_dtod: float = 0.0
    """Relative device-to-device spread of the conductance change per pulse."""
    step_c2c: float = 0.0
    """Relative cycle-to-cycle noise of each pulse."""
    asymmetry: float = 0.0
    """Mean relative difference of up and down steps: up = 1 + a/2, down = 1 - a/2."""
    asymmetry_dtod: float = 0.0
    """Device-to-device spread of that asymmetry."""
    max_pulses: int = 0
    """Most pulses per conductance per write request (0: unlimited): bounded updates."""
    # --- forward pass ------------------------------------------------------------------------
    dac_bits: int = 0
    """Input converter bits; inputs scaled by their row's absolute max (0: no DAC, exact inputs)."""
    adc_bits: int = 0
    """Output converter bits over [-out_bound, out_bound] (0: no ADC, activities read as analog values)."""
    out_bound: float = 0.0
    """Output range in full-scale units: measured activities clip there (0: unbounded)."""
    read_noise: float = 0.0
    """Per-pass multiplicative noise of every conductance (relative std)."""
    out_noise: float = 0.0
    """Per-pass additive noise of every output, in full-scale units."""
    # --- periphery and neurons: fixed per instance -------------------------------------------
    col_gain_std: float = 0.0
    """Relative spread of each column's current-to-output gain."""
    col_offset_std: float = 0.0
    """Spread of each column's offset, in full-scale units."""
    threshold_mean: float = 0.0
    """Mean of each neuron's rectification threshold, in full-scale units."""
    threshold_std: float = 0.0
    """Spread of the neuron thresholds, in full-scale units."""
    neuron_gain_std: float = 0.0
    """Relative spread of each neuron's output gain."""
    saturation: float = 0.0
    """Mean soft-saturation level of the neurons, s * tanh(a / s), in full-scale units (0: none)."""
    saturation_std: float = 0.0
    """Relative spread of the saturation levels."""
    # --- defects -------------------------------------------------------------------------------
    stuck_fraction: float = 0.0
    """Fraction of conductances stuck at a random level (ignore writes, do not drift)."""
    swap_fraction: float = 0.0
    """Fraction of input wires swapped in pairs (hidden permuted connectivity)."""
    # --- time ----------------------------------------------------------------------------------
    drift_nu: float = 0.0
    """Mean drift exponent: G(t) = G(t_p) ((t - t_p + t0) / t0) ** -nu after programming at t_p."""
    drift_nu_std: float = 0.0
    """Device-to-device spread of the drift exponent."""
    drift_t0: float = 20.0
    """Drift reference time t0 in seconds (aihwkit PCM: 20 s)."""
    # --- death -----------------------------------------------------------------------------------
    lifetime_writes: int = 0
    """The device dies after this many write requests (0: never wears out)."""
    mean_lifetime_s: float = 0.0
    """Mean of an exponential random time of death in simulated seconds (0: no random death)."""

    def __post_init__(self) -> None:
        for name in ("levels", "max_pulses", "dac_bits", "adc_bits", "lifetime_writes"):
            if getattr(self, name) < 0:
                raise ValueError(f"device preset {self.name!r}: {name} must be >= 0, got {getattr(self, name)}")
        for name in ("dac_bits", "adc_bits"):
            if getattr(self, name) == 1:
                raise ValueError(f"device preset {self.name!r}: {name}=1 leaves no levels; use 0 (off) or >= 2")
        if self.levels and not self.bounded:
            raise ValueError(f"device preset {self.name!r}: levels={self.levels} needs bounded=True")
        if not 0.0 <= self.stuck_fraction <= 1.0 or not 0.0 <= self.swap_fraction <= 1.0:
            raise ValueError(f"device preset {self.name!r}: stuck_fraction and swap_fraction must be in [0, 1]")
        if self.weight_range <= 0 or self.bias_range <= 0 or self.drift_t0 <= 0:
            raise ValueError(f"device preset {self.name!r}: weight_range, bias_range and drift_t0 must be > 0")

    @property
    def needs_periphery(self) -> bool:
        """True when the output path is more than an exact ReLU (noise, variation, converters)."""
        return bool(
            self.out_noise or self.col_gain_std or self.col_offset_std or self.threshold_mean
            or self.threshold_std or self.neuron_gain_std or self.saturation or self.out_bound or self.adc_bits
        )
