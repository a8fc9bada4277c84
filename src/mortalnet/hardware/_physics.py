"""The hidden physics of simulated analog devices. PRIVATE: no learning rule may import this.

Every physical quantity of every device instance lives here, in `_STORE`, keyed by an opaque
token. The handles a learner holds (`mortalnet.hardware.device`) carry only that token, the
shapes and the preset's name, so no hidden tensor is reachable from a learner's objects (a test
walks them). Python cannot enforce privacy; this module and the tests keep it visible instead.

One analog layer with inputs x (B, n) and outputs y (B, m), rows r = 0..n (row n is the bias row,
driven by a constant input 1), columns c = 0..m-1:

  conductance pair   G+[r, c], G-[r, c] in [0, g_max[r, c]] (units of nominal g_max), each a
                     level k in {0..L} times g_max / L; stuck cells ignore writes and drift
  effective weight   W[r, c] = (G+ - G-) * d(t) * scale_r,   scale_r = gain_r * weight_range / sqrt(n)
                     (bias row: bias_range; gain_r = 1 unless the designer drives row r harder),
                     d(t) = ((t - t_prog + t0) / t0) ** -nu  (PCM drift)
  input converter    x <- round(x / a / q) * q * a, a = max_j |x_j| per row, q = 2 / (2^bits - 2)
  analog MAC         z = x W[:n] + W[n] + read noise (each conductance times (1 + s_r xi), see
                     read_noise_coefficients)
  periphery/neuron   I = gain_c (z / u + out_noise xi) + offset_c,  u = a * weight_range / sqrt(n)
                     y_phys = s_c tanh(g_c relu(I - theta_c) / s_c)   (the hidden nonlinearity)
  output converter   y_phys clipped to [-bound, bound], quantized to 2 bound / (2^bits - 2)
  measured output    y = y_phys * u  (nominal units)

Writes: `program` is closed-loop (program-and-verify: the target conductance is reached up to
`program_noise` and the level grid); `update` is open-loop: the controller turns the requested
change into a pulse count per conductance with the *nominal* level size (stochastic rounding,
at most max_pulses), and each pulse moves the cell by its own hidden step (device-to-device
spread, up/down asymmetry, cycle-to-cycle noise), rounded to whole levels.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from mortalnet.hardware.energy import OpCounts
from mortalnet.hardware.interface import DeadDeviceError, DeviceError
from mortalnet.hardware.preset import DevicePreset

_STORE: dict[str, "_DeviceState"] = {}
_TOKENS = itertools.count(1)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), so quantities get independent streams."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


# stream ids of the fixed per-instance quantities
_Q_GMAX, _Q_STEP, _Q_ASYM, _Q_NU, _Q_STUCK, _Q_STUCKV, _Q_COL, _Q_NEURON, _Q_PERM, _Q_DEATH, _Q_NOISE = range(11)
_Q_SEAL = 11  # the sealing key of snapshots (a stream id, though no tensor is drawn from it)

# sealed snapshots: MAGIC | len(fingerprint) (4 bytes, big-endian) | fingerprint | nonce | ciphertext | tag
_SEAL_MAGIC = b"MNSEAL01"
_SEAL_NONCE = 16
_SEAL_TAG = 32  # HMAC-SHA256


def _keystream(key: bytes, nonce: bytes, n: int) -> bytes:
    """n pseudo-random bytes from (key, nonce): SHAKE-256 as a stream cipher."""
    return hashlib.shake_256(b"mortalnet-seal-stream" + key + nonce).digest(n)


def _xor(data: bytes, stream: bytes) -> bytes:
    """data XOR stream (equal lengths), eight bytes at a time."""
    n = len(data) // 8
    words = np.frombuffer(data, np.uint64, count=n) ^ np.frombuffer(stream, np.uint64, count=n)
    return words.tobytes() + bytes(a ^ b for a, b in zip(data[8 * n:], stream[8 * n:]))


class _LayerState:
    """All physical tensors of one analog layer (see the module docstring for the model)."""

    def __init__(self, preset: DevicePreset, fan_in: int, fan_out: int, activation: str, seed: int, index: int,
                 device: torch.device, row_gain: list[float] | None = None) -> None:
        p = self.p = preset
        self.fan_in, self.fan_out, self.linear = fan_in, fan_out, activation == "linear"
        R, C = fan_in + 1, fan_out
        self.L = p.levels

        def gen(q: int) -> torch.Generator:
            return torch.Generator().manual_seed(_mix(seed, index, q))

        def randn(q: int, *shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen(q)).to(device)

        # nominal |w| at full swing per row (R, 1); unbounded (ideal) devices store weights as is
        self.w_full = p.weight_range / math.sqrt(fan_in)
        scale = torch.full((R, 1), self.w_full if p.bounded else 1.0, device=device)
        if row_gain is not None and p.bounded:  # rows driven harder by design: a larger weight range
            scale[:-1] *= torch.tensor(row_gain, dtype=torch.float32, device=device)[:, None]
        scale[-1] = p.bias_range if p.bounded else 1.0
        self.scale = scale
        # conductance range and level size per cell (2, R, C): index 0 = G+, 1 = G-
        self.gmax = (1.0 + p.g_max_dtod * randn(_Q_GMAX, 2, R, C)).clamp_(min=0.1) if p.bounded else None
        self.unit = self.gmax / self.L if self.L else None
        # response of a cell to one pulse, up and down
        self.up = self.down = None  # None: every pulse moves a cell by exactly one level
        if p.step_dtod or p.asymmetry or p.asymmetry_dtod:
            step = (1.0 + p.step_dtod * randn(_Q_STEP, 2, R, C)).clamp_(min=0.05)
            asym = p.asymmetry + p.asymmetry_dtod * randn(_Q_ASYM, 2, R, C)
            self.up = (step * (1.0 + asym / 2)).clamp_(min=0.0)
            self.down = (step * (1.0 - asym / 2)).clamp_(min=0.0)
        # drift exponents
        self.nu = None
        if p.drift_nu or p.drift_nu_std:
            self.nu = (p.drift_nu + p.drift_nu_std * randn(_Q_NU, 2, R, C)).clamp_(min=0.0)
        # stuck cells and the level they are stuck at
        self.stuck = None
        if p.stuck_fraction:
            self.stuck = (torch.rand(2, R, C, generator=gen(_Q_STUCK)) < p.stuck_fraction).to(device)
            u = torch.rand(2, R, C, generator=gen(_Q_STUCKV)).to(device)
            self.stuck_k = torch.floor(u * (self.L + 1)).clamp_(max=self.L) if self.L else u * self.gmax
            if self.nu is not None:
                self.nu[self.stuck] = 0.0  # a stuck cell does not drift either
        # periphery and neurons (C,)
        col = randn(_Q_COL, 2, C)
        self.col_gain = 1.0 + p.col_gain_std * col[0]
        self.col_offset = p.col_offset_std * col[1]
        neu = randn(_Q_NEURON, 3, C)
        self.threshold = p.threshold_mean + p.threshold_std * neu[0]
        self.neuron_gain = (1.0 + p.neuron_gain_std * neu[1]).clamp_(min=0.05)
        self.sat = (p.saturation * (1.0 + p.saturation_std * neu[2])).clamp_(min=0.05) if p.saturation else None
        # hidden wiring: some input wires swapped in pairs
        self.perm = None
        if p.swap_fraction:
            g = gen(_Q_PERM)
            n_swap = int(round(p.swap_fraction * fan_in / 2))
            if n_swap:
                order = torch.randperm(fan_in, generator=g)[: 2 * n_swap].view(n_swap, 2)
                perm = torch.arange(fan_in)
                perm[order[:, 0]], perm[order[:, 1]] = order[:, 1], order[:, 0]
                self.perm = perm.to(device)
        # dynamic state: levels (or conductances), programming times, the nominal record. A new
        # device has every pair at its reference (nominal weights 0), stuck cells where they are.
        self.k = torch.zeros(2, R, C, device=device)
        if p.bounded:
            ref = 0.5 * torch.minimum(self.gmax[0], self.gmax[1])
            self.k[:] = torch.round(ref / self.unit) if self.L else ref
        if self.stuck is not None:
            self.k = torch.where(self.stuck, self.stuck_k, self.k)
        self.t_prog = torch.zeros(2, R, C, device=device) if self.nu is not None else None
        self.nominal = torch.zeros(R, C, device=device)
        self._drift: torch.Tensor | None = None  # cached d(t) (2, R, C); None = all ones
        self._W: torch.Tensor | None = None
        self._V: torch.Tensor | None = None
        self._Vstats: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- conductances ---------------------------------------------------------------------------
    def conductances(self) -> torch.Tensor:
        """(2, R, C) present conductances in units of nominal g_max (drift included)."""
        g = self.k * self.unit if self.L else self.k.clone()
        if self._drift is not None:
            g = g * self._drift
        return g

    def _invalidate(self) -> None:
        self._W = self._V = self._Vstats = None

    def weights(self) -> torch.Tensor:
        """(R, C) effective weights in nominal units (cached until the next write or time step)."""
        if self._W is None:
            g = self.conductances()
            self._W = (g[0] - g[1]) * self.scale
            if self.p.read_noise:
                self._V = (g[0].square() + g[1].square()) * self.scale.square()
        return self._W

    def read_noise_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per column: mean over input rows of V = (G+^2 + G-^2) scale^2 (C,), and the bias row's V (C,).

        Read noise model: every conductance fluctuates by a relative `read_noise` per pass; the
        resulting output noise has variance read_noise^2 sum_j x_j^2 V_jc, which we take with V_jc
        replaced by its column mean (exact when the input pattern is unrelated to the cells'
        conductances, and it avoids a second matrix product per pass).
        """
        if self._Vstats is None:
            self.weights()
            self._Vstats = (self._V[:-1].mean(0), self._V[-1].clone())
        return self._Vstats

    def set_time(self, now: float) -> None:
        """Recompute the drift factors for simulated time `now`."""
        if self.nu is None:
            return
        age = (now - self.t_prog).clamp_(min=0.0)
        self._drift = ((age + self.p.drift_t0) / self.p.drift_t0).pow_(-self.nu) if now > 0 else None
        self._invalidate()

    def _clamp(self, k: torch.Tensor) -> torch.Tensor:
        if self.L:
            return k.clamp_(0.0, float(self.L))
        if self.p.bounded:
            return torch.minimum(k.clamp_(min=0.0), self.gmax)
        return k

    def _settle(self, written: torch.Tensor | None, now: float) -> None:
        """Cells written at time `now` restart drifting: their drifted value becomes the new state."""
        if self._drift is None or written is None:
            return
        settled = self.k * self._drift
        if self.L:
            settled = torch.round(settled)
        self.k = torch.where(written, settled, self.k)
        self.t_prog = torch.where(written, torch.full_like(self.t_prog, now), self.t_prog)
        self._drift = torch.where(written, torch.ones_like(self._drift), self._drift)

    # -- writes ---------------------------------------------------------------------------------
    def program(self, w: torch.Tensor, now: float, noise_gen: torch.Generator) -> int:
        """Closed-loop write of nominal weights w (R, C); returns the number of cells programmed."""
        rel = w / self.scale  # (R, C) in units of nominal g_max
        # both cells sit around a per-pair reference in the middle of the smaller range, so that
        # |w| up to min(g_max+, g_max-) times the row scale is reachable (0 for unbounded cells)
        ref = 0.5 * torch.minimum(self.gmax[0], self.gmax[1]) if self.p.bounded else 0.0
        g = torch.stack([ref + rel / 2, ref - rel / 2])  # (2, R, C)
        if self.p.program_noise:
            g = g + self.p.program_noise * torch.randn(g.shape, generator=noise_gen, device=g.device)
        k = torch.round(g / self.unit) if self.L else g
        k = self._clamp(k)
        if self.stuck is not None:
            k = torch.where(self.stuck, self.stuck_k, k)
        cells = int((k != self.k).sum().item())
        self.k = k
        if self.t_prog is not None:
            self.t_prog.fill_(now)
            self._drift = None
        self.nominal = w.clone()
        self._invalidate()
        return cells

    def update(self, dw: torch.Tensor, now: float, noise_gen: torch.Generator) -> int:
        """Open-loop write of a requested change dw (R, C); returns the pulses fired.

        The controller sends one pulse train per pair: n pulses up on G+ and n down on G-, with
        n = the request in *nominal* levels, stochastically rounded (unbiased) and clipped to
        max_pulses. Each cell answers with its own hidden step size (device-to-device spread,
        up/down asymmetry) and cycle-to-cycle noise, and moves by a whole number of levels.
        """
        self.nominal += dw
        h = dw / (2 * self.scale)  # (R, C): requested change of G+ (G- gets -h), units of g_max
        if not self.L:
            return self._update_continuous(h, now)
        t = h.mul_(self.L)  # requested pulses per pair, in nominal levels
        n = torch.round(t)
        if (t - n).abs_().max() > 1e-3:  # not whole pulses: unbiased stochastic rounding
            n = torch.floor(t.add_(torch.rand(t.shape, generator=noise_gen, device=t.device)))
        if self.p.max_pulses:
            n.clamp_(-self.p.max_pulses, self.p.max_pulses)
        idx = torch.nonzero(n.view(-1)).squeeze(1)  # (M,) pairs that receive pulses
        if idx.numel() == 0:
            return 0
        m = n.view(-1)[idx]
        dn = torch.stack([m, -m])  # (2, M) signed pulses per cell
        if self.up is not None:
            mean = dn * torch.where(dn > 0, self.up.view(2, -1)[:, idx], self.down.view(2, -1)[:, idx])
        else:
            mean = dn
        if self.p.step_c2c:
            mean = mean + self.p.step_c2c * dn.abs().sqrt() * torch.randn(dn.shape, generator=noise_gen,
                                                                          device=dn.device)
        dk = torch.floor(mean + torch.rand(dn.shape, generator=noise_gen, device=dn.device))
        k = self.k.view(2, -1)
        cur = k[:, idx]
        if self._drift is not None:  # written cells restart drifting from their drifted value
            d = self._drift.view(2, -1)
            cur = torch.round(cur * d[:, idx])
            d[:, idx] = 1.0
            self.t_prog.view(2, -1)[:, idx] = now
        new = (cur + dk).clamp_(0.0, float(self.L))
        if self.stuck is not None:
            new = torch.where(self.stuck.view(2, -1)[:, idx], self.stuck_k.view(2, -1)[:, idx], new)
        k[:, idx] = new
        if self._W is not None:  # refresh the cached effective weights of the written pairs only
            g = new * self.unit.view(2, -1)[:, idx]
            sc = self.scale.view(-1)[idx // self.fan_out]
            self._W.view(-1)[idx] = (g[0] - g[1]) * sc
            if self._V is not None:
                self._V.view(-1)[idx] = (g[0].square() + g[1].square()) * sc.square()
                self._Vstats = None
        return 2 * int(m.abs().sum().item())

    def _update_continuous(self, h: torch.Tensor, now: float) -> int:
        """Continuous cells (the ideal device): the change itself, times the cell's hidden response."""
        req = torch.stack([h, -h])  # (2, R, C)
        dk = req * torch.where(req > 0, self.up, self.down) if self.up is not None else req
        written = dk != 0
        if self._drift is not None:
            self._settle(written, now)
        self.k = self._clamp(self.k + dk)
        if self.stuck is not None:
            self.k = torch.where(self.stuck, self.stuck_k, self.k)
        self._invalidate()
        return int(written.sum().item())

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, input_pert: torch.Tensor | None, total_pert: torch.Tensor | None,
                noise_gen: torch.Generator, counts: OpCounts) -> torch.Tensor:
        """Measured outputs (B, C) for inputs x (B, n); see the module docstring."""
        p = self.p
        B = x.shape[0]
        if input_pert is not None:
            x = x + input_pert
        if self.perm is not None:
            x = x[:, self.perm]  # the wires actually connected to rows 0..n-1
        alpha = None
        if p.dac_bits or p.needs_periphery:
            alpha = x.abs().amax(dim=1, keepdim=True)  # (B, 1) noise management: abs-max scaling
            alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
        if p.dac_bits:
            q = 2.0 / (2**p.dac_bits - 2)
            x = torch.round(x / (alpha * q)) * (alpha * q)
        W = self.weights()
        z = torch.addmm(W[-1], x, W[:-1])  # (B, C) = x W + b
        if p.read_noise:
            v_rows, v_bias = self.read_noise_coefficients()
            var = torch.addr(v_bias, x.square().sum(1), v_rows)  # (B, C) = |x|^2 mean_j V_jc + V_bias,c
            z += p.read_noise * var.sqrt_() * torch.randn(z.shape, generator=noise_gen, device=z.device)
        if total_pert is not None:
            z = z + total_pert
        if not p.needs_periphery:
            y = z if self.linear else torch.relu(z)
        else:
            u = alpha * self.w_full  # (B, 1): nominal value of one full-scale unit of current
            I = z / u
            if p.out_noise:
                I += p.out_noise * torch.randn(I.shape, generator=noise_gen, device=I.device)
            I = I * self.col_gain + self.col_offset
            if self.linear:
                a = I * self.neuron_gain
            else:
                a = torch.relu(I - self.threshold) * self.neuron_gain
                if self.sat is not None:
                    a = self.sat * torch.tanh(a / self.sat)
            if p.out_bound:
                a = a.clamp(-p.out_bound, p.out_bound)
            if p.adc_bits:
                q = 2.0 * p.out_bound / (2**p.adc_bits - 2)
                a = torch.round(a / q) * q
            y = a * u
        counts.macs += B * (self.fan_in + 1) * self.fan_out
        counts.forward_rows += B
        if p.dac_bits:
            counts.dac_conversions += B * self.fan_in
        if p.adc_bits:
            counts.adc_conversions += B * self.fan_out
        return y

    # -- bookkeeping ------------------------------------------------------------------------------
    def hidden_tensors(self) -> list[torch.Tensor]:
        """Every tensor of this layer's physical state (for the boundary tests)."""
        names = ("scale", "gmax", "unit", "up", "down", "nu", "stuck", "stuck_k", "col_gain", "col_offset",
                 "threshold", "neuron_gain", "sat", "perm", "k", "t_prog", "nominal", "_drift", "_W", "_V")
        return [t for t in (getattr(self, n, None) for n in names) if isinstance(t, torch.Tensor)]


class _DeviceState:
    """One physical device instance: its layers, clock, noise source, counters and fate."""

    def __init__(self, preset: DevicePreset, shapes: list[tuple[int, int]], activations: list[str], seed: int,
                 device: torch.device, row_gains: list[list[float] | None] | None = None) -> None:
        self.preset, self.shapes, self.activations, self.seed = preset, shapes, activations, seed
        self.row_gains = row_gains or [None] * len(shapes)
        self.torch_device = device
        self.layers = [_LayerState(preset, a, b, act, seed, i, device, gain)
                       for i, ((a, b), act, gain) in enumerate(zip(shapes, activations, self.row_gains))]
        self.noise_gen = torch.Generator(device=device)
        self.noise_gen.manual_seed(_mix(seed, _Q_NOISE))
        self.time = 0.0
        self.alive = True
        self.death_reason = ""
        self.writes = 0
        self.death_time = math.inf
        if preset.mean_lifetime_s:
            u = torch.rand(1, generator=torch.Generator().manual_seed(_mix(seed, _Q_DEATH))).item()
            self.death_time = -preset.mean_lifetime_s * math.log1p(-u)  # exponential lifetime
        self.counts = OpCounts()
        self.evaluation_counts = OpCounts()  # what passes inside Device.isolated() cost (kept apart)
        # the instance's sealing key (see `export`): a function of its construction inputs only, so a
        # fresh process that rebuilds the same instance (same preset, shapes, seed) can take back its
        # own snapshots; it stays here and is never handed to a `Device` or `DeviceLayer`
        secret = _mix(seed, _Q_SEAL).to_bytes(8, "big")
        self._seal_key = hashlib.sha256(b"mortalnet-seal-key" + secret + self.fingerprint().encode()).digest()

    def describe(self) -> str:
        return f"device {self.preset.name!r} seed {self.seed}"

    def check_alive(self) -> None:
        if not self.alive:
            raise DeadDeviceError(
                f"{self.describe()} is dead ({self.death_reason}); it refuses to compute, to be written or "
                "read. Its knowledge survives only where it was copied or distilled before it died."
            )

    def die(self, reason: str) -> None:
        if self.alive:
            self.alive = False
            self.death_reason = reason

    def advance(self, seconds: float) -> None:
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"simulated time only moves forward by a finite amount; got {seconds} s")
        self.time += float(seconds)
        if self.alive and self.time >= self.death_time:
            self.die(f"died at simulated time {self.death_time:.4g} s, a random time of death")
        for layer in self.layers:
            layer.set_time(self.time)

    def count_write(self) -> None:
        self.writes += 1
        self.counts.write_requests += 1
        if self.preset.lifetime_writes and self.writes >= self.preset.lifetime_writes:
            self.die(f"worn out after {self.writes} write requests")

    # -- sealed snapshots (simulation bookkeeping for checkpoints; same instance only) ----------
    def fingerprint(self) -> str:
        return json.dumps({"preset": asdict(self.preset), "seed": self.seed, "shapes": self.shapes,
                           "activations": self.activations, "row_gains": self.row_gains}, sort_keys=True)

    def _seal_subkey(self, purpose: bytes) -> bytes:
        return hmac.new(self._seal_key, purpose, hashlib.sha256).digest()

    def export(self) -> torch.Tensor:
        """The physical state as a sealed blob (1-D uint8): encrypted and authenticated for this instance.

        Layout: MAGIC | len(fingerprint) | fingerprint (public: preset, seed, shapes) | nonce |
        ciphertext | tag. The plaintext (levels, programming times, nominal weights, noise-generator
        state, clock, counters) is serialized with safetensors, XORed with a SHAKE-256 keystream and
        authenticated with HMAC-SHA256 over everything before the tag. The nonce is an HMAC of the
        plaintext (a synthetic IV: the same state gives the same blob, different states never share
        a keystream). Keys come from `_seal_key`, derived from the instance's construction inputs.

        What this guarantees, and what not: a learning rule that uses the handles (as every rule in
        the library does) cannot read the physical state out of a checkpoint, nor make a device accept
        a state that this instance did not export (another instance's, or an edited one). It is not
        protection against arbitrary code in the same process: such code can import this module,
        read `_STORE` directly, or recompute the key from the seed, as anyone who reads this source can.
        """
        from safetensors.torch import save

        t: dict[str, torch.Tensor] = {
            "noise_gen": self.noise_gen.get_state(),
            "scalars": torch.tensor([self.time, float(self.alive), float(self.writes), self.death_time],
                                    dtype=torch.float64),
            "counts": torch.tensor(list(self.counts.as_dict().values()), dtype=torch.int64),
            "death_reason": torch.frombuffer(bytearray((self.death_reason or " ").encode()), dtype=torch.uint8),
        }
        for i, layer in enumerate(self.layers):
            t[f"layer{i}.k"] = layer.k.cpu()
            t[f"layer{i}.nominal"] = layer.nominal.cpu()
            if layer.t_prog is not None:
                t[f"layer{i}.t_prog"] = layer.t_prog.cpu()
        plain = save({k: v.contiguous() for k, v in t.items()})
        fp = self.fingerprint().encode()
        nonce = hmac.new(self._seal_subkey(b"nonce"), plain, hashlib.sha256).digest()[:_SEAL_NONCE]
        body = _SEAL_MAGIC + len(fp).to_bytes(4, "big") + fp + nonce
        body += _xor(plain, _keystream(self._seal_subkey(b"encrypt"), nonce, len(plain)))
        tag = hmac.new(self._seal_subkey(b"mac"), body, hashlib.sha256).digest()
        return torch.frombuffer(bytearray(body + tag), dtype=torch.uint8).clone()

    def restore(self, blob: torch.Tensor) -> None:
        """Take back a blob made by `export` of this same instance; DeviceError for anything else."""
        from safetensors.torch import load

        if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8 or blob.dim() != 1:
            raise DeviceError("not a sealed device state (expected the 1-D uint8 tensor of Device.export_state())")
        data = blob.cpu().numpy().tobytes()
        head = len(_SEAL_MAGIC) + 4
        n_fp = int.from_bytes(data[len(_SEAL_MAGIC):head], "big") if len(data) >= head else 0
        if not data.startswith(_SEAL_MAGIC) or len(data) < head + n_fp + _SEAL_NONCE + _SEAL_TAG:
            raise DeviceError("not a sealed device state (unknown format or truncated)")
        theirs = data[head: head + n_fp].decode(errors="replace")
        if theirs != self.fingerprint():
            try:
                other = json.loads(theirs)
                name = f"device {other['preset']['name']!r} seed {other['seed']}"
            except (ValueError, KeyError, TypeError):
                name = "an unreadable device"
            raise DeviceError(
                f"a sealed state of {name} cannot be restored onto {self.describe()}: physical state belongs "
                "to one instance. To move knowledge to another instance, copy its nominal weights with program()."
            )
        body, tag = data[:-_SEAL_TAG], data[-_SEAL_TAG:]
        if not hmac.compare_digest(tag, hmac.new(self._seal_subkey(b"mac"), body, hashlib.sha256).digest()):
            raise DeviceError(
                f"sealed device state does not verify for {self.describe()}: it was altered, forged, or sealed "
                "by another instance. Only a snapshot this instance exported, unchanged, can be restored."
            )
        nonce = body[head + n_fp: head + n_fp + _SEAL_NONCE]
        cipher = body[head + n_fp + _SEAL_NONCE:]
        try:
            t = load(_xor(cipher, _keystream(self._seal_subkey(b"encrypt"), nonce, len(cipher))))
        except Exception as err:  # noqa: BLE001 - authenticated but undecodable: a bug, not an attack
            raise DeviceError(f"not a sealed device state ({err})") from None
        time, alive, writes, death_time = t["scalars"].tolist()
        counts = OpCounts(*[int(v) for v in t["counts"].tolist()])
        self.noise_gen.set_state(t["noise_gen"])
        self.time, self.alive, self.writes, self.death_time = time, bool(alive), int(writes), death_time
        self.death_reason = bytes(t["death_reason"].numpy().tobytes()).decode().strip()
        self.counts = counts
        dev = self.torch_device
        for i, layer in enumerate(self.layers):
            layer.k = t[f"layer{i}.k"].to(dev)
            layer.nominal = t[f"layer{i}.nominal"].to(dev)
            if layer.t_prog is not None:
                layer.t_prog = t[f"layer{i}.t_prog"].to(dev)
            layer._drift = None
            layer.set_time(self.time)
            layer._invalidate()


# -- the store ------------------------------------------------------------------------------------
def new_device(preset: DevicePreset, shapes: list[tuple[int, int]], activations: list[str], seed: int,
               device: torch.device, row_gains: list[list[float] | None] | None = None) -> str:
    """Build an instance, keep it in the store, return its opaque token."""
    token = f"dev-{next(_TOKENS)}"
    _STORE[token] = _DeviceState(preset, shapes, activations, seed, device, row_gains)
    return token


def lookup(token: str) -> _DeviceState:
    try:
        return _STORE[token]
    except KeyError:
        raise DeviceError(f"no device with token {token!r} (it was released)") from None


def release(token: str) -> None:
    """Forget an instance (called when its last handle is garbage-collected)."""
    _STORE.pop(token, None)


def hidden_tensors(token: str) -> list[torch.Tensor]:
    """Every hidden tensor of an instance (tests use this to check the boundary)."""
    return [t for layer in lookup(token).layers for t in layer.hidden_tensors()]


def state_summary(token: str) -> dict[str, Any]:
    """A few hidden statistics, for tests and debugging only."""
    s = lookup(token)
    return {"time": s.time, "alive": s.alive, "writes": s.writes}
