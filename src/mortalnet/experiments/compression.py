"""compression: prediction is compression (Sutskever's talks; Shannon 1948; Witten, Neal & Cleary 1987).

A next-character model trained on the first part of a text codes the held-out rest with a real
arithmetic coder (`coding/arithmetic.py`): the file it writes has about sum -log2 p(next char)
bits, so better prediction is a smaller file. The file is decoded again and compared with the text.

Text: Aesop's fables (or the built-in excerpt), normalized to the 30 symbols of `data/text.py`.
Split by position: characters [0, a) train, [a, b) validate (watched during training only),
[b, end) are the held-out text that is measured and coded (a = train_fraction, b = a +
valid_fraction of the length). Each model predicts a character from the `context` characters
before it (start-padded, so the held-out text is coded without the training text before it).

Models (both trained by the shared loop, `training.fit`):
  * backprop: a ReLU MLP on the one-hot context, softmax output, cross-entropy;
  * ff: supervised Forward-Forward on sequences (Hinton 2022 sec. 3.5, teacher-forcing negatives);
    its probabilities are the linear softmax readout of one neutral pass (the goodness test gives
    a ranking, not probabilities, so it cannot drive a coder without C forward passes per character).

Baselines on the same held-out bytes: the uniform code (log2 30 bits/char), the unigram
frequencies of the training part, and gzip / bz2 / xz (Python's zlib, bz2, lzma) both alone and
given the training text (size(train + held-out) - size(train)), since the models have read it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mortalnet.config import ConfigError
from mortalnet.coding import arithmetic
from mortalnet.data.text import ALPHABET, BUILTIN_TEXT, TextError, encode, normalize
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, RunContext, check_models
from mortalnet.nets.char_model import bits_per_char, coder_model, model_inputs, next_char_logits, padded_windows
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.report.tables import mean_sd_text, runs_by_preset
from mortalnet.rules.backprop import BackpropConfig, BackpropLearner
from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.training import TrainingConfig, fit

MODELS = ("backprop", "ff")
COMPRESSORS = ("gzip", "bz2", "xz")


@dataclass(frozen=True)
class CompressionTextConfig:
    """Which text, and where it is split (by position)."""

    source: Literal["file", "builtin"] = "file"
    """file: read `path`; builtin: the 3000-character Aesop excerpt in mortalnet.data.text (no file)."""
    path: str = "../shared/data/aesop.txt"
    """Text file (source file), relative to the working directory; normalized to 30 symbols."""
    train_fraction: float = 0.8
    """First part of the text (by position) used for training."""
    valid_fraction: float = 0.1
    """Next part, watched during training; the rest is the held-out text that is measured and coded."""


@dataclass(frozen=True)
class CompressionConfig:
    """Next-character models as arithmetic-coder drivers vs general-purpose compressors."""

    data: CompressionTextConfig = field(default_factory=CompressionTextConfig)
    """The text and its train / validation / held-out split."""
    context: int = 8
    """Characters before the predicted one that a model sees."""
    models: tuple[str, ...] = MODELS
    """Which models to train and code with: backprop, ff (the first is the headline)."""
    hidden: tuple[int, ...] = (512, 512)
    """Hidden widths of the backprop MLP."""
    backprop: BackpropConfig = field(default_factory=lambda: BackpropConfig(
        optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.001), dropout=0.5))
    """Optimizer and regularization of the backprop MLP (24k characters overfit easily: strong dropout)."""
    backprop_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=20, schedule="cosine"))
    """Epochs, batch size, schedule of the backprop MLP."""
    ff_hidden: tuple[int, ...] = (1000, 1000, 1000)
    """Hidden widths of the FF sequence model."""
    rule: FFConfig = field(default_factory=lambda: FFConfig(
        optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9, weight_decay=0.001), readout_lr=0.03))
    """FF hyper-parameters (a slower softmax readout than ffnew.m's 0.1: its probabilities drive the coder)."""
    ff_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=20))
    """Epochs, batch size, schedule of the FF model."""
    freq_bits: int = 24
    """The coder's frequency tables total at most 2**freq_bits (every symbol >= 1)."""
    compress_level: int = 9
    """Level of gzip and bz2, 1..9 (xz uses preset 9 | extreme)."""


def _fast() -> CompressionConfig:
    return CompressionConfig(
        data=CompressionTextConfig(source="builtin"),
        context=8,
        hidden=(128,),
        backprop_training=TrainingConfig(epochs=12, batch_size=50, schedule="cosine"),
        ff_hidden=(200, 200),
        ff_training=TrainingConfig(epochs=6, batch_size=50),
    )


def _paper() -> CompressionConfig:
    """The defaults: context 8, backprop MLP 2 x 512 with dropout 0.5, lr 0.1, 20 epochs; FF 3 x 1000 with
    readout lr 0.03, 20 epochs (chosen among a few settings by the VALIDATION part's bits per character
    in short runs, never the held-out text's)."""
    return CompressionConfig()


def check_config(config: CompressionConfig) -> None:
    """Raise ConfigError for a setting that would fail only after training (called before any model trains)."""
    check_models(config.models, MODELS)
    if config.context < 1:
        raise ConfigError(f"context must be >= 1 character, got {config.context}")
    if not 1 <= config.compress_level <= 9:
        raise ConfigError(f"compress_level must be in 1..9 (gzip and bz2 levels), got {config.compress_level}")
    # every symbol needs a frequency >= 1 in a table of total <= 2**freq_bits, within the coder's registers
    low, high = math.ceil(math.log2(len(ALPHABET) + 1)), arithmetic.PRECISION - 2
    if not low <= config.freq_bits <= high:
        raise ConfigError(f"freq_bits must be in {low}..{high} ({len(ALPHABET)} symbols, a {arithmetic.PRECISION}-bit "
                          f"coder), got {config.freq_bits}")


def load_text(config: CompressionTextConfig) -> tuple[str, str]:
    """(normalized text, origin)."""
    if config.source == "builtin":
        return normalize(BUILTIN_TEXT), "builtin:aesop-excerpt"
    path = Path(config.path)
    if not path.is_file():
        raise TextError(f"text file {path} (resolved: {path.resolve()}) does not exist; set data.path=FILE "
                        "or data.source=builtin for the built-in excerpt")
    return normalize(path.read_text(encoding="utf-8", errors="replace")), str(path)


def split_points(n: int, config: CompressionTextConfig) -> tuple[int, int]:
    """Character positions (a, b): train [0, a), valid [a, b), held-out [b, n)."""
    tf, vf = config.train_fraction, config.valid_fraction
    if not (0 < tf < 1 and 0 <= vf < 1 and tf + vf < 1):
        raise ConfigError(f"need 0 < data.train_fraction, 0 <= data.valid_fraction, sum < 1; got {tf}, {vf}")
    a, b = int(n * tf), int(n * (tf + vf))
    if a < 1 or b >= n:
        raise TextError(f"{n} characters are too few for the split {tf}/{vf}/rest")
    return a, b


def compressed_sizes(held: bytes, train: bytes, level: int) -> dict[str, dict[str, Any]]:
    """Bytes of gzip / bz2 / xz of `held` alone and given `train` (size(train+held) - size(train)),
    and whether decompressing `held`'s file gives it back."""
    fns = {
        "gzip": (lambda b: gzip.compress(b, compresslevel=level, mtime=0), gzip.decompress),
        "bz2": (lambda b: bz2.compress(b, compresslevel=level), bz2.decompress),
        "xz": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    }
    out = {}
    for name, (comp, decomp) in fns.items():
        alone = comp(held)
        out[name] = {"alone": len(alone), "given_train": len(comp(train + held)) - len(comp(train)),
                     "roundtrip_exact": decomp(alone) == held}
    return out


@register_experiment("compression")
class Compression(Experiment):
    name = "compression"
    description = ("prediction is compression: next-character models (backprop, FF) drive a real arithmetic "
                   "coder on held-out Aesop text, vs gzip / bz2 / xz")
    Config = CompressionConfig
    presets = {"fast": _fast, "paper": _paper}
    references = {}
    headline = "next-character error of the headline model on the held-out text; bits per character below"

    def _learner(self, model: str, config: CompressionConfig, ctx: RunContext):
        C, c = len(ALPHABET), config.context
        if model == "backprop":
            return BackpropLearner(config.backprop, config.hidden, C * c, C, seed=ctx.seed, device=ctx.device)
        if model == "ff":
            return FFLearner(config.rule, config.ff_hidden, C * (c + 1), C, seed=ctx.seed, device=ctx.device)
        raise ConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")

    def run(self, config: CompressionConfig, ctx: RunContext) -> dict[str, Any]:
        check_config(config)
        text, origin = load_text(config.data)
        a, b = split_points(len(text), config.data)
        C, c, dev = len(ALPHABET), config.context, ctx.device
        parts = {"train": text[:a], "valid": text[a:b], "test": text[b:]}
        symbols = {k: encode(t) for k, t in parts.items()}
        windows = {k: (padded_windows(s, c, C), s) for k, s in symbols.items()}  # (L, c), (L,)

        results: dict[str, Any] = {}
        histories: dict[str, list] = {}
        # every model is built before any trains, so that a rule setting its constructor refuses costs no training
        learners = {m: self._learner(m, config, ctx) for m in config.models}
        for model, learner in learners.items():
            training = config.backprop_training if model == "backprop" else config.ff_training
            training = ctx.loop_settings(training)
            sub, resume = ctx.sub_run(model)

            def xy(k: str, model=model):
                w, y = windows[k]
                return model_inputs(model, w, C).to(dev), y.to(dev)

            valid = xy("valid") if len(parts["valid"]) else None
            fitted = fit(learner, xy("train"), valid, training, ctx.seed, run=sub, resume=resume)
            histories[model] = fitted.history
            res: dict[str, Any] = {"epochs": training.epochs, "train_seconds": fitted.train_seconds}
            for k in ("train", "valid", "test"):
                if not len(parts[k]):
                    continue
                x, y = xy(k)
                logits = next_char_logits(model, learner, x)
                res[f"{k}_bits_per_char"] = bits_per_char(logits, y)
                res[f"{k}_error"] = (logits.argmax(1) != y).float().mean().item()
            res.update(self._code(model, learner, config, symbols["test"].tolist()))
            results[model] = res

        held, train_bytes = parts["test"].encode("ascii"), parts["train"].encode("ascii")
        n = len(held)
        sizes = compressed_sizes(held, train_bytes, config.compress_level)
        counts = torch.bincount(symbols["train"], minlength=C).double() + 1.0  # add-one unigram of the training part
        unigram = float(-torch.log2(counts / counts.sum())[symbols["test"]].mean())
        head = config.models[0]
        summary: dict[str, Any] = {
            "test_error": results[head]["test_error"],
            "headline_model": head,
            "test_bits_per_char": results[head]["test_bits_per_char"],
            "models": results,
            "compressors": {k: {**v, "alone_bits_per_char": 8 * v["alone"] / n,
                                "given_train_bits_per_char": 8 * v["given_train"] / n} for k, v in sizes.items()},
            "uniform_bits_per_char": math.log2(C),
            "unigram_bits_per_char": unigram,
            "text": {"source": origin, "characters": len(text), "train_chars": a, "valid_chars": b - a,
                     "test_chars": n, "test_span": [b, len(text)], "alphabet": C,
                     "raw_test_bytes": n},
            "plots": [],
        }
        if ctx.run is not None:
            summary["plots"] = [self._plot(summary, ctx)]
        return summary

    def _code(self, model: str, learner, config: CompressionConfig, held: list[int]) -> dict[str, Any]:
        """Arithmetic-code the held-out symbols with the model, decode, compare; sizes in bytes and bits."""
        fn = coder_model(model, learner, config.context, len(ALPHABET))
        t0 = time.perf_counter()
        data = arithmetic.encode(held, fn, config.freq_bits)
        t1 = time.perf_counter()
        decoded = arithmetic.decode(data, fn, config.freq_bits)
        t2 = time.perf_counter()
        ideal, quantized = arithmetic.code_length_bits(held, fn, config.freq_bits)
        payload = arithmetic.payload_bits(data)
        return {
            "coded_bytes": len(data),
            "coded_payload_bits": payload,
            "coded_bits_per_char": payload / len(held),
            "ideal_bits": ideal,
            "quantized_bits": quantized,
            "coding_overhead_bits": payload - ideal,
            "roundtrip_exact": decoded == held,
            "encode_seconds": t1 - t0,
            "decode_seconds": t2 - t1,
        }

    def _plot(self, summary: dict[str, Any], ctx: RunContext) -> str:
        labels, values = [], []
        for m, r in summary["models"].items():
            labels.append(f"{m} (coded)")
            values.append(r["coded_bits_per_char"])
        for k, r in summary["compressors"].items():
            labels += [k, f"{k} | train"]
            values += [r["alone_bits_per_char"], r["given_train_bits_per_char"]]
        labels.append("unigram")
        values.append(summary["unigram_bits_per_char"])
        return plots.bars(labels, values, ctx.run.plots / "bits_per_char.png",
                          f"{self.name} ({ctx.preset}): held-out text, {summary['text']['test_chars']} chars",
                          "bits per character", hline=summary["uniform_bits_per_char"],
                          hline_label="uniform (log2 30)")

    def report_section(self, summaries: list[dict]) -> str:
        """Bits per character of each model's arithmetic-coded file and of each compressor (mean +- sd)."""
        out = []
        for preset, runs in runs_by_preset(summaries):
            t = runs[0]["text"]
            out.append(f"**compression / {preset}** ({len(runs)} seed(s); {t['source']}, {t['train_chars']} training "
                       f"characters, held-out text = characters {t['test_span'][0]}..{t['test_span'][1]} "
                       f"({t['test_chars']} characters, 30 symbols))\n")
            out.append("| coder | bits/char (model, -log2 p) | bits/char (file) | file bytes | decodes exactly |")
            out.append("|---|---|---|---|---|")
            for model in runs[0]["models"]:
                rows = [r["models"][model] for r in runs if model in r["models"]]
                ok = all(r["roundtrip_exact"] for r in rows)
                out.append(f"| arithmetic coder + {model} | {mean_sd_text([r['test_bits_per_char'] for r in rows], '.3f')} "
                           f"| {mean_sd_text([r['coded_bits_per_char'] for r in rows], '.3f')} "
                           f"| {mean_sd_text([r['coded_bytes'] for r in rows], '.0f')} | {'yes' if ok else 'NO'} |")
            for k, r in runs[0]["compressors"].items():
                out.append(f"| {k} | - | {r['alone_bits_per_char']:.3f} | {r['alone']} "
                           f"| {'yes' if r.get('roundtrip_exact') else 'NO'} |")
                out.append(f"| {k}, given the training text | - | {r['given_train_bits_per_char']:.3f} "
                           f"| {r['given_train']} | - |")
            out.append(f"| unigram (training counts) | {runs[0]['unigram_bits_per_char']:.3f} | - | - | - |")
            out.append(f"| uniform | {runs[0]['uniform_bits_per_char']:.3f} | - | - | - |")
            out.append("\nFile bytes include a 4-byte length header; the model itself is not counted. "
                       "'given the training text' = size(train + held-out) - size(train).\n")
        return "\n".join(out)
