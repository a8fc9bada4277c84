"""ff-sequence: next-character prediction with FF vs backprop (Hinton 2022, sec. 3.5).

Aesop's fables as 248 strings of 100 characters over 30 symbols (`data/text.py`); every window of
10 characters predicts the next one (90 per string). Three models with the same hidden layers
(the paper: 3 x 2000 ReLUs), each trained by the shared loop:

  * FF, teacher forcing: negatives = the real context with the network's own prediction as the
    next character (sampled from its softmax, the true character excluded);
  * FF, self-generated: negatives = windows of strings the network generated itself from the
    first 10 characters of each training string (`rules/ff_sequence.py`);
  * backprop: the same MLP on the one-hot context, softmax output, cross-entropy.

Reported on the held-out strings (after the 248 training ones; a validation part, then the test
part used once): per-character accuracy (FF: the candidate with the highest goodness, and the
linear softmax on the neutral pass), bits per character (softmax), and generated samples.
The paper reports that FF learns and that both kinds of negatives work about equally well; it
gives no number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from mortalnet.config import ConfigError
from mortalnet.data.text import ALPHABET, TextConfig, decode, load_corpus, one_hot_context, windows
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, RunContext, building, check_models
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.report.tables import mean_sd_text, runs_by_preset
from mortalnet.rules.backprop import BackpropConfig, BackpropLearner
from mortalnet.rules.base import sample_rows
from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.rules.ff_sequence import FFSequenceLearner, check_self_generated_rule, sequence_inputs
from mortalnet.training import TrainingConfig, fit

MODELS = ("ff-teacher-forcing", "ff-self-generated", "backprop")


@dataclass(frozen=True)
class FFSequenceConfig:
    """Next-character prediction with FF (two kinds of negatives) and backprop."""

    data: TextConfig = field(default_factory=TextConfig)
    """The text and how it is cut into strings and windows."""
    hidden: tuple[int, ...] = (2000, 2000, 2000)
    """Hidden layer widths of every model (paper: 3 x 2000)."""
    models: tuple[str, ...] = MODELS
    """Which models to train: ff-teacher-forcing, ff-self-generated, backprop."""
    rule: FFConfig = field(default_factory=FFConfig)
    """FF hyper-parameters (both FF models)."""
    regenerate_every: int = 0
    """Self-generated negatives: steps between regenerations (0 = once per epoch)."""
    temperature: float = 1.0
    """Sampling temperature for generated negatives and samples."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=20, eval_every=2))
    """Epochs, batch size, schedule of the FF models."""
    backprop: BackpropConfig = field(default_factory=BackpropConfig)
    """Optimizer and regularization of the backprop model."""
    backprop_training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=20, eval_every=2, schedule="cosine"))
    """Epochs, batch size, schedule of the backprop model."""
    samples: int = 3
    """Held-out prompts continued by each model in the summary."""

    def __post_init__(self) -> None:
        check_models(self.models, MODELS)
        if self.regenerate_every < 0:
            raise ConfigError(f"regenerate_every must be >= 1 (or 0: once per epoch), got {self.regenerate_every}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.samples < 0:
            raise ConfigError(f"samples must be >= 0, got {self.samples}")
        if "ff-self-generated" in self.models:
            check_self_generated_rule(self.rule)


def _fast() -> FFSequenceConfig:
    return FFSequenceConfig(
        data=TextConfig(source="builtin", train_strings=20, valid_strings=4),
        hidden=(300, 300, 300),
        rule=FFConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9, weight_decay=0.001)),
        training=TrainingConfig(epochs=6, batch_size=50),
        backprop_training=TrainingConfig(epochs=6, batch_size=50, schedule="cosine"),
        samples=2,
    )


def _paper() -> FFSequenceConfig:
    return FFSequenceConfig()


def _bits_per_char(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean -log2 p(true next symbol) under softmax(logits)."""
    return (-torch.log_softmax(logits, 1)[torch.arange(len(y)), y].mean() / math.log(2)).item()


@register_experiment("ff-sequence")
class FFSequence(Experiment):
    name = "ff-sequence"
    description = "next character from the previous 10 (Aesop): FF (teacher-forcing / self-generated negatives) vs backprop"
    Config = FFSequenceConfig
    presets = {"fast": _fast, "paper": _paper}
    references = {}

    def _learner(self, model: str, config: FFSequenceConfig, starts: torch.Tensor, steps_per_epoch: int,
                 ctx: RunContext):
        C, c = len(ALPHABET), config.data.context
        if model == "ff-teacher-forcing":
            return FFLearner(config.rule, config.hidden, C * (c + 1), C, seed=ctx.seed, device=ctx.device)
        if model == "ff-self-generated":
            return FFSequenceLearner(config.rule, config.hidden, starts, c, C,
                                     config.regenerate_every or steps_per_epoch, config.temperature,
                                     seed=ctx.seed, device=ctx.device)
        if model == "backprop":
            return BackpropLearner(config.backprop, config.hidden, C * c, C, seed=ctx.seed, device=ctx.device)
        raise ConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")

    def check(self, config: FFSequenceConfig, ctx: RunContext) -> None:
        """Every model built once, before the first trains. The text is not read: the self-generated model
        gets one blank string as its prompts and 1 as its steps per epoch, which change nothing it refuses."""
        blank = torch.zeros(1, config.data.string_length, dtype=torch.long)
        for model in config.models:
            with building(f"model {model}"):
                self._learner(model, config, blank, 1, ctx)

    def run(self, config: FFSequenceConfig, ctx: RunContext) -> dict[str, Any]:
        corpus = load_corpus(config.data)
        c, C, dev = config.data.context, len(ALPHABET), ctx.device
        split = {k: windows(getattr(corpus, k), c) for k in ("train", "valid", "test")}

        def inputs(model: str, k: str):
            ctx_sym, nxt = split[k]
            x = one_hot_context(ctx_sym, C) if model == "backprop" else sequence_inputs(ctx_sym, C)
            return x.to(dev), nxt.to(dev)

        results: dict[str, Any] = {}
        histories: dict[str, list] = {}
        samples: dict[str, list[str]] = {}
        g_prompts = corpus.test[: config.samples, :c].to(dev)
        steps = math.ceil(len(split["train"][1]) / config.training.batch_size)
        for model in config.models:
            learner = self._learner(model, config, corpus.train.to(dev), steps, ctx)
            training = config.backprop_training if model == "backprop" else config.training
            training = ctx.loop_settings(training)
            sub, resume = ctx.sub_run(model)
            fitted = fit(learner, inputs(model, "train"), inputs(model, "valid"), training, ctx.seed, run=sub,
                         resume=resume)
            histories[model] = fitted.history
            results[model] = self._evaluate(model, learner, inputs, fitted.train_seconds)
            results[model]["epochs"] = training.epochs
            samples[model] = self._samples(model, learner, g_prompts, corpus.test.shape[1], ctx.seed)
        summary: dict[str, Any] = {
            "test_error": results[config.models[0]]["test_error"],
            "headline_model": config.models[0],
            "models": results,
            **{f"test/{m}": r["test_error"] for m, r in results.items()},
            "samples": samples,
            "prompts": [decode(p) for p in g_prompts.cpu()],
            "real_continuations": [decode(s) for s in corpus.test[: config.samples].cpu()],
            "corpus": {"source": corpus.source, "sha256": corpus.sha256, "train_strings": len(corpus.train),
                       "valid_strings": len(corpus.valid), "test_strings": len(corpus.test),
                       "train_windows": len(split["train"][1]), "test_windows": len(split["test"][1])},
            "unigram_bits_per_char": self._unigram_bpc(corpus, c),
            "plots": [],
        }
        if ctx.run is not None:
            summary["plots"] = [self._plot(histories, ctx)]
        return summary

    def _evaluate(self, model: str, learner, inputs, seconds: float) -> dict[str, Any]:
        out: dict[str, Any] = {"train_seconds": seconds}
        for k in ("train", "test"):
            x, y = inputs(model, k)
            with torch.no_grad():
                if model == "backprop":
                    logits = learner.predict_batches(learner.logits, x)
                    out[f"{k}_error"] = (logits.argmax(1) != y).float().mean().item()
                else:
                    logits = learner.predict_batches(learner.softmax_logits, x)
                    good = learner.predict_batches(learner.goodness_scores, x, chunk=100)
                    out[f"{k}_error"] = (good.argmax(1) != y).float().mean().item()  # FF's own test
                    out[f"{k}_error_softmax"] = (logits.argmax(1) != y).float().mean().item()
            out[f"{k}_bits_per_char"] = _bits_per_char(logits, y)
        return out

    def _samples(self, model: str, learner, prompts: torch.Tensor, length: int, seed: int) -> list[str]:
        """Continue each prompt to `length` characters, sampling from the model's softmax (T = 1)."""
        g = torch.Generator(device=prompts.device).manual_seed(seed + 12345)
        c, C = prompts.shape[1], len(ALPHABET)
        out = torch.zeros(len(prompts), length, dtype=torch.long, device=prompts.device)
        out[:, :c] = prompts
        with torch.no_grad():
            for j in range(c, length):
                ctx_sym = out[:, j - c : j]
                if model == "backprop":
                    logits = learner.logits(one_hot_context(ctx_sym, C))
                else:
                    logits = learner.softmax_logits(sequence_inputs(ctx_sym, C))
                out[:, j] = sample_rows(torch.softmax(logits, 1), g)
        return [decode(s) for s in out.cpu()]

    @staticmethod
    def _unigram_bpc(corpus, c: int) -> float:
        """Bits per character of the training-set symbol frequencies on the test targets (a floor to beat)."""
        counts = torch.bincount(corpus.train[:, c:].flatten(), minlength=len(ALPHABET)).float() + 1.0
        logp = torch.log2(counts / counts.sum())
        return (-logp[corpus.test[:, c:].flatten()].mean()).item()

    def _plot(self, histories: dict[str, list], ctx: RunContext) -> str:
        curves = {}  # model -> (its epochs, its accuracies): the models may train for different epochs
        for model, hist in histories.items():
            key = "valid/error" if model == "backprop" else "valid/error_goodness"
            rows = [r for r in hist if key in r]
            if rows:
                curves[model] = ([r["epoch"] for r in rows], [1.0 - r[key] for r in rows])
        return plots.xy_curves(curves, ctx.run.plots / "accuracy.png", "epoch", "per-character accuracy",
                               f"{self.name} ({ctx.preset}): validation accuracy")

    def report_section(self, summaries: list[dict]) -> str:
        """Per-model table (mean +- sd over seeds) and the first seed's samples."""
        out = []
        for preset, runs in runs_by_preset(summaries):
            out.append(f"**ff-sequence / {preset}** ({len(runs)} seed(s); {runs[0]['corpus']['source']}, "
                       f"{runs[0]['corpus']['train_strings']} training strings, "
                       f"{runs[0]['corpus']['test_windows']} test predictions)\n")
            out.append("| model | test accuracy | test accuracy (softmax) | test bits/char | train accuracy | epochs |")
            out.append("|---|---|---|---|---|---|")
            for model in runs[0]["models"]:
                rows = [r["models"][model] for r in runs if model in r["models"]]
                def accuracy(key: str) -> str:  # the records hold error rates
                    return mean_sd_text((1 - r[key] for r in rows if r.get(key) is not None), ".1%")

                bits = mean_sd_text([r.get("test_bits_per_char") for r in rows], ".2f")
                out.append(f"| {model} | {accuracy('test_error')} | {accuracy('test_error_softmax')} "
                           f"| {bits} | {accuracy('train_error')} "
                           f"| {rows[0]['epochs']} |")
            out.append(f"\nUnigram baseline: {runs[0]['unigram_bits_per_char']:.2f} bits/char. FF accuracy is "
                       "the candidate character with the highest goodness; softmax = the linear readout.\n")
            first = runs[0]
            out.append(f"Samples (seed {first['seed']}, prompt = first 10 characters of a test string, "
                       "then sampled from each model):\n")
            out.append("```")
            for i, prompt in enumerate(first["prompts"][:2]):
                out.append(f"real:     {first['real_continuations'][i]}")
                for model, texts in first["samples"].items():
                    out.append(f"{model}:".ljust(20) + texts[i])
                out.append("")
            out.append("```")
        return "\n".join(out)
