"""The registered device presets: `ideal`, `mild`, `harsh`.

Sources for the numbers (see also /spec ANCHORS.md):
  * aihwkit (IBM analog hardware acceleration kit) defaults: IOParameters inp_res = 1/(2^7 - 2)
    (7-bit DAC), out_res = 1/(2^9 - 2) (9-bit ADC), out_bound = 12, out_noise = 0.06;
    pulsed devices (ConstantStepDevice / PulsedDevice): dw_min = 0.001 on w in [-0.6, 0.6]
    (~1200 steps across the range), dw_min_dtod = 0.3, dw_min_std = 0.3, w_max_dtod = 0.3,
    up_down_dtod = 0.01; UpdateParameters desired_bl = 31 pulses per update;
    PCM inference noise model: drift G(t) ~ (t / t0)^-nu with t0 = 20 s, nu ~ 0.05-0.1,
    programming noise of ~0.3-1 uS on g_max = 25 uS (~1-4 %).
  * Le Gallo et al., Nature Electronics 2023 (14 nm PCM chip): 8-bit-class converters.
Where no published default exists the value is marked "our choice" and kept small for `mild`.
`ideal` turns every non-ideality off: a device layer then computes relu(x W + b) exactly (up to
float rounding) and applies requested updates exactly; use it to check learning rules.
"""

from __future__ import annotations

from mortalnet.hardware import register_device
from mortalnet.hardware.preset import DevicePreset


@register_device("ideal")
def ideal() -> DevicePreset:
    """No non-ideality at all: a digital ReLU layer in analog clothing."""
    return DevicePreset(name="ideal", levels=0, bounded=False)


@register_device("mild")
def mild() -> DevicePreset:
    """A well-behaved training chip: aihwkit's defaults where it has them, small values elsewhere."""
    return DevicePreset(
        name="mild",
        levels=600,  # aihwkit ConstantStep: dw_min 0.001 on [-0.6, 0.6]; our pair gives 2 x 600 steps
        bounded=True,
        weight_range=10.0,  # our choice: trained FF weights reach |w| sqrt(fan_in) ~ 8 (measured, ffnew.m recipe)
        bias_range=1.0,  # our choice: FF biases stay below ~0.1
        g_max_dtod=0.3,  # aihwkit w_max_dtod = 0.3
        program_noise=0.005,  # our choice: 0.5 % of g_max left by program-and-verify (aihwkit PCM: ~1 % before)
        step_dtod=0.3,  # aihwkit dw_min_dtod = 0.3
        step_c2c=0.3,  # aihwkit dw_min_std = 0.3
        asymmetry=0.0,  # aihwkit up_down = 0
        asymmetry_dtod=0.01,  # aihwkit up_down_dtod = 0.01
        max_pulses=31,  # aihwkit UpdateParameters desired_bl = 31
        dac_bits=7,  # aihwkit inp_res = 1/(2^7 - 2)
        adc_bits=9,  # aihwkit out_res = 1/(2^9 - 2)
        out_bound=12.0,  # aihwkit out_bound = 12
        read_noise=0.01,  # our choice: 1 % per-pass conductance noise (PCM read noise is a few %)
        out_noise=0.06,  # aihwkit out_noise = 0.06
        col_gain_std=0.02,  # our choice: 2 % periphery gain mismatch
        col_offset_std=0.01,  # our choice
        threshold_std=0.02,  # our choice: neuron thresholds near 0
        neuron_gain_std=0.02,  # our choice
        saturation=0.0,  # no soft saturation; the ADC range still clips at out_bound
        stuck_fraction=0.001,  # our choice: 0.1 % stuck cells (aihwkit corrupt_devices_prob, default 0)
        drift_nu=0.05,  # aihwkit PCM drift: nu ~ 0.05 (ANCHORS: 0.05-0.1)
        drift_nu_std=0.01,  # our choice: small device-to-device spread of nu
        drift_t0=20.0,  # aihwkit PCM drift reference t0 = 20 s
    )


@register_device("harsh")
def harsh() -> DevicePreset:
    """A cheap, sloppy chip: few levels, noisy asymmetric writes, coarse converters, varied neurons."""
    return DevicePreset(
        name="harsh",
        levels=64,  # our choice: 6-bit cells
        bounded=True,
        weight_range=10.0,
        bias_range=1.0,
        g_max_dtod=0.3,  # aihwkit w_max_dtod = 0.3
        program_noise=0.03,  # aihwkit PCM programming noise up to ~1 uS of g_max = 25 uS (~4 %)
        step_dtod=0.5,  # our choice: above aihwkit's 0.3
        step_c2c=1.0,  # our choice: noisier than aihwkit's 0.3 (its ReRAM preset uses 3.75)
        asymmetry=0.1,  # our choice: 10 % mean up/down mismatch
        asymmetry_dtod=0.1,  # our choice
        max_pulses=15,  # our choice: half of aihwkit's desired_bl
        dac_bits=5,  # our choice: coarser than aihwkit's 7 bits
        adc_bits=6,  # our choice: coarser than aihwkit's 9 bits
        out_bound=8.0,  # our choice: smaller output range than aihwkit's 12
        read_noise=0.03,  # our choice
        out_noise=0.1,  # our choice: above aihwkit's 0.06
        col_gain_std=0.1,  # our choice
        col_offset_std=0.05,  # our choice
        threshold_mean=0.05,  # our choice: neurons need a little current before they fire
        threshold_std=0.1,  # our choice
        neuron_gain_std=0.1,  # our choice
        saturation=4.0,  # our choice: soft saturation well inside the output range
        saturation_std=0.25,  # our choice
        stuck_fraction=0.01,  # our choice: 1 % stuck cells
        drift_nu=0.1,  # ANCHORS: nu up to 0.1
        drift_nu_std=0.03,  # our choice
        drift_t0=20.0,  # aihwkit PCM drift reference t0 = 20 s
    )
