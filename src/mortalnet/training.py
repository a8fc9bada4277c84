"""The one training loop every experiment shares.

For each epoch: set the learning-rate multiplier, shuffle with a generator seeded by
(seed, epoch) so that a resumed run sees the same order, call `learner.train_batch` on every
minibatch, check that the metrics stay finite, evaluate on the validation set, append a metrics
line, and save a checkpoint. A non-finite value stops the run with the epoch and step where it
appeared and leaves the last good checkpoint in place. The test set never enters this loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mortalnet.config import ConfigError
from mortalnet.optim import schedule_factor
from mortalnet.rules.base import Learner, NonFiniteError
from mortalnet.runs import RunDir


@dataclass(frozen=True)
class TrainingConfig:
    """How long and how the shared loop trains."""

    epochs: int = 60
    """Passes over the training set."""
    batch_size: int = 100
    """Examples per minibatch (ffnew.m uses 100)."""
    schedule: Literal["constant", "half-then-linear", "linear", "cosine"] = "half-then-linear"
    """Learning-rate multiplier over epochs; half-then-linear is ffnew.m's (constant, then linear to 0)."""
    shuffle: bool = True
    """Reshuffle the training set every epoch (order fixed by the seed)."""
    eval_every: int = 1
    """Evaluate on the validation set every N epochs (and always after the last)."""
    checkpoint_every: int = 1
    """Save a checkpoint every N epochs (and always after the last)."""
    snapshot_every: int = 0
    """Also keep the state after every N-th epoch in <run>/snapshots/ (0: none); for curves that need the
    test set, evaluated after training (the test set never enters this loop)."""
    finite_check_every: int = 50
    """Check the training metrics for NaN/inf every N steps (and at every epoch end)."""
    progress: bool = True
    """Show a progress bar (tqdm) on a terminal."""
    tensorboard: bool = True
    """Also write TensorBoard events to <run>/tb when the tensorboard package is installed."""

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        for name in ("batch_size", "eval_every", "checkpoint_every", "finite_check_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.snapshot_every < 0:
            raise ConfigError(f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}")


class DivergedError(RuntimeError):
    """Training produced NaN or inf; the message says where. The last good checkpoint is kept."""


@dataclass
class FitResult:
    """What `fit` returns: the per-epoch history and the seconds spent training."""

    history: list[dict[str, Any]]
    train_seconds: float
    """Training seconds in all, those before a resume included."""
    resumed_from_epoch: int
    session_train_seconds: float = 0.0
    """Training seconds of this call alone (after a resume: without the earlier sessions')."""


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def _tensorboard_writer(run: RunDir | None, enabled: bool):
    if run is None or not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: records still have metrics.jsonl
        return None
    return SummaryWriter(log_dir=str(run.path / "tb"))


def _params_finite(learner: Learner) -> str | None:
    for name, t in learner.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def fit(
    learner: Learner,
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor] | None,
    config: TrainingConfig,
    seed: int,
    run: RunDir | None = None,
    resume: bool = False,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train `learner` on `train` for `config.epochs`, checkpointing into `run`.

    Args:
        learner: the network and its rule.
        train: (x (N, D), y (N,)) on the learner's device.
        valid: validation (x, y) or None (then no validation metrics).
        config: loop settings.
        seed: fixes the data order of every epoch.
        run: run directory for metrics and checkpoints (None: keep nothing on disk).
        resume: continue from `run`'s checkpoint instead of starting at epoch 1.
        transform: optional per-batch input transform (data augmentation), given a generator.
        on_epoch: called with (epoch, metrics row) after each epoch.
    """
    x_train, y_train = train
    n = len(y_train)
    if n == 0:
        raise ValueError("the training set is empty")
    start_epoch, elapsed_before = 1, 0.0
    history: list[dict[str, Any]] = []
    if resume:
        if run is None:
            raise ValueError("resume needs a run directory")
        meta = run.load_into(learner)
        start_epoch = int(meta["epoch"]) + 1
        elapsed_before = float(meta.get("train_seconds", 0.0))
        history = [r for r in run.metrics() if r.get("epoch", 0) <= int(meta["epoch"])]
        run.write_metrics(history)  # drop lines written after the checkpoint
    elif run is not None:
        run.write_metrics([])

    writer = _tensorboard_writer(run, config.tensorboard)
    batches = math.ceil(n / config.batch_size)
    data_gen = torch.Generator(device="cpu")
    aug_gen = torch.Generator(device=x_train.device)
    t_start = time.perf_counter()
    resumed_from = start_epoch - 1
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            learner.set_lr_scale(schedule_factor(config.schedule, epoch, config.epochs))
            data_gen.manual_seed(_epoch_seed(seed, epoch))
            aug_gen.manual_seed(_epoch_seed(seed + 1, epoch))
            torch.manual_seed(_epoch_seed(seed + 2, epoch))  # for rules that draw from torch's global RNG
            order = torch.randperm(n, generator=data_gen) if config.shuffle else torch.arange(n)
            order = order.to(x_train.device)
            sums: dict[str, torch.Tensor] = {}
            t_epoch = time.perf_counter()
            bar = _progress(batches, f"epoch {epoch}/{config.epochs}", config.progress)
            for step in range(batches):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                xb, yb = x_train[idx], y_train[idx]
                if transform is not None:
                    xb = transform(xb, aug_gen)
                metrics = _train_step(learner, xb, yb, epoch, step + 1, batches)
                for k, v in metrics.items():
                    sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
                if (step + 1) % config.finite_check_every == 0 or step == batches - 1:
                    _check_finite(sums, epoch, step + 1, batches)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            bad = _params_finite(learner)
            if bad is not None:
                raise DivergedError(f"parameter {bad} became non-finite during epoch {epoch}")
            row: dict[str, Any] = {"epoch": epoch, "lr_scale": schedule_factor(config.schedule, epoch, config.epochs)}
            row.update({f"train/{k}": (v / batches).item() for k, v in sums.items()})
            row["epoch_seconds"] = time.perf_counter() - t_epoch
            last = epoch == config.epochs
            if valid is not None and len(valid[1]) and (epoch % config.eval_every == 0 or last):
                row.update({f"valid/{k}": v for k, v in learner.evaluate(*valid).items()})
            row["train_seconds"] = elapsed_before + time.perf_counter() - t_start
            history.append(row)
            if run is not None:
                run.append_metrics(row)
                state = None
                # the snapshot first: a resume starts after the checkpoint's epoch and would not remake it
                if config.snapshot_every and epoch % config.snapshot_every == 0:
                    state = learner.state_tensors()
                    run.save_snapshot(epoch, state, {"train_seconds": row["train_seconds"]})
                if epoch % config.checkpoint_every == 0 or last:
                    state = learner.state_tensors() if state is None else state
                    run.save_checkpoint(state, {"epoch": epoch, "train_seconds": row["train_seconds"]})
            _fault_injection(epoch)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)):
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            if on_epoch is not None:
                on_epoch(epoch, row)
            if config.progress:
                _print_epoch(row, learner.primary_metric)
    finally:
        if writer is not None:
            writer.close()
    session = time.perf_counter() - t_start
    return FitResult(history, elapsed_before + session, resumed_from, session)


def _fault_injection(epoch: int) -> None:
    """Test hook: MORTALNET_FAULT_KILL_AFTER_EPOCH=N sends SIGKILL to this process after epoch N's
    checkpoint, to test that a kill -9 loses nothing and that --resume gives the same numbers."""
    import os

    target = os.environ.get("MORTALNET_FAULT_KILL_AFTER_EPOCH")
    if target and int(target) == epoch:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _train_step(learner: Learner, xb: torch.Tensor, yb: torch.Tensor, epoch: int, step: int, batches: int):
    """learner.train_batch(xb, yb); an error it raises once its parameters are NaN/inf (e.g.
    torch.multinomial refusing the hard negatives' non-finite probabilities), or a NonFiniteError
    (a value computed from finite but overflowing parameters), is a DivergedError naming the epoch
    and step, like the periodic check's, not a traceback."""
    try:
        return learner.train_batch(xb, yb)
    except (RuntimeError, ValueError) as err:
        if isinstance(err, DivergedError):
            raise
        bad = _params_finite(learner)
        if bad is not None:
            raise DivergedError(f"parameter {bad} became non-finite in epoch {epoch} by step {step}/{batches} "
                                f"({type(err).__name__}: {str(err)[:120]}); the last good checkpoint is kept "
                                "(lower the learning rate?)") from err
        if isinstance(err, NonFiniteError):  # finite weights, overflowing values
            raise DivergedError(f"{err} in epoch {epoch} at step {step}/{batches} with every parameter finite "
                                "(values overflowed); the last good checkpoint is kept (lower the learning "
                                "rate?)") from err
        raise


def _check_finite(sums: Mapping[str, torch.Tensor], epoch: int, step: int, batches: int) -> None:
    for k, v in sums.items():
        if not torch.isfinite(v).all():
            raise DivergedError(
                f"training metric {k!r} became non-finite in epoch {epoch} before step {step}/{batches}; "
                "the last good checkpoint is kept (lower the learning rate?)"
            )


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    import sys

    from tqdm import tqdm

    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _print_epoch(row: Mapping[str, Any], primary: str) -> None:
    parts = [f"epoch {row['epoch']:3d}"]
    for k, v in row.items():
        if k.startswith("valid/") or k in ("train/readout_error", "train/train_error", "train/loss"):
            parts.append(f"{k} {v:.4f}")
    parts.append(f"{row['epoch_seconds']:.1f}s")
    print("  ".join(parts), flush=True)
