"""ff-pipeline: Forward-Forward trained by several processes (torch.distributed, gloo/NCCL).

mode=pipeline: rank k owns a block of layers and passes normalized activities up the pipeline
(no backward pass, nothing stored); mode=data-parallel: every rank holds the whole net and
averages each layer's gradient with an all-reduce. The ranks are started by the experiment
itself (torch.multiprocessing) with a timeout on every distributed call. The config, the ranks'
learner and the data are checked here before any rank starts: inside a rank, an error can only
end the run as a failed rank (RankFailedError). Every rank checkpoints after each epoch into
`<run>/checkpoints/` (`parallel/ff_pipeline.py`, RankCheckpoints); `mortalnet run --resume <run>`
continues from the last epoch that all ranks saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mortalnet import config as cfgmod
from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, Reference, RunContext
from mortalnet.optim import OptimizerConfig
from mortalnet.parallel.ff_pipeline import data_parallel_rank, pipeline_rank, pipeline_rule, refuse_int8
from mortalnet.parallel.launch import spawn
from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.training import TrainingConfig


@dataclass(frozen=True)
class FFPipelineConfig:
    """FF on several processes."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it."""
    hidden: tuple[int, ...] = (1000, 1000, 1000, 1000)
    """Hidden layer widths (a pipeline rank owns a contiguous block of them)."""
    rule: FFConfig = field(default_factory=lambda: FFConfig(negatives="random"))
    """FF hyper-parameters (the pipeline needs negatives=random)."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=10))
    """Epochs, batch size, schedule, shuffling (no validation here; each rank checkpoints after every epoch)."""
    mode: Literal["pipeline", "data-parallel"] = "pipeline"
    """pipeline: one block of layers per rank; data-parallel: whole net per rank, gradients all-reduced."""
    ranks: int = 2
    """Number of processes."""
    threads_per_rank: int = 1
    """torch threads in each process."""
    timeout_s: float = 120.0
    """Timeout of every distributed call: a dead rank stops the others after at most this long."""

    def __post_init__(self) -> None:
        if self.ranks < 1 or self.threads_per_rank < 1:
            raise ConfigError(f"ranks and threads_per_rank must be >= 1, got {self.ranks} and {self.threads_per_rank}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0 (seconds), got {self.timeout_s}")
        refuse_int8(self.rule)  # both modes
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden needs at least one layer, each of width >= 1, got {self.hidden}")
        if self.mode == "pipeline":
            if self.ranks > len(self.hidden):
                raise ConfigError(f"mode=pipeline gives each rank at least one layer: ranks={self.ranks} for "
                                  f"{len(self.hidden)} hidden layers (use ranks <= {len(self.hidden)} or "
                                  "mode=data-parallel)")
            pipeline_rule(self.rule)  # random negatives only


def _fast() -> FFPipelineConfig:
    return FFPipelineConfig(
        data=MnistConfig(train_subset=5000, test_subset=2000),
        hidden=(300, 300),
        rule=FFConfig(negatives="random", optimizer=OptimizerConfig(lr=0.03, weight_decay=0.001)),
        training=TrainingConfig(epochs=2),
        timeout_s=30.0,
    )


def _paper() -> FFPipelineConfig:
    return FFPipelineConfig(hidden=(1000, 1000, 1000, 1000), training=TrainingConfig(epochs=20))


def _paper_one_process() -> FFPipelineConfig:
    """The `paper` recipe on one process (one rank owns all layers): the single-process reference."""
    return replace(_paper(), ranks=1)


def _paper_data_parallel() -> FFPipelineConfig:
    """The `paper` recipe, whole net on each of 2 ranks, each layer's gradient all-reduced."""
    return replace(_paper(), mode="data-parallel")


@register_experiment("ff-pipeline")
class FFPipeline(Experiment):
    name = "ff-pipeline"
    description = "FF on several processes: layer pipeline (no backward pass) or data-parallel all-reduce"
    Config = FFPipelineConfig
    presets = {"fast": _fast, "paper": _paper, "paper-1-process": _paper_one_process,
               "paper-data-parallel": _paper_data_parallel}
    references: dict[str, Reference] = {}
    cpu_only = True  # gloo ranks on CPU tensors; --device auto picks the CPU on a GPU machine too

    def run(self, config: FFPipelineConfig, ctx: RunContext) -> dict[str, Any]:
        if ctx.device.type != "cpu":
            raise ConfigError("ff-pipeline spawns CPU (gloo) ranks; run it with --device cpu or auto")
        rule = pipeline_rule(config.rule) if config.mode == "pipeline" else replace(config.rule, fast=True)
        FFLearner(rule, config.hidden)  # the ranks' learner: its ConfigErrors here, before any rank starts
        load_mnist(config.data)  # and a DataError
        spec = {
            "hidden": list(config.hidden), "rule": cfgmod.to_dict(config.rule), "data": cfgmod.to_dict(config.data),
            "epochs": config.training.epochs, "batch_size": config.training.batch_size,
            "schedule": config.training.schedule, "shuffle": config.training.shuffle, "seed": ctx.seed,
            # every rank saves its state after each epoch; --resume continues from the last epoch all saved
            "checkpoint_dir": str(ctx.run.path / "checkpoints") if ctx.run is not None else None,
            "resume": ctx.resume,
        }
        fn = pipeline_rank if config.mode == "pipeline" else data_parallel_rank
        results = spawn(fn, config.ranks, args=(spec,), timeout_s=config.timeout_s,
                        threads_per_rank=config.threads_per_rank)
        head = results[0]
        return {
            "test_error": head["test"]["error_goodness"],
            "test/error_goodness": head["test"]["error_goodness"],
            "primary_metric": "error_goodness",
            "mode": config.mode,
            "ranks": config.ranks,
            "examples_per_s": min(r["examples_per_s"] for r in results),
            "train_seconds": max(r["train_seconds"] for r in results),
            "per_rank": results,
        }
