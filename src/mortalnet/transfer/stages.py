"""Experiments that train several models in sequence (a teacher, then students) inside one run.

Each model is a *stage* with its own sub-directory of the run (`<run>/<stage>/`: metrics.jsonl,
checkpoint, done.json), trained by the shared loop `fit`. A stage that finished is not trained
again when the run is resumed: its checkpoint is loaded; a stage that was interrupted resumes
from its last checkpoint. So `mortalnet run --resume DIR` continues a long multi-model run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from mortalnet.experiments.base import RunContext
from mortalnet.rules.base import Learner
from mortalnet.runs import RunDir
from mortalnet.training import TrainingConfig, fit


class SessionClock:
    """Wall time of a run that may span several sessions (a resumed run continues the count).

    The shared `api.run` counts only the current session for a run without a top-level checkpoint;
    experiments made of stages add what earlier sessions spent (stages they load or resume) and
    report `total()` as their `wall_seconds`.
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.earlier = 0.0

    def add_earlier(self, seconds: float) -> None:
        self.earlier += max(0.0, seconds)

    def total(self) -> float:
        return self.earlier + time.perf_counter() - self.t0


def fit_stage(
    ctx: RunContext,
    name: str,
    learner: Learner,
    train: tuple[torch.Tensor, Any],
    valid: tuple[torch.Tensor, torch.Tensor] | None,
    training: TrainingConfig,
    seed: int,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    clock: SessionClock | None = None,
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
        stage.load_into(learner)
        seconds = float(stage.read_json("done.json")["train_seconds"])
        if clock is not None:
            clock.add_earlier(seconds)
        return stage.metrics(), seconds
    stage.path.mkdir(parents=True, exist_ok=True)
    resume = stage.checkpoint_path.exists()
    t0 = time.perf_counter()
    result = fit(learner, train, valid, training, seed, run=stage, resume=resume, transform=transform)
    if clock is not None and resume:  # training time of earlier sessions, kept in the checkpoint
        clock.add_earlier(result.train_seconds - (time.perf_counter() - t0))
    stage.write_json("done.json", {"train_seconds": result.train_seconds, "epochs": training.epochs})
    return result.history, result.train_seconds
