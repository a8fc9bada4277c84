"""Experiments that train several models in sequence (a teacher, then students) inside one run.

Each model is a *stage* with its own sub-directory of the run (`<run>/<stage>/`: metrics.jsonl,
checkpoint, done.json), trained by the shared loop `fit`. A stage that finished is not trained
again when the run is resumed: its checkpoint is loaded; a stage that was interrupted resumes
from its last checkpoint. So `mortalnet run --resume DIR` continues a long multi-model run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mortalnet.experiments.base import RunContext
from mortalnet.rules.base import Learner
from mortalnet.runs import RunDir
from mortalnet.training import TrainingConfig, fit


def fit_stage(
    ctx: RunContext,
    name: str,
    learner: Learner,
    train: tuple[torch.Tensor, Any],
    valid: tuple[torch.Tensor, torch.Tensor] | None,
    training: TrainingConfig,
    seed: int,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Train `learner` as stage `name` of the run (or load it if that stage already finished).

    Returns:
        (per-epoch history, training seconds).
    """
    if not ctx.progress:
        from dataclasses import replace

        training = replace(training, progress=False)
    if ctx.run is None:
        result = fit(learner, train, valid, training, seed, transform=transform)
        return result.history, result.train_seconds
    stage = RunDir(ctx.run.path / name)
    if stage.exists("done.json"):
        tensors, _ = stage.load_checkpoint()
        learner.load_state_tensors(tensors)
        return stage.metrics(), float(stage.read_json("done.json")["train_seconds"])
    stage.path.mkdir(parents=True, exist_ok=True)
    resume = stage.checkpoint_path.exists()
    result = fit(learner, train, valid, training, seed, run=stage, resume=resume, transform=transform)
    stage.write_json("done.json", {"train_seconds": result.train_seconds, "epochs": training.epochs})
    return result.history, result.train_seconds
