"""mortal-transfer: a teacher on device A is scheduled to die; what of its knowledge reaches device B?

The talk's second claim (MISSION.md sec. 1.2): knowledge learned on one analog instance is tied to
it; before the instance dies its knowledge must be distilled into a student. Steps:

1. A network on device A (a simulated analog instance) is trained on the labeled 50k by activity
   perturbation (forward passes only; `mortalnet.rules.activity_perturbation`).
2. Before its scheduled death, A answers queries on an unlabeled transfer set (logits, stored) and
   its nominal weights are read out. Then A dies; afterwards it refuses to compute.
3. Device B (another seed of the same preset) gets A's knowledge by
   (a) copying A's nominal weights (also onto more instances, for the spread),
   (b) distillation: activity perturbation on B to match A's soft targets on the transfer inputs
       (no labels), at each temperature in `temperatures`,
   (c) training from scratch on the same transfer inputs with their labels, same budget.
Each result is reported with the bits it took: weights x 32 (a), queries x classes x 32 (b),
labels x log2(classes) (c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, RunContext
from mortalnet.hardware import DeadDeviceError
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.training import TrainingConfig
from mortalnet.transfer.device_student import DeviceStudent, DeviceStudentConfig
from mortalnet.transfer.distill import FLOAT_BITS, DistillLossConfig, Teacher, TransferTargets
from mortalnet.transfer.stages import SessionClock, fit_stage


@dataclass(frozen=True)
class MortalTransferConfig:
    """Teacher on device A, scheduled death, transfer to device B by copying, distillation or retraining."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """MNIST (the teacher trains on the training split; the transfer set is its first `transfer_size` inputs)."""
    hardware: str = "mild"
    """Device preset of A and B (ideal, mild, harsh)."""
    device_a: int = 1
    """Seed of the teacher's device instance A."""
    device_b: int = 2
    """Seed of the student's device instance B (copies also go to B+1, B+2, ...)."""
    copies: int = 5
    """(a) Number of instances (B, B+1, ...) that receive A's nominal weights."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layers of teacher and students (equal, so that weights can be copied)."""
    rule: DeviceStudentConfig = field(default_factory=lambda: DeviceStudentConfig(
        optimizer=OptimizerConfig(name="adam", lr=1e-3, momentum=0.9), sigma=0.3))
    """Activity perturbation settings of teacher and students (its hardware fields are set from the keys above)."""
    teacher_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=40, schedule="cosine"))
    """Teacher epochs over the training split."""
    transfer_size: int = 10000
    """Transfer set: this many training inputs (unlabeled for (b); labeled for (c))."""
    student_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=40, schedule="cosine"))
    """Epochs over the transfer set: the same budget for every student."""
    temperatures: tuple[float, ...] = (1.0, 4.0)
    """(b) Distillation temperatures (one student each)."""


def _fast() -> MortalTransferConfig:
    return MortalTransferConfig(
        data=MnistConfig(train_subset=3000, valid_subset=500, test_subset=1000),
        hidden=(32,), copies=2, transfer_size=1000, temperatures=(2.0,),
        rule=DeviceStudentConfig(optimizer=OptimizerConfig(name="adam", lr=3e-3, momentum=0.9), sigma=0.3),
        teacher_training=TrainingConfig(epochs=3, schedule="cosine"),
        student_training=TrainingConfig(epochs=3, schedule="cosine"),
    )


def _paper() -> MortalTransferConfig:
    return MortalTransferConfig()


def _harsh() -> MortalTransferConfig:
    return MortalTransferConfig(hardware="harsh")


def check_config(config: MortalTransferConfig) -> None:
    """Raise ConfigError for a setting that would fail only after training (called before the teacher trains).

    `rule.loss` is not checked: each student's loss is set from `temperatures` (soft targets only).
    """
    if config.copies < 1:
        raise ConfigError(f"copies must be >= 1, got {config.copies}")
    if config.transfer_size < 1:
        raise ConfigError(f"transfer_size must be >= 1, got {config.transfer_size}")
    if not config.temperatures:
        raise ConfigError("temperatures is empty: give at least one distillation temperature, e.g. temperatures=1,4")
    names = [f"{t:g}" for t in config.temperatures]  # each names its stage (distill_T<t>)
    if not all(t > 0 for t in config.temperatures):
        raise ConfigError(f"temperatures must all be > 0, got {', '.join(names)}")
    if len(set(names)) < len(names):
        raise ConfigError(f"temperatures must differ, got {', '.join(names)}")


@register_experiment("mortal-transfer")
class MortalTransfer(Experiment):
    name = "mortal-transfer"
    description = "a teacher on device A dies; its knowledge reaches device B by weight copying, distillation, or not (retraining)"
    Config = MortalTransferConfig
    presets = {"fast": _fast, "paper": _paper, "harsh": _harsh}
    references = {}

    def _learner(self, config: MortalTransferConfig, device_seed: int, seed: int, ctx: RunContext,
                 temperature: float = 1.0) -> DeviceStudent:
        cfg = replace(config.rule, hardware=config.hardware, hardware_seed=device_seed,
                      loss=DistillLossConfig(temperature=temperature, soft_weight=1.0, hard_weight=0.0))
        return DeviceStudent(cfg, hidden=config.hidden, input_dim=784, num_classes=10, seed=seed, device=ctx.device)

    def run(self, config: MortalTransferConfig, ctx: RunContext) -> dict[str, Any]:
        check_config(config)
        clock = SessionClock()  # wall time across the sessions of a resumed run
        data = load_mnist(config.data)
        train, valid, test = data.train.tensors(ctx.device), data.valid.tensors(ctx.device), data.test.tensors(ctx.device)
        valid = valid if len(valid[1]) else None
        n = min(config.transfer_size, len(train[1]))
        x_tr, y_tr = train[0][:n], train[1][:n]
        out: dict[str, Any] = {"hardware": config.hardware, "n_test": len(test[1]), "transfer_size": n,
                               "data_source": data.source}
        curves: dict[str, list] = {}

        # 1. the teacher on device A
        teacher = self._learner(config, config.device_a, ctx.seed, ctx)
        curves["teacher (A)"], _ = fit_stage(ctx, "teacher", teacher, train, valid, config.teacher_training, ctx.seed,
                                             clock=clock)
        t_test = teacher.logits(test[0])
        out["teacher_error"] = _err(t_test, test[1])
        out["teacher_energy"] = teacher.energy()

        # 2. its last acts: answer the transfer queries, hand over its nominal weights; then it dies
        oracle = Teacher(teacher.logits)
        answers = oracle.logits(x_tr)  # (n, C), stored: A is gone after this
        nominal = teacher.hardware.nominal_weights()
        n_weights = sum(w.numel() + b.numel() for w, b in nominal)
        teacher.hardware.kill("scheduled death after transfer")
        try:
            teacher.logits(test[0][:1])
            out["teacher_after_death"] = "still computes (unexpected)"
        except DeadDeviceError as err:
            out["teacher_after_death"] = f"DeadDeviceError: {err}"

        # 3a. copy the nominal weights onto other instances
        copy_errors = []
        for k in range(config.copies):
            b = self._learner(config, config.device_b + k, ctx.seed + 1, ctx)
            b.hardware.program(nominal)
            copy_errors.append(_err(b.logits(test[0]), test[1]))
        out["copy_errors"] = copy_errors
        out["copy_error_mean"] = float(np.mean(copy_errors))
        out["copy_error_worst"] = float(np.max(copy_errors))
        out["copy_bits"] = n_weights * FLOAT_BITS

        # 3b. distillation on B from the stored answers (no labels)
        distilled = []
        for t in config.temperatures:
            s = self._learner(config, config.device_b, ctx.seed + 1, ctx, temperature=t)
            name = f"distill T={t:g}"
            curves[name], _ = fit_stage(ctx, f"distill_T{t:g}", s, (x_tr, TransferTargets.unlabeled(answers)),
                                        valid, config.student_training, ctx.seed + 1, clock=clock)
            z = s.logits(test[0])
            distilled.append({"temperature": t, "test_error": _err(z, test[1]),
                              "agreement_with_teacher": float((z.argmax(1) == t_test.argmax(1)).float().mean()),
                              "energy": s.energy()})
        out["distilled"] = distilled
        out["teacher_queries"] = oracle.queries
        out["distill_bits"] = oracle.bits

        # 3c. B from scratch on the labeled transfer set, same budget
        scratch = self._learner(config, config.device_b, ctx.seed + 1, ctx)
        curves["scratch (labels)"], _ = fit_stage(ctx, "scratch", scratch, (x_tr, y_tr), valid,
                                                  config.student_training, ctx.seed + 1, clock=clock)
        z = scratch.logits(test[0])
        out["scratch_error"] = _err(z, test[1])
        out["scratch_agreement_with_teacher"] = float((z.argmax(1) == t_test.argmax(1)).float().mean())
        out["label_bits"] = n * math.log2(10)
        out["scratch_energy"] = scratch.energy()

        out["test_error"] = distilled[0]["test_error"]
        out["primary_metric"] = f"distill_T{config.temperatures[0]:g}"
        out["test/teacher_A"] = out["teacher_error"]
        out["test/copy_to_B_mean"] = out["copy_error_mean"]
        for d in distilled:
            out[f"test/distill_T{d['temperature']:g}"] = d["test_error"]
        out["test/scratch"] = out["scratch_error"]
        out["plots"] = []
        out["wall_seconds"] = clock.total()  # all sessions of the run (the stages resume)
        if ctx.run is not None:
            hist = {k: ([r["epoch"] for r in v if "valid/error" in r], [r["valid/error"] for r in v if "valid/error" in r])
                    for k, v in curves.items()}
            out["plots"] = [plots.xy_curves({k: v for k, v in hist.items() if v[0]}, ctx.run.plots / "curves.png",
                                            "epoch", "validation error", f"mortal-transfer on {config.hardware} devices",
                                            logy=True, hlines={"A's weights copied to B (mean)": out["copy_error_mean"]})]
        return out

    def report_section(self, summaries: list[dict]) -> str:
        runs = [s for s in summaries if "copy_errors" in s]
        if not runs:
            return ""
        lines = ["### mortal-transfer: after device A dies, what does device B know?", ""]
        for preset in dict.fromkeys(s["preset"] for s in runs):
            rs = sorted((s for s in runs if s["preset"] == preset), key=lambda s: s["seed"])
            f = rs[0]
            lines += [f"Preset `{preset}` ({f['hardware']} devices, seeds {', '.join(str(s['seed']) for s in rs)}; "
                      f"transfer set {f['transfer_size']:,} inputs; test error mean ± sd over seeds):", "",
                      "| knowledge on B from | test error | agrees with A | bits from A | teacher queries |",
                      "|---|---|---|---|---|"]

            def cell(vals):
                a = np.asarray(vals, float)
                return f"{a.mean():.2%}" + (f" ± {a.std(ddof=1) * 100:.2f}" if len(a) > 1 else "")

            lines.append(f"| A itself, before its death | {cell([s['teacher_error'] for s in rs])} | - | - | - |")
            lines.append(f"| (a) A's nominal weights copied (mean over {len(f['copy_errors'])} instances; worst "
                         f"{cell([s['copy_error_worst'] for s in rs])}) | {cell([s['copy_error_mean'] for s in rs])} "
                         f"| - | {f['copy_bits']:.3g} | 0 |")
            for i, d in enumerate(f["distilled"]):
                errs = [s["distilled"][i]["test_error"] for s in rs]
                agr = [s["distilled"][i]["agreement_with_teacher"] for s in rs]
                lines.append(f"| (b) distillation at T = {d['temperature']:g}, no labels | {cell(errs)} | "
                             f"{np.mean(agr):.1%} | {f['distill_bits']:.3g} | {f['teacher_queries']:,} |")
            lines.append(f"| (c) from scratch on the labels, same budget | {cell([s['scratch_error'] for s in rs])} | "
                         f"{np.mean([s['scratch_agreement_with_teacher'] for s in rs]):.1%} | 0 (labels: "
                         f"{f['label_bits']:.3g} bits) | 0 |")
            lines += ["", f"After its death A answers: `{f['teacher_after_death']}`.", ""]
        return "\n".join(lines)


def _err(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) != y).float().mean())
