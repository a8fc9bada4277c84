"""What an experiment is: a config class, named presets, reference numbers and a run function.

`SupervisedExperiment` covers "train a learner on MNIST with the shared loop, then test it";
experiments that need more (several models, devices, processes) override `run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistData, load_mnist
from mortalnet.registry import UnknownNameError
from mortalnet.rules.base import Learner
from mortalnet.runs import RunDir
from mortalnet.training import TrainingConfig, fit


def check_models(models: tuple[str, ...], valid: tuple[str, ...], field: str = "models") -> None:
    """ConfigError unless `models` is a non-empty list of distinct names from `valid` (checked before
    the first model of a multi-model experiment trains)."""
    if not models:
        raise ConfigError(f"{field} is empty: give at least one of {', '.join(valid)}")
    for m in models:
        if m not in valid:
            raise ConfigError(f"unknown model {m!r} in {field}; valid: {', '.join(valid)}")
    if len(set(models)) < len(models):
        raise ConfigError(f"{field} lists a model twice: {', '.join(models)}")


BUILD_REFUSALS = (ValueError, ZeroDivisionError)
"""What building an experiment's networks and optimizers raises for a bad value (e.g. a momentum of 2;
a ConfigError is a ValueError)."""


@contextmanager
def building(model: str) -> Iterator[None]:
    """Build `model` inside the block (in `Experiment.check`): a setting it refuses, whether as a ConfigError,
    a ValueError (e.g. torch's optimizers refuse a negative learning rate that way) or an unknown registry
    name (a device preset), is re-raised as a ConfigError that names the model."""
    try:
        yield
    except (*BUILD_REFUSALS, UnknownNameError) as err:  # an unknown registry name: a device preset
        raise ConfigError(f"{model}: {err}") from err


@dataclass(frozen=True)
class Reference:
    """A published number an experiment is compared with."""

    value: float
    """The number (a fraction for error rates)."""
    source: str
    """Where it comes from (paper, section/table)."""
    metric: str = "test_error"
    """Which summary key it is compared with."""


@dataclass
class RunContext:
    """Everything about one run that is not the experiment's config."""

    experiment: str
    preset: str
    seed: int
    device: torch.device
    run: RunDir | None = None
    resume: bool = False
    """True in a run continued with `--resume`; each model then continues from its own checkpoint if it has one."""
    progress: bool = True

    def sub_run(self, name: str) -> tuple[RunDir | None, bool]:
        """The directory `<run>/<name>` of one of several models trained in this run, and whether to resume
        it. A resumed run continues each model from its own last checkpoint; a model that had finished is
        loaded, not trained again. (None, False) when the run keeps nothing on disk."""
        if self.run is None:
            return None, False
        sub = RunDir(self.run.path / name)
        sub.path.mkdir(parents=True, exist_ok=True)
        return sub, self.resumes(sub)

    def resumes(self, run: RunDir | None) -> bool:
        """Whether `run` (this run's directory or one model's folder) continues from its checkpoint: only in
        a resumed run, and only where a checkpoint was written before the interruption."""
        return bool(self.resume and run is not None and run.checkpoint_path.exists())

    def loop_settings(self, training: TrainingConfig) -> TrainingConfig:
        """`training` with the progress bar turned off when the run is quiet."""
        return training if self.progress else replace(training, progress=False)


class Experiment:
    """Base class of named experiments (registered with `@register_experiment`)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type]
    presets: ClassVar[dict[str, Callable[[], Any]]] = {}
    references: ClassVar[dict[str, Reference]] = {}
    cpu_only: ClassVar[bool] = False
    """Runs on the CPU only: `--device auto` then means cpu even where a GPU is visible (cuda is refused)."""
    headline: ClassVar[str] = ""
    """What `test_error` measures when it is not a test error rate (e.g. "1 - cosine"); shown by the report."""

    def check(self, config: Any, ctx: RunContext) -> None:
        """Refuse (ConfigError) what `run` would refuse only after some models had trained.

        `mortalnet.api.run` calls it before the run directory is made (ctx.run is None). An experiment that
        trains several models builds each distinct one here, once, with the helper `run` builds it with,
        and discards it: milliseconds, where a setting only a later model refuses would otherwise cost the
        training of the earlier ones. The default checks nothing: one model is built before it trains.
        """

    def run(self, config: Any, ctx: RunContext) -> dict[str, Any]:
        """Run; return summary fields (must include `test_error`, a fraction)."""
        raise NotImplementedError

    def evaluate(self, config: Any, ctx: RunContext) -> dict[str, Any]:
        """Re-evaluate a finished run (ctx.run) on the test set."""
        raise ConfigError(f"{self.name} trains several models and has no stand-alone evaluation; "
                       "its summary.json holds the test results")

    def evaluate_snapshots(self, config: Any, ctx: RunContext) -> list[dict[str, Any]]:
        """Evaluate each snapshot of ctx.run (TrainingConfig.snapshot_every) on the test set."""
        raise ConfigError(f"{self.name} keeps no snapshots")


class SupervisedExperiment(Experiment):
    """Train one learner on MNIST with the shared loop; test both procedures at the end.

    Subclasses define `build_learner(config, ctx)` and optionally `plots(...)`. Their Config must
    have `data` (MnistConfig) and `training` (TrainingConfig) sections.
    """

    def build_learner(self, config: Any, ctx: RunContext) -> Learner:
        raise NotImplementedError

    def train_transform(self, config: Any):
        """Optional data augmentation applied to each training batch: fn(x, generator) -> x."""
        return None

    def plots(self, learner: Learner, data: MnistData, history: list[dict], config: Any, ctx: RunContext) -> list[str]:
        """Write figures into ctx.run.plots; return their file names."""
        return []

    def load_data(self, config: Any) -> MnistData:
        return load_mnist(config.data)

    def run(self, config: Any, ctx: RunContext) -> dict[str, Any]:
        t0 = time.perf_counter()
        data = self.load_data(config)
        learner = self.build_learner(config, ctx)
        train = data.train.tensors(ctx.device)
        valid = data.valid.tensors(ctx.device) if len(data.valid) else None
        t_data = time.perf_counter() - t0
        training = ctx.loop_settings(config.training)
        result = fit(
            learner, train, valid, training, ctx.seed, run=ctx.run, resume=ctx.resumes(ctx.run),
            transform=self.train_transform(config),
        )
        t_eval = time.perf_counter()
        test = learner.evaluate(*data.test.tensors(ctx.device))  # the only use of the test set
        eval_seconds = time.perf_counter() - t_eval
        plots = []
        if ctx.run is not None:
            plots = self.plots(learner, data, result.history, config, ctx)
        last = result.history[-1] if result.history else {}
        summary: dict[str, Any] = {
            "test_error": test[learner.primary_metric],
            **{f"test/{k}": v for k, v in test.items()},
            "primary_metric": learner.primary_metric,
            "valid_error": last.get(f"valid/{learner.primary_metric}"),
            "epochs": config.training.epochs,
            "train_seconds": result.train_seconds,
            "test_eval_seconds": eval_seconds,
            "data_seconds": t_data,
            "data_source": data.source,
            "n_train": len(data.train),
            "n_test": len(data.test),
            "plots": plots,
        }
        return summary

    def evaluate(self, config: Any, ctx: RunContext) -> dict[str, Any]:
        data = self.load_data(config)
        learner = self.build_learner(config, ctx)
        meta = ctx.run.load_into(learner)
        test = learner.evaluate(*data.test.tensors(ctx.device))
        return {"epoch": meta.get("epoch"), "test_error": test[learner.primary_metric],
                **{f"test/{k}": v for k, v in test.items()}}

    def evaluate_snapshots(self, config: Any, ctx: RunContext) -> list[dict[str, Any]]:
        data = self.load_data(config)
        test_x, test_y = data.test.tensors(ctx.device)
        learner = self.build_learner(config, ctx)
        rows = []
        for path in ctx.run.snapshots():
            meta = ctx.run.load_into(learner, path)
            test = learner.evaluate(test_x, test_y)
            rows.append({"epoch": meta.get("epoch"), "train_seconds": meta.get("train_seconds"),
                         "test_error": test[learner.primary_metric], **{f"test/{k}": v for k, v in test.items()}})
        return rows
