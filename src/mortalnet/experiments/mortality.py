"""mortality: knowledge is tied to the hardware it was learned on (Hinton, "mortal computation").

1. Train an FF network on device A (one physical instance) with the shared loop.
2. Copy A's nominal weights onto devices B1..Bn (same preset, other seeds: other instances) and
   test each: the weights were learned to exploit A's hidden quirks, which the Bs do not share.
   Expect a small drop on `ideal` (there is nothing to exploit) and a large one on `harsh`.
3. Let A's conductances drift (simulated time after training: 1 min .. 1 year) and test it,
   once frozen and once with a little continued FF learning at each time (which rewrites the
   cells it touches and lets the learner compensate what it measures).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, Reference, RunContext
from mortalnet.experiments.ff_device import energy_summary, train_on_device
from mortalnet.hardware import EnergyModel
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.report.tables import mean_sd_text, runs_by_preset
from mortalnet.rules.ff_device import FFDeviceConfig, FFDeviceLearner
from mortalnet.rules.forward_forward import FFConfig
from mortalnet.training import TrainingConfig, fit

_TIME_LABELS = {0.0: "0", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 day", 2592000.0: "30 days", 31536000.0: "1 year"}


@dataclass(frozen=True)
class MortalityConfig:
    """Train on device A; copy its nominal weights to other instances; let A drift."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it."""
    hidden: tuple[int, ...] = (1000, 1000, 1000)
    """Hidden layer widths."""
    rule: FFDeviceConfig = field(default_factory=FFDeviceConfig)
    """FF hyper-parameters and the device preset (device A = instance rule.device_seed, or the run's seed)."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=10, eval_every=5))
    """Training of A: epochs, batch size, schedule."""
    copies: int = 5
    """Number of other instances B1..Bn that receive A's nominal weights."""
    copy_seed_offset: int = 1000
    """Device seeds of the copies: A's device seed + offset + k, k = 1..copies."""
    eval_images: int = 10000
    """Test images (the first ones) for the copy and drift tests; A's headline error uses the whole test set."""
    drift_times: tuple[float, ...] = (0.0, 60.0, 3600.0, 86400.0, 2592000.0, 31536000.0)
    """Simulated seconds after training at which A is tested (0, 1 min, 1 h, 1 day, 30 days, 1 year)."""
    relearn_batches: int = 100
    """Minibatches of continued FF learning at each drift time (the 'with learning' curve): a new block of training images each time while the blocks fit in the training set."""
    relearn_lr_scale: float = 1.0
    """Learning-rate multiplier of that continued learning (small rates stall in FF's 'raise all goodness' phase)."""
    energy: EnergyModel = field(default_factory=EnergyModel)
    """Per-operation energies (pJ) used for the energy report."""


def _fast() -> MortalityConfig:
    return MortalityConfig(
        data=MnistConfig(train_subset=5000, valid_subset=500, test_subset=1000),
        hidden=(300, 300),
        rule=FFDeviceConfig(ff=FFConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9,
                                                                  weight_decay=0.001)), hardware="mild"),
        training=TrainingConfig(epochs=2, batch_size=100),
        copies=2,
        eval_images=500,
        drift_times=(0.0, 3600.0, 31536000.0),
        relearn_batches=5,
    )


def _paper(hardware: str = "mild") -> MortalityConfig:
    return MortalityConfig(hidden=(1000, 1000, 1000), rule=FFDeviceConfig(hardware=hardware),
                           training=TrainingConfig(epochs=10, eval_every=5))


def _short(hardware: str = "mild") -> MortalityConfig:
    """A reduced-scale run that fits a few minutes of one CPU thread: 3x500, 3 epochs, 5 copies."""
    return MortalityConfig(hidden=(500, 500, 500), rule=FFDeviceConfig(hardware=hardware),
                           training=TrainingConfig(epochs=3, eval_every=3))


@contextmanager
def scaled_lr(learner: FFDeviceLearner, factor: float) -> Iterator[None]:
    """Multiply every optimizer's base learning rate by `factor` inside the block."""
    groups = [g for opt in learner.optimizers for g in opt.param_groups]
    saved = [(g.get("initial_lr", g["lr"]), g["lr"]) for g in groups]
    for g, (base, _) in zip(groups, saved):
        g["initial_lr"] = base * factor
    try:
        yield
    finally:
        for g, (base, lr) in zip(groups, saved):
            g["initial_lr"], g["lr"] = base, lr


def time_label(t: float) -> str:
    return _TIME_LABELS.get(float(t), f"{t:g} s")


@register_experiment("mortality")
class Mortality(Experiment):
    name = "mortality"
    description = "train FF on device A; A's weights on other instances B1..Bn; A's error as its conductances drift"
    Config = MortalityConfig
    presets = {
        "fast": _fast,
        "paper": _paper,
        "paper-ideal": lambda: _paper("ideal"),
        "paper-harsh": lambda: _paper("harsh"),
        "short": _short,
        "short-harsh": lambda: _short("harsh"),
        "short-ideal": lambda: _short("ideal"),
    }
    references: dict[str, Reference] = {}

    def run(self, config: MortalityConfig, ctx: RunContext) -> dict[str, Any]:
        if config.copies < 1 or config.eval_images < 1 or not config.drift_times:
            raise ConfigError("mortality needs copies >= 1, eval_images >= 1 and at least one drift time")
        times = list(config.drift_times)
        if times != sorted(set(times)) or times[0] < 0:
            raise ConfigError(f"drift_times must be increasing (each time once) and >= 0, got {config.drift_times}")
        if config.relearn_batches < 1 or not config.relearn_lr_scale > 0:
            raise ConfigError(f"relearn_batches must be >= 1 and relearn_lr_scale > 0, got {config.relearn_batches} "
                              f"and {config.relearn_lr_scale}")
        t0 = time.perf_counter()
        data = load_mnist(config.data)
        learner, result, train_counts = train_on_device(config, ctx, data)
        train_macs = int(learner.learner_macs.item())  # the learner's digital work in training alone
        dev_a = learner.hardware
        x_test, y_test = data.test.tensors(ctx.device)
        test = learner.evaluate(x_test, y_test)
        test_counts = learner.last_eval_counts
        xs, ys = x_test[: config.eval_images], y_test[: config.eval_images]
        err = learner.primary_metric

        # --- A's nominal weights on other instances ---------------------------------------------
        a_sub = learner.evaluate(xs, ys)[err]
        copy_seeds = [dev_a.seed + config.copy_seed_offset + k for k in range(1, config.copies + 1)]
        copy_errors = []
        for s in copy_seeds:
            dev_b = learner.make_hardware(s)
            learner.attach(dev_b)  # programs A's nominal weights onto B
            copy_errors.append(learner.evaluate(xs, ys)[err])
            del dev_b
        learner.attach(dev_a, program=False)

        # --- A drifting: frozen, and with a little continued learning at each time ---------------
        snapshot = learner.state_tensors()  # A just after training (digital state + sealed device)
        frozen = []
        for t in config.drift_times:
            dev_a.advance_time(t - dev_a.time)
            frozen.append(learner.evaluate(xs, ys)[err])
        learner.load_state_tensors(snapshot)  # the same instance, back at the end of training
        x_train, y_train = data.train.tensors(ctx.device)
        N = len(y_train)
        n_relearn = min(config.relearn_batches * config.training.batch_size, N)
        relearn_cfg = replace(config.training, epochs=1, schedule="constant", shuffle=True, progress=False,
                              tensorboard=False, eval_every=1)
        relearned = []
        c_before = dev_a.counts()
        for i, t in enumerate(config.drift_times):
            dev_a.advance_time(t - dev_a.time)
            # the i-th block of n_relearn images: disjoint blocks while they fit in the training set,
            # after that a block starts over from the front (some images seen again)
            start = (i * n_relearn) % max(N - n_relearn + 1, 1)
            with scaled_lr(learner, config.relearn_lr_scale):
                fit(learner, (x_train[start : start + n_relearn], y_train[start : start + n_relearn]), None,
                    relearn_cfg, seed=ctx.seed + 1 + i)
            relearned.append(learner.evaluate(xs, ys)[err])
        relearn_energy = config.energy.device_joules(dev_a.counts() - c_before)["total_J"]

        last = result.history[-1] if result.history else {}
        summary: dict[str, Any] = {
            "test_error": test[err],
            **{f"test/{k}": v for k, v in test.items()},
            "primary_metric": err,
            "valid_error": last.get(f"valid/{err}"),
            "hardware": config.rule.hardware,
            "hidden": list(config.hidden),
            "epochs": config.training.epochs,
            "device_seed": dev_a.seed,
            "eval_images": len(ys),
            "a_error_eval_images": a_sub,
            "copy_seeds": copy_seeds,
            "copy_errors": copy_errors,
            "copies_mean_error": statistics.fmean(copy_errors),
            "copies_worst_error": max(copy_errors),
            "copies_best_error": min(copy_errors),
            "copy_drop": statistics.fmean(copy_errors) - a_sub,
            "drift_times": list(config.drift_times),
            "drift_error_frozen": frozen,
            "drift_error_relearn": relearned,
            "relearn_batches": config.relearn_batches,
            "relearn_device_J": relearn_energy,
            "train_seconds": result.train_seconds,
            "n_train": len(data.train),
            "n_test": len(data.test),
            "data_source": data.source,
            **energy_summary(learner, train_counts, test_counts, len(y_test), config.energy, train_macs),
        }
        names: list[str] = []
        if ctx.run is not None:
            out, hw = ctx.run.plots, config.rule.hardware
            names.append(plots.learning_curves(result.history, out / "learning_curves.png",
                                               f"{self.name} ({ctx.preset}): training on device A ({hw})"))
            names.append(plots.bars(
                [f"A (seed {dev_a.seed})"] + [f"B seed {s}" for s in copy_seeds], [a_sub] + copy_errors,
                out / "error_vs_device_seed.png", f"A's nominal weights on other {hw} instances", "test error",
                hline=a_sub, hline_label="A", colors=["tab:green"] + ["tab:red"] * len(copy_seeds)))
            names.append(plots.curves(
                list(range(len(config.drift_times))), {"frozen": frozen, f"{config.relearn_batches} batches of learning": relearned},
                out / "error_vs_drift_time.png", f"device A ({hw}) drifting after training", "simulated time after training",
                "test error", xticklabels=[time_label(t) for t in config.drift_times]))
        summary["plots"] = names
        summary["other_seconds"] = time.perf_counter() - t0 - result.session_train_seconds
        return summary

    def report_section(self, summaries: list[dict]) -> str:
        """Copy and drift tables per preset, means (and spread) over seeds, from the summaries."""
        lines = ["### mortality: A's weights on other instances, and A drifting", "",
                 "| preset | device | seeds | A: test error | A on the copy-test images | copies B1..Bn: mean error "
                 "| worst copy | drop (copies − A) |", "|---|---|---|---|---|---|---|---|"]
        drift: dict[tuple, list[str]] = {}  # one drift table per set of drift times
        for p, runs in runs_by_preset(summaries, order=list(self.presets)):
            r0 = runs[0]
            n_copies = len(r0["copy_errors"])
            lines.append(
                f"| {p} | {r0['hardware']} | {', '.join(str(r['seed']) for r in runs)} | {mean_sd_text([r['test_error'] for r in runs])} "
                f"| {mean_sd_text([r['a_error_eval_images'] for r in runs])} | {mean_sd_text([r['copies_mean_error'] for r in runs])} "
                f"({n_copies} per seed) | {max(r['copies_worst_error'] for r in runs):.2%} "
                f"| {statistics.fmean(r['copy_drop'] for r in runs) * 100:+.2f} points |"
            )
            times = tuple(r0["drift_times"])
            cells = []
            for j in range(len(times)):
                fz = statistics.fmean(r["drift_error_frozen"][j] for r in runs)
                rl = statistics.fmean(r["drift_error_relearn"][j] for r in runs)
                cells.append(f"{fz:.2%} / {rl:.2%}")
            drift.setdefault(times, []).append(f"| {p} | {r0['hardware']} | " + " | ".join(cells) + " |")
        drift_lines = []
        for times, rows in drift.items():
            drift_lines += ["", "A's test error after simulated time (mean over seeds; frozen / with a little "
                            "continued learning at each time):", "",
                            "| preset | device | " + " | ".join(time_label(t) for t in times) + " |",
                            "|---|---|" + "---|" * len(times), *rows]
        return "\n".join(lines + drift_lines) + "\n"
