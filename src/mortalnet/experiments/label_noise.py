"""label-noise: MNIST with a fixed fraction of wrong training labels (the Hinton interview's claim).

The claim: with 50% of the training labels wrong - each wrong label chosen once per example and
kept for every epoch, not redrawn - a backprop net still gets under 5% test error, because the
wrong labels are inconsistent and the right ones agree with each other.

For each noise rate (0, 20, 50, 70, 80% by default) the training labels are corrupted once
(`data/label_noise.py`; seeded by the run seed, the same corrupted labels for every rule), then
each rule (the backprop MLP and supervised FF, built with `create_rule`) is trained by the shared
loop on the noisy labels. Validation uses the CLEAN validation labels (watched, never used for
selection: the last epoch is tested); the test set is clean and used once per (rule, rate).

Besides the test error, the trained net's predictions (its rule's primary test: the output argmax
for backprop, the label with the highest goodness for FF) on the training images are compared with
the TRUE training labels and with the NOISY ones it was trained on, overall and on the corrupted
examples alone: a net that "finds" the wrong labels predicts the true label of a corrupted
example; a net that memorized them predicts the wrong one it was given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mortalnet.config import ConfigError
from mortalnet.data.label_noise import corrupt_labels
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, Reference, RunContext, building, check_models
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.report.tables import mean_sd_text, runs_by_preset
from mortalnet.rules import create_rule
from mortalnet.rules.backprop import BackpropConfig
from mortalnet.rules.forward_forward import FFConfig
from mortalnet.training import TrainingConfig, fit

RULES = ("backprop", "forward-forward")


@dataclass(frozen=True)
class LabelNoiseConfig:
    """Backprop and supervised FF trained on MNIST with fixed wrong labels at several rates."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it (validation and test labels stay clean)."""
    rates: tuple[float, ...] = (0.0, 0.2, 0.5, 0.7, 0.8)
    """Fractions of training labels replaced by a wrong label (fixed per example for all epochs)."""
    rules: tuple[str, ...] = RULES
    """Rules to train: backprop, forward-forward."""
    backprop_hidden: tuple[int, ...] = (1000, 1000)
    """Hidden widths of the backprop MLP."""
    backprop: BackpropConfig = field(default_factory=BackpropConfig)
    """Backprop hyper-parameters."""
    backprop_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=20, schedule="cosine"))
    """Epochs, batch size, schedule of the backprop MLP."""
    ff_hidden: tuple[int, ...] = (1000, 1000, 1000)
    """Hidden widths of the FF net."""
    ff: FFConfig = field(default_factory=FFConfig)
    """Forward-Forward hyper-parameters."""
    ff_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=30))
    """Epochs, batch size, schedule of the FF net."""
    agreement_subset: int = 0
    """Training examples on which agreement with the true / noisy labels is measured (0 = all)."""

    def __post_init__(self) -> None:
        check_models(self.rules, RULES, field="rules")
        if not self.rates:
            raise ConfigError("rates is empty: give at least one fraction of wrong labels in [0, 1]")
        if len(set(self.rates)) < len(self.rates):
            raise ConfigError(f"rates lists a rate twice: {self.rates}")
        for rate in self.rates:
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"a label noise rate is a fraction in [0, 1], got {rate}")


def _fast() -> LabelNoiseConfig:
    return LabelNoiseConfig(
        data=MnistConfig(train_subset=5000, valid_subset=1000, test_subset=2000),
        rates=(0.0, 0.5),
        backprop_hidden=(256,),
        backprop_training=TrainingConfig(epochs=4, schedule="cosine"),
        ff_hidden=(300, 300),
        ff=FFConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9, weight_decay=0.001)),
        ff_training=TrainingConfig(epochs=6),
        agreement_subset=2000,
    )


def _paper() -> LabelNoiseConfig:
    """All 50k training examples at every rate; agreement measured on the first 10k of them."""
    return LabelNoiseConfig(agreement_subset=10000)


def _lowest_validation_error(history: list[dict], key: str) -> dict[str, Any]:
    """The lowest clean validation error seen during training and its epoch: watched only (the test uses
    the last epoch), it shows whether a net fits the wrong labels late in training."""
    seen = [(row[key], row["epoch"]) for row in history if row.get(key) is not None]
    if not seen:
        return {}
    error, epoch = min(seen)
    return {"valid_error_best": error, "valid_error_best_epoch": epoch}


@register_experiment("label-noise")
class LabelNoise(Experiment):
    name = "label-noise"
    description = "MNIST with 0-80% fixed wrong training labels: backprop MLP vs supervised FF, test error and agreement"
    Config = LabelNoiseConfig
    presets = {"fast": _fast, "paper": _paper}
    references = {"paper": Reference(0.05, "Hinton interview: backprop with 50% fixed wrong labels stays under 5% "
                                     "test error (an upper bound, backprop at rate 0.5)")}

    def _rule(self, rule: str, config: LabelNoiseConfig):
        """(rule config, hidden widths, training config) of a rule."""
        if rule == "backprop":
            return config.backprop, config.backprop_hidden, config.backprop_training
        if rule == "forward-forward":
            return config.ff, config.ff_hidden, config.ff_training
        raise ConfigError(f"label-noise has settings for rules {', '.join(RULES)}; got {rule!r}")

    def _learner(self, rule: str, config: LabelNoiseConfig, ctx: RunContext):
        """A new, untrained learner of `rule`."""
        rule_cfg, hidden, _ = self._rule(rule, config)
        return create_rule(rule, rule_cfg, hidden=hidden, input_dim=784, num_classes=10, seed=ctx.seed,
                           device=ctx.device)

    def check(self, config: LabelNoiseConfig, ctx: RunContext) -> None:
        """Each rule's learner built once (the noise rate does not change it): forward-forward's settings
        are refused before backprop trains at the first rate."""
        if config.agreement_subset < 0:
            raise ConfigError(f"agreement_subset must be >= 0 (0: all test images), got {config.agreement_subset}")
        for rule in config.rules:
            with building(f"the {rule} learner"):
                self._learner(rule, config, ctx)

    def run(self, config: LabelNoiseConfig, ctx: RunContext) -> dict[str, Any]:
        t0 = time.perf_counter()
        data = load_mnist(config.data)
        dev = ctx.device
        x_train, y_true = data.train.tensors(dev)
        valid = data.valid.tensors(dev) if len(data.valid) else None
        x_test, y_test = data.test.tensors(dev)
        n_agree = len(y_true) if config.agreement_subset <= 0 else min(config.agreement_subset, len(y_true))
        rows: list[dict[str, Any]] = []
        for rate in config.rates:
            y_noisy, corrupted = corrupt_labels(y_true, rate, 10, ctx.seed)  # drawn once, fixed for all epochs
            for rule in config.rules:
                training = ctx.loop_settings(self._rule(rule, config)[2])
                learner = self._learner(rule, config, ctx)
                sub, resume = ctx.sub_run(f"{rule}-noise{rate:g}")
                fitted = fit(learner, (x_train, y_noisy), valid, training, ctx.seed, run=sub, resume=resume)
                key = learner.primary_metric
                test = learner.evaluate(x_test, y_test)  # the only use of the test set
                xa, ta, na, ma = x_train[:n_agree], y_true[:n_agree], y_noisy[:n_agree], corrupted[:n_agree]

                def agree(mask: torch.Tensor, labels: torch.Tensor) -> float | None:
                    if not bool(mask.any()):
                        return None
                    return 1.0 - learner.evaluate(xa[mask], labels[mask])[key]

                everything = torch.ones_like(ma)
                last = fitted.history[-1] if fitted.history else {}
                rows.append({
                    "rule": rule,
                    "rate": rate,
                    "test_error": test[key],
                    **{f"test/{k}": v for k, v in test.items()},
                    "valid_error_clean": last.get(f"valid/{key}"),
                    **_lowest_validation_error(fitted.history, f"valid/{key}"),
                    "corrupted_fraction": corrupted.float().mean().item(),
                    "agreement_true": agree(everything, ta),
                    "agreement_noisy": agree(everything, na),
                    "corrupted_predicted_true": agree(ma, ta),
                    "corrupted_predicted_noisy": agree(ma, na),
                    "clean_predicted_true": agree(~ma, ta),
                    "epochs": training.epochs,
                    "train_seconds": fitted.train_seconds,
                })
        head = min(rows, key=lambda r: (r["rule"] != config.rules[0], abs(r["rate"] - 0.5)))
        summary: dict[str, Any] = {
            "test_error": head["test_error"],
            "headline": {"rule": head["rule"], "rate": head["rate"]},
            "results": rows,
            "agreement_examples": n_agree,
            "validation_labels": "clean",
            "data_source": data.source,
            "n_train": len(y_true),
            "n_test": len(y_test),
            "wall_seconds_inner": time.perf_counter() - t0,
            "plots": [],
        }
        if ctx.run is not None:
            summary["plots"] = [self._plot(rows, config, ctx)]
        return summary

    def _plot(self, rows: list[dict], config: LabelNoiseConfig, ctx: RunContext) -> str:
        curves = {}
        for rule in config.rules:
            rs = sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["rate"])
            curves[f"{rule}: test error"] = ([r["rate"] for r in rs], [r["test_error"] for r in rs])
            curves[f"{rule}: 1 - agreement with true train labels"] = (
                [r["rate"] for r in rs], [1.0 - r["agreement_true"] for r in rs])
        styles = {k: {"ls": ":"} for k in curves if "agreement" in k}
        return plots.xy_curves(curves, ctx.run.plots / "error_vs_noise.png", "fraction of wrong training labels",
                               "error", f"{self.name} ({ctx.preset}): fixed label noise",
                               hlines={"5% (interview claim at 50% noise)": 0.05}, styles=styles)

    def report_section(self, summaries: list[dict]) -> str:
        """Test error and agreement per (rule, noise rate), mean +- sd over seeds."""
        out = []
        for preset, runs in runs_by_preset(summaries):
            out.append(f"**label-noise / {preset}** ({len(runs)} seed(s); {runs[0]['n_train']} training examples, "
                       f"clean validation and test labels; agreement on {runs[0]['agreement_examples']} training "
                       "examples)\n")
            out.append("| rule | wrong labels | test error | agrees with true train labels | agrees with noisy "
                       "train labels | corrupted examples predicted as true label | lowest clean validation error "
                       "during training (runs that recorded it) | epochs | seeds |")
            out.append("|---|---|---|---|---|---|---|---|---|")
            keys = sorted({(r["rule"], r["rate"]) for s in runs for r in s["results"]},
                          key=lambda k: (k[0], k[1]))
            for rule, rate in keys:
                seeded = [(s["seed"], r) for s in runs for r in s["results"] if r["rule"] == rule and r["rate"] == rate]
                rows = [r for _, r in seeded]
                best = "; ".join(f"{r['valid_error_best']:.1%} (seed {seed}, epoch {r['valid_error_best_epoch']})"
                                 for seed, r in seeded if "valid_error_best" in r) or "-"
                out.append(f"| {rule} | {rate:.0%} | {mean_sd_text([r['test_error'] for r in rows], '.1%')} "
                           f"| {mean_sd_text([r['agreement_true'] for r in rows], '.1%')} | {mean_sd_text([r['agreement_noisy'] for r in rows], '.1%')} "
                           f"| {mean_sd_text([r['corrupted_predicted_true'] for r in rows], '.1%')} | {best} | {rows[0]['epochs']} "
                           f"| {', '.join(str(seed) for seed, _ in seeded)} |")
            out.append("")
        return "\n".join(out)
