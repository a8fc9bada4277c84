"""An integer arithmetic coder (Witten, Neal & Cleary 1987, "Arithmetic coding for data compression",
CACM 30(6)) driven by an adaptive model: "prediction is compression" made concrete.

The coder keeps an interval [low, high] of `PRECISION`-bit integers. Coding a symbol narrows it to
the symbol's share of the model's cumulative frequency table; whenever the top bit of low and high
agree it is emitted, and the underflow case (low in the second quarter, high in the third) is
deferred with a count of pending bits. With integer frequencies and integer arithmetic (Python's
exact ints), encoder and decoder make bit-identical decisions, so decode(encode(x)) == x exactly.

A model is a callable `model(prefix) -> probabilities` over the alphabet for the next symbol given
the symbols coded so far (a list of ints). `quantize` turns the probabilities into an integer
frequency table in which every symbol has frequency >= 1 (any symbol stays codable); both sides
quantize the same floats the same way, so the model must be deterministic for a given prefix.
The code length of symbol s is -log2(f_s / total) bits up to at most 2 bits for the whole message
plus the integer-rounding of the interval (negligible at 32 bits), so the coded size is within a
few bytes of sum -log2 q(s) over the message.

File layout written by `encode`: 4-byte big-endian symbol count, then the code bits packed MSB
first (the last byte padded with zeros).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

PRECISION = 32
"""Bits of the coder's interval registers."""
_FULL = (1 << PRECISION) - 1
_HALF = 1 << (PRECISION - 1)
_QUARTER = 1 << (PRECISION - 2)
FREQ_BITS = 24
"""Total of a quantized frequency table is at most 2**FREQ_BITS (must stay <= PRECISION - 2)."""
HEADER_BYTES = 4

Model = Callable[[Sequence[int]], Sequence[float]]


class CodingError(ValueError):
    """A model or a code stream the coder cannot use (bad probabilities, truncated or corrupt data)."""


def quantize(probs: Sequence[float], freq_bits: int = FREQ_BITS) -> list[int]:
    """Probabilities (C,) -> cumulative integer frequencies (C+1,), cum[0] = 0, every symbol >= 1.

    f_s = floor(p_s * (2**freq_bits - C)) + 1; total = cum[C] <= 2**freq_bits.
    """
    C = len(probs)
    scale = (1 << freq_bits) - C
    if scale <= 0:
        raise CodingError(f"an alphabet of {C} symbols needs freq_bits > log2({C})")
    cum = [0]
    for p in probs:
        p = float(p)
        if not (p >= 0.0 and math.isfinite(p)):
            raise CodingError(f"the model gave an invalid probability {p!r}")
        cum.append(cum[-1] + int(p * scale) + 1)
    return cum


def code_length_bits(symbols: Sequence[int], model: Model, freq_bits: int = FREQ_BITS) -> tuple[float, float]:
    """(sum -log2 p, sum -log2 q): the ideal code length under the model's float probabilities p and
    under the quantized frequencies q the coder actually uses, in bits."""
    ideal = quant = 0.0
    prefix: list[int] = []
    for s in symbols:
        probs = model(prefix)
        cum = quantize(probs, freq_bits)
        total = float(sum(float(p) for p in probs))
        ideal -= math.log2(float(probs[s]) / total)
        quant -= math.log2((cum[s + 1] - cum[s]) / cum[-1])
        prefix.append(s)
    return ideal, quant


def encode(symbols: Sequence[int], model: Model, freq_bits: int = FREQ_BITS) -> bytes:
    """Arithmetic-code `symbols` (ints in [0, C)) with `model`; returns header + packed code bits."""
    if freq_bits > PRECISION - 2:
        raise CodingError(f"freq_bits={freq_bits} must be <= {PRECISION - 2}")
    low, high, pending = 0, _FULL, 0
    bits: list[int] = []

    def emit(bit: int) -> None:
        nonlocal pending
        bits.append(bit)
        bits.extend([1 - bit] * pending)
        pending = 0

    prefix: list[int] = []
    for s in symbols:
        cum = quantize(model(prefix), freq_bits)
        if not 0 <= s < len(cum) - 1:
            raise CodingError(f"symbol {s} at position {len(prefix)} is outside the model's alphabet of {len(cum) - 1}")
        span = high - low + 1
        high = low + span * cum[s + 1] // cum[-1] - 1
        low = low + span * cum[s] // cum[-1]
        while True:
            if high < _HALF:
                emit(0)
            elif low >= _HALF:
                emit(1)
                low, high = low - _HALF, high - _HALF
            elif low >= _QUARTER and high < 3 * _QUARTER:
                pending += 1
                low, high = low - _QUARTER, high - _QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
        prefix.append(s)
    # Two more bits pick a point inside the final interval (it always holds a whole quarter).
    pending += 1
    emit(0 if low < _QUARTER else 1)
    return len(symbols).to_bytes(HEADER_BYTES, "big") + _pack(bits)


def decode(data: bytes, model: Model, freq_bits: int = FREQ_BITS) -> list[int]:
    """Inverse of `encode` with the same model: the symbol list."""
    if len(data) < HEADER_BYTES:
        raise CodingError(f"a code stream needs a {HEADER_BYTES}-byte header; got {len(data)} bytes")
    n = int.from_bytes(data[:HEADER_BYTES], "big")
    payload = data[HEADER_BYTES:]
    nbits = 8 * len(payload)

    def bit(i: int) -> int:  # zeros past the end, as the encoder's padding
        return (payload[i >> 3] >> (7 - (i & 7))) & 1 if i < nbits else 0

    low, high, value, pos = 0, _FULL, 0, 0
    for _ in range(PRECISION):
        value, pos = 2 * value + bit(pos), pos + 1
    out: list[int] = []
    for _ in range(n):
        cum = quantize(model(out), freq_bits)
        total, span = cum[-1], high - low + 1
        target = ((value - low + 1) * total - 1) // span
        s = _find(cum, target)
        high = low + span * cum[s + 1] // total - 1
        low = low + span * cum[s] // total
        while True:
            if high < _HALF:
                pass
            elif low >= _HALF:
                low, high, value = low - _HALF, high - _HALF, value - _HALF
            elif low >= _QUARTER and high < 3 * _QUARTER:
                low, high, value = low - _QUARTER, high - _QUARTER, value - _QUARTER
            else:
                break
            low, high, value, pos = 2 * low, 2 * high + 1, 2 * value + bit(pos), pos + 1
        out.append(s)
    return out


def payload_bits(data: bytes) -> int:
    """Bits of an encoded stream after its header (a multiple of 8)."""
    return 8 * (len(data) - HEADER_BYTES)


def _find(cum: list[int], target: int) -> int:
    """The s with cum[s] <= target < cum[s+1] (binary search)."""
    if not 0 <= target < cum[-1]:
        raise CodingError("corrupt code stream: the decoded value falls outside the frequency table")
    lo, hi = 0, len(cum) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cum[mid] <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _pack(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)
