"""distill-mnist: Hinton, Vinyals & Dean 2015, section 3 (MNIST), in four stages of one run.

1. teacher: 784-1200-1200 ReLU, dropout (0.2 input, 0.5 hidden), max-norm weight constraint,
   inputs jittered by up to +-2 px, trained on all 60k training cases (paper: 67 test errors);
2. student alone: 784-800-800, no regularization, hard labels (paper: 146 errors);
3. the same student trained to match the teacher's soft targets at T = 20 (plus a low-weight
   hard-label term), on the un-jittered 60k (paper: 74 errors);
4. omitted 3: the transfer set has no 3 at all (paper: 206 errors, 133 of them on the 1010
   test threes); raising the 3's output bias by 3.5 gives 109 errors, 14 on threes. The paper
   chose 3.5 on the test set; we choose the shift on the validation set and report both.
   Our transfer set is the 50k training part without its 3s (the paper: 60k without 3s), so the
   10k validation images stay unseen by this student and can pick the bias.

Every stage is trained by the shared loop (`fit`), resumable (`mortalnet.transfer.stages`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mortalnet.config import ConfigError
from mortalnet.data.augment import check_shift, shift_images
from mortalnet.data.mnist import MnistConfig, Split, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, Reference, RunContext, building
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.transfer.distill import DistillLossConfig, Teacher, TransferTargets, check_loss_config, soft_targets
from mortalnet.transfer.stages import SessionClock, fit_stage
from mortalnet.transfer.student import DistillConfig, DistillLearner, check_regularization
from mortalnet.training import TrainingConfig

MAX_BIAS_GRID = 10_000
"""Most bias increases tried on the validation set (bias_max / bias_step + 1)."""

PAPER_ERRORS = {
    "teacher": 67, "student_hard": 146, "student_soft": 74,
    "omit3": 206, "omit3_on3": 133, "omit3_bias_paper": 109, "omit3_bias_paper_on3": 14,
}
"""Test error counts (of 10,000; threes: of 1,010) in Hinton, Vinyals & Dean 2015, sec. 3."""


@dataclass(frozen=True)
class DistillMnistConfig:
    """Teacher, student alone, distilled student and the omitted-3 student on MNIST."""

    data: MnistConfig = field(default_factory=lambda: MnistConfig(train_on="train+valid"))
    """MNIST; train_on=train+valid: teacher and the two main students use all 60k (the omitted-3 student uses the 50k part)."""
    teacher_hidden: tuple[int, ...] = (1200, 1200)
    """Teacher hidden layers (paper: 2 x 1200 ReLU)."""
    teacher: DistillConfig = field(default_factory=lambda: DistillConfig(
        optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0),
        dropout=0.5, input_dropout=0.2, max_norm=3.5))
    """Teacher rule: dropout and max-norm constraint (Srivastava et al. 2014, as cited by the paper)."""
    teacher_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=100, schedule="cosine"))
    """Teacher epochs, batch size, schedule."""
    jitter: int = 2
    """Teacher inputs are shifted by up to this many pixels in each direction (0 = none)."""
    student_hidden: tuple[int, ...] = (800, 800)
    """Student hidden layers (paper: 2 x 800 ReLU)."""
    student: DistillConfig = field(default_factory=lambda: DistillConfig(
        optimizer=OptimizerConfig(name="sgd", lr=0.02, momentum=0.9, weight_decay=0.0),
        loss=DistillLossConfig(temperature=20.0, soft_weight=1.0, hard_weight=0.1)))
    """Student rule; no dropout or weight cost (the paper's student is unregularized); loss = T^2 KL at T + hard_weight CE."""
    student_training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=40, schedule="cosine"))
    """Epochs, batch size and schedule of each student."""
    omitted_class: int = 3
    """Class left out of the omitted-digit student's transfer set (-1 = skip that stage)."""
    paper_bias: float = 3.5
    """The paper's bias increase for the omitted class (chosen there on the test set)."""
    bias_max: float = 30.0
    """Largest bias increase tried on the validation set."""
    bias_step: float = 0.1
    """Grid step of the bias increases tried on the validation set."""
    plot_digits: int = 6
    """Training digits whose soft targets are plotted at T = 1 and T = student temperature."""


def _fast() -> DistillMnistConfig:
    return DistillMnistConfig(
        data=MnistConfig(train_on="train+valid", train_subset=4000, valid_subset=1000, test_subset=2000),
        teacher_hidden=(256, 256),
        teacher_training=TrainingConfig(epochs=4, schedule="cosine"),
        student_hidden=(64, 64),
        student_training=TrainingConfig(epochs=4, schedule="cosine"),
    )


def _paper() -> DistillMnistConfig:
    return DistillMnistConfig()


def check_config(config: DistillMnistConfig) -> None:
    """Raise ConfigError for a setting that would fail only after training (called before the teacher trains)."""
    check_regularization(config.teacher, "teacher")
    check_regularization(config.student, "student")
    check_loss_config(config.student.loss, "student.loss")  # the teacher learns from hard labels only
    check_shift(config.jitter, "jitter")
    if not -1 <= config.omitted_class <= 9:
        raise ConfigError(f"omitted_class must be a digit 0..9 or -1 (skip that stage), got {config.omitted_class}")
    if config.omitted_class >= 0:
        if not config.bias_step > 0:
            raise ConfigError(f"bias_step must be > 0, got {config.bias_step}")
        if config.bias_max < 0:
            raise ConfigError(f"bias_max must be >= 0, got {config.bias_max}")
        n = int(config.bias_max / config.bias_step) + 1
        if n > MAX_BIAS_GRID:
            raise ConfigError(f"bias_max / bias_step gives {n:,} bias values to try; at most {MAX_BIAS_GRID:,} "
                              "(raise bias_step)")


def jitter(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each 28x28 image of x (B, 784) by (dy, dx), each uniform in [-s, s], filling with 0.
    The offsets are drawn as two (B, 1) draws, dy then dx (the recorded runs' order); the shift
    itself is `shift_images`."""
    b, s = x.shape[0], max_shift
    if s <= 0:
        return x
    dy = torch.randint(-s, s + 1, (b, 1), generator=generator, device=x.device)
    dx = torch.randint(-s, s + 1, (b, 1), generator=generator, device=x.device)
    return shift_images(x, dy[:, 0], dx[:, 0])


def _errors(logits: torch.Tensor, y: torch.Tensor) -> int:
    return int((logits.argmax(1) != y).sum().item())


def _class_bias_errors(logits: torch.Tensor, y: torch.Tensor, cls: int, bias: float) -> tuple[int, int]:
    """(errors overall, errors on class `cls`) after adding `bias` to class `cls`'s logit."""
    z = logits.clone()
    z[:, cls] += bias
    wrong = z.argmax(1) != y
    return int(wrong.sum().item()), int(wrong[y == cls].sum().item())


@register_experiment("distill-mnist")
class DistillMnist(Experiment):
    name = "distill-mnist"
    description = "distillation on MNIST (Hinton, Vinyals & Dean 2015): teacher, student alone, student with soft targets at T=20, omitted 3"
    Config = DistillMnistConfig
    presets = {"fast": _fast, "paper": _paper}
    references = {"paper": Reference(0.0074, "Hinton, Vinyals & Dean 2015, sec. 3: 784-800-800 student with soft targets at T=20, 74 errors")}

    @staticmethod
    def _teacher(config: DistillMnistConfig, ctx: RunContext) -> DistillLearner:
        """A new, untrained teacher."""
        return DistillLearner(config.teacher, config.teacher_hidden, 784, 10, seed=ctx.seed, device=ctx.device)

    @staticmethod
    def _student(config: DistillMnistConfig, seed: int, ctx: RunContext) -> DistillLearner:
        """A new, untrained student (each of them starts from the same weights: the same seed)."""
        return DistillLearner(config.student, config.student_hidden, 784, 10, seed=seed, device=ctx.device)

    def check(self, config: DistillMnistConfig, ctx: RunContext) -> None:
        """The settings `check_config` looks at, then the teacher and a student built once: a student
        setting is refused before the teacher trains."""
        check_config(config)
        with building("the teacher"):
            self._teacher(config, ctx)
        with building("the student"):
            self._student(config, ctx.seed + 1000, ctx)

    def run(self, config: DistillMnistConfig, ctx: RunContext) -> dict[str, Any]:
        check_config(config)
        clock = SessionClock()  # wall time across the sessions of a resumed run
        dev = ctx.device
        split = load_mnist(replace(config.data, train_on="train"))
        train50, valid, test = split.train, split.valid, split.test
        full = train50
        if config.data.train_on == "train+valid":
            full = Split(np.concatenate([train50.images, valid.images]), np.concatenate([train50.labels, valid.labels]))
        x_full, y_full = full.tensors(dev)
        x_test, y_test = test.tensors(dev)
        out: dict[str, Any] = {"n_train": len(full), "n_test": len(test), "data_source": split.source}
        histories: dict[str, list] = {}
        seconds: dict[str, float] = {}

        # 1. teacher: dropout, max-norm, jittered inputs, all training cases
        teacher = self._teacher(config, ctx)
        histories["teacher"], seconds["teacher"] = fit_stage(
            ctx, "teacher", teacher, (x_full, y_full), None, config.teacher_training, ctx.seed,
            transform=(lambda x, g: jitter(x, g, config.jitter)) if config.jitter else None, clock=clock)
        t_logits_test = teacher.logits(x_test)
        out["teacher_errors"] = _errors(t_logits_test, y_test)

        # the teacher is queried once per transfer example; the students reuse its stored answers
        oracle = Teacher(teacher.logits)
        full_targets = TransferTargets(y_full, oracle.logits(x_full))
        student_seed = ctx.seed + 1000

        # 2. student alone (hard labels only)
        alone = self._student(config, student_seed, ctx)
        histories["student_hard"], seconds["student_hard"] = fit_stage(
            ctx, "student_hard", alone, (x_full, y_full), None, config.student_training, student_seed,
            clock=clock)
        out["student_hard_errors"] = _errors(alone.logits(x_test), y_test)

        # 3. the same student with soft targets at temperature T
        soft = self._student(config, student_seed, ctx)
        histories["student_soft"], seconds["student_soft"] = fit_stage(
            ctx, "student_soft", soft, (x_full, full_targets), None, config.student_training, student_seed,
            clock=clock)
        out["student_soft_errors"] = _errors(soft.logits(x_test), y_test)

        # 4. omitted class: transfer set = 50k training part without that class; bias chosen on validation
        if config.omitted_class >= 0:
            answers = full_targets.teacher_logits[: len(train50)]  # `full` starts with the 50k part
            out.update(self._omitted(config, ctx, teacher, answers, train50, valid, x_test, y_test, student_seed,
                                     histories, seconds, clock))
        out["teacher_queries"] = oracle.queries
        out["teacher_bits"] = oracle.bits
        out["temperature"] = config.student.loss.temperature
        out["train_seconds"] = seconds
        n = len(test)
        out["test_error"] = out["student_soft_errors"] / n
        out["test/teacher"] = out["teacher_errors"] / n
        out["test/student_hard"] = out["student_hard_errors"] / n
        out["test/student_soft"] = out["student_soft_errors"] / n
        if "omit3_errors" in out:
            out["test/omitted"] = out["omit3_errors"] / n
            out["test/omitted_bias_valid"] = out["omit3_bias_valid_errors"] / n
        out["primary_metric"] = "student_soft"
        out["plots"] = self._plots(config, ctx, teacher, full, histories) if ctx.run is not None else []
        out["wall_seconds"] = clock.total()  # all sessions of the run (the stages resume)
        return out

    def _omitted(self, config, ctx, teacher, answers, train50, valid, x_test, y_test, seed, histories, seconds, clock):
        dev, cls = ctx.device, config.omitted_class
        keep = train50.labels != cls
        transfer = Split(train50.images[keep], train50.labels[keep])
        x_tr, y_tr = transfer.tensors(dev)
        t_tr = answers[torch.from_numpy(keep).to(dev)]  # the teacher's stored answers, no new queries
        student = self._student(config, seed, ctx)
        histories["omit3"], seconds["omit3"] = fit_stage(
            ctx, "student_omitted", student, (x_tr, TransferTargets(y_tr, t_tr)), None,
            config.student_training, seed, clock=clock)
        x_val, y_val = valid.tensors(dev)
        z_val, z_test = student.logits(x_val), student.logits(x_test)
        grid = np.round(np.arange(0.0, config.bias_max + 1e-9, config.bias_step), 6)
        val_err = [_class_bias_errors(z_val, y_val, cls, float(b))[0] for b in grid]
        best = float(grid[int(np.argmin(val_err))])  # the smallest shift with the fewest validation errors
        e0, e0c = _class_bias_errors(z_test, y_test, cls, 0.0)
        ev, evc = _class_bias_errors(z_test, y_test, cls, best)
        ep, epc = _class_bias_errors(z_test, y_test, cls, config.paper_bias)
        test_opt = [_class_bias_errors(z_test, y_test, cls, float(b))[0] for b in grid]
        return {
            "omitted_class": cls, "omit3_transfer_size": len(transfer), "n_test_omitted": int((y_test == cls).sum()),
            "omit3_errors": e0, "omit3_errors_on_class": e0c,
            "omit3_bias_valid": best, "omit3_bias_valid_errors": ev, "omit3_bias_valid_errors_on_class": evc,
            "omit3_valid_errors_at_bias": {"0": val_err[0], "best": min(val_err)},
            "omit3_bias_paper": config.paper_bias, "omit3_bias_paper_errors": ep, "omit3_bias_paper_errors_on_class": epc,
            # for reference only (the paper's way: the shift that is best on the test set itself)
            "omit3_bias_test_oracle": float(grid[int(np.argmin(test_opt))]), "omit3_bias_test_oracle_errors": min(test_opt),
            "omit3_teacher_errors_on_class": _class_bias_errors(teacher.logits(x_test), y_test, cls, 0.0)[1],
        }

    def _plots(self, config, ctx, teacher, full: Split, histories) -> list[str]:
        out = ctx.run.plots
        names = []
        for stage, hist in histories.items():
            if hist:
                names.append(plots.learning_curves(hist, out / f"curves_{stage}.png", f"{self.name}: {stage}"))
        # soft targets of a few training digits: the 2 that the teacher finds most like a 3 or an 8, then others
        x, y = full.tensors(ctx.device)
        z = teacher.logits(x[:20000])
        p1 = soft_targets(z, 1.0)
        twos = torch.nonzero(y[:20000] == 2).flatten()
        idx = [int(twos[torch.argmax(p1[twos][:, 3] + p1[twos][:, 8])])] if len(twos) else []
        for c in (3, 7, 9, 4, 5, 1, 0):
            if len(idx) >= config.plot_digits:
                break
            hits = torch.nonzero(y[:20000] == c).flatten()
            if len(hits):
                idx.append(int(hits[0]))
        sel = torch.tensor(idx, dtype=torch.long)
        t = config.student.loss.temperature
        probs = {"T = 1": p1[sel].cpu().numpy(), f"T = {t:g}": soft_targets(z[sel], t).cpu().numpy()}
        names.append(plots.soft_target_bars(
            x[sel].cpu().numpy(), probs, out / "soft_targets.png",
            [f"label {int(y[i])}" for i in sel],
            "the teacher's soft targets for training digits at T = 1 (log scale) and at high T",
            log_scale=(True, False)))
        return names

    def report_section(self, summaries: list[dict]) -> str:
        runs = sorted((s for s in summaries if "student_soft_errors" in s), key=lambda s: (s["preset"], s["seed"]))
        if not runs:
            return ""
        lines = ["### distill-mnist: test errors (counts) next to Hinton, Vinyals & Dean 2015", ""]
        for preset in dict.fromkeys(s["preset"] for s in runs):
            rs = [s for s in runs if s["preset"] == preset]
            n = rs[0]["n_test"]
            seeds = ", ".join(str(s["seed"]) for s in rs)
            lines += [f"Preset `{preset}` (seeds {seeds}; {n} test images; counts per seed, then mean):", "",
                      "| model | paper | ours (per seed) | ours (mean ± sd) |", "|---|---|---|---|"]

            def row(label, key, paper, sub=None):
                vals = [s.get(key) for s in rs]
                if any(v is None for v in vals):
                    return
                extra = ""
                if sub is not None:
                    subs = [s.get(sub) for s in rs]
                    extra = " (" + ", ".join(str(v) for v in subs) + " on the class)"
                arr = np.asarray(vals, dtype=float)
                sd = f" ± {arr.std(ddof=1):.1f}" if len(arr) > 1 else ""
                lines.append(f"| {label} | {paper} | {', '.join(str(v) for v in vals)}{extra} | {arr.mean():.1f}{sd} |")

            p = PAPER_ERRORS
            row("teacher 784-1200-1200, dropout + jitter", "teacher_errors", p["teacher"])
            row("student 784-800-800, hard labels", "student_hard_errors", p["student_hard"])
            t = rs[0].get("temperature", 20)
            row(f"student, soft targets T={t:g}", "student_soft_errors", p["student_soft"])
            row("student, transfer set without 3s", "omit3_errors", f"{p['omit3']} ({p['omit3_on3']} on 3s)",
                "omit3_errors_on_class")
            biases = ", ".join(f"{s.get('omit3_bias_valid', float('nan')):.1f}" for s in rs)
            row(f"  + bias of 3 chosen on validation ({biases})", "omit3_bias_valid_errors", "-",
                "omit3_bias_valid_errors_on_class")
            row("  + bias of 3 raised by 3.5 (paper's shift)", "omit3_bias_paper_errors",
                f"{p['omit3_bias_paper']} ({p['omit3_bias_paper_on3']} on 3s)", "omit3_bias_paper_errors_on_class")
            if rs[0].get("n_test_omitted"):
                lines.append("")
                lines.append(f"Threes in the test set: {rs[0]['n_test_omitted']} (paper: 1010). "
                             f"Teacher queries per run: {rs[0]['teacher_queries']:,} "
                             f"({rs[0]['teacher_bits'] / 8e6:.1f} MB of float32 logits).")
            lines.append("")
        return "\n".join(lines)
