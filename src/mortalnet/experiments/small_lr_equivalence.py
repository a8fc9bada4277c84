"""small-lr-equivalence: at a very small learning rate, activity perturbation does what backprop does.

The talk: activity perturbation follows the gradient only on average, so with a tiny learning
rate, where many noisy updates add up before the weights move much, its learning equals
backprop's. Two measurements on digital layers (the true gradient by autograd, measurement only):

  A. at fixed weights, the cosine similarity between the average of M single-direction estimates
     and backprop's minibatch gradient, vs M (activity and weight perturbation). With Gaussian
     directions it grows like sqrt(M / (M + c)), c ~ the estimator's relative variance.
  B. two copies of one network trained by plain SGD on the same minibatches, one by activity
     perturbation and one by backprop, for `lr_budget / lr` steps at each lr: the cosine between
     their total weight changes, which tends to 1 as lr -> 0 (more, smaller steps averaged).

The headline `test_error` is 1 - cosine of B at the smallest learning rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, RunContext, building
from mortalnet.experiments.perturbation_variance import _pm, autograd_gradient
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.rules import create_rule
from mortalnet.rules.activity_perturbation import ActivityPerturbationConfig
from mortalnet.rules.perturbation import DigitalLayer, activity_perturbation, weight_perturbation


@dataclass(frozen=True)
class SmallLrEquivalenceConfig:
    """Averaged activity-perturbation updates against backprop's."""

    data: MnistConfig = field(default_factory=lambda: MnistConfig(train_subset=10000, valid_subset=0, test_subset=0))
    """Training images used (minibatches are drawn in order, cycling)."""
    hidden: tuple[int, ...] = (128, 128)
    """Hidden widths of the ReLU MLP."""
    batch_size: int = 100
    """Examples per minibatch."""
    sigma: float = 1e-3
    """Perturbation scale."""
    sample_counts: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)
    """A: numbers M of averaged single-direction estimates at fixed weights."""
    lrs: tuple[float, ...] = (0.1, 0.03, 0.01, 0.003, 0.001)
    """B: learning rates of plain SGD (no momentum); each trains for lr_budget / lr steps."""
    lr_budget: float = 1.0
    """B: learning rate x steps, the same for every lr (how far the weights travel)."""
    chunk: int = 64
    """Directions evaluated per batched pass in A (memory only)."""


def _fast() -> SmallLrEquivalenceConfig:
    return SmallLrEquivalenceConfig(data=MnistConfig(train_subset=1000, valid_subset=0, test_subset=0),
                                    hidden=(32, 32), batch_size=50, sample_counts=(1, 8, 64, 512),
                                    lrs=(0.1, 0.01), lr_budget=0.5)


def _paper() -> SmallLrEquivalenceConfig:
    return SmallLrEquivalenceConfig()


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in ts]).double()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm() + 1e-30))


def _steps(config: SmallLrEquivalenceConfig, lr: float) -> int:
    """B's SGD steps at learning rate `lr`: lr_budget / lr (at least 1); ConfigError unless lr > 0."""
    if not lr > 0:
        raise ConfigError(f"lrs must all be > 0 (each trains lr_budget / lr steps), got {lr:g}")
    return max(1, round(config.lr_budget / lr))


@register_experiment("small-lr-equivalence")
class SmallLrEquivalence(Experiment):
    name = "small-lr-equivalence"
    description = ("activity perturbation's averaged updates vs backprop's: cosine vs number of averaged samples, "
                   "and vs learning rate at a fixed lr x steps; headline = 1 - cosine at the smallest lr")
    Config = SmallLrEquivalenceConfig
    presets = {"fast": _fast, "paper": _paper}
    references = {}
    headline = "not an error rate: 1 - cosine of activity perturbation's and backprop's weight changes at the smallest lr"

    def check(self, config: SmallLrEquivalenceConfig, ctx: RunContext) -> None:
        """The learner of A and the learner and step count of each lr of B, before A measures anything."""
        if not config.lrs:
            raise ConfigError("lrs is empty: B needs at least one learning rate")
        with building("A's learner"):
            self._learner(config, 0.0, ctx)
        for lr in config.lrs:
            _steps(config, lr)
            with building(f"B's learner at lr {lr:g}"):
                self._learner(config, lr, ctx)

    def run(self, config: SmallLrEquivalenceConfig, ctx: RunContext) -> dict[str, Any]:
        t0 = time.perf_counter()
        data = load_mnist(config.data)
        x_all, y_all = data.train.tensors(ctx.device)
        n_batches = len(y_all) // config.batch_size
        if n_batches < 1:
            raise ConfigError(f"batch_size={config.batch_size} but the data has only {len(y_all)} training images")

        def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            j = (i % n_batches) * config.batch_size
            return x_all[j : j + config.batch_size], y_all[j : j + config.batch_size]

        # ---- A: averaging at fixed weights --------------------------------------------------------
        learner = self._learner(config, 0.0, ctx)
        x, y = batch(0)
        truth = _flat(autograd_gradient(list(learner.layers), x, y))
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 1)
        averaging = {}
        for name in ("activity", "weight"):
            total, done, cos = torch.zeros_like(truth), 0, []
            for m in sorted(config.sample_counts):
                while done < m:
                    k = min(config.chunk, m - done)
                    if name == "activity":
                        est = activity_perturbation(list(learner.layers), x, y, config.sigma, k, gen,
                                                    mode=learner.cfg.mode, mask_inactive=learner.cfg.mask_inactive)
                    else:
                        est = weight_perturbation(list(learner.layers), x, y, config.sigma, k, gen, clean_pass=False)
                    total += _flat(est.weight + est.bias) * k  # the estimator returns the mean of k
                    done += k
                cos.append(_cos(total, truth))
            averaging[name] = cos
            if ctx.progress:
                print(f"A {name:8s} " + "  ".join(f"M={m}: {c:.3f}" for m, c in zip(sorted(config.sample_counts), cos)))

        # ---- B: training at decreasing learning rates --------------------------------------------
        trajectories = []
        for lr in config.lrs:
            steps = _steps(config, lr)
            ap = self._learner(config, lr, ctx)
            bp_layers = [DigitalLayer(l.in_features, l.out_features, l.activation, ctx.device) for l in ap.layers]
            for src, dst in zip(ap.layers, bp_layers):
                dst.program(*src.nominal_weights())
            start = _flat([t for l in ap.layers for t in l.nominal_weights()])
            for i in range(steps):
                xb, yb = batch(i)
                ap.train_batch(xb, yb)
                grads = autograd_gradient(bp_layers, xb, yb)  # the backprop oracle: plain SGD
                n = len(bp_layers)
                for j, layer in enumerate(bp_layers):
                    layer.request_update(-lr * grads[j], -lr * grads[n + j])
            d_ap = _flat([t for l in ap.layers for t in l.nominal_weights()]) - start
            d_bp = _flat([t for l in bp_layers for t in l.nominal_weights()]) - start
            c = _cos(d_ap, d_bp)
            trajectories.append({"lr": lr, "steps": steps, "cos": c, "norm_ratio": float(d_ap.norm() / d_bp.norm())})
            if ctx.progress:
                print(f"B lr {lr:g} steps {steps}: cos(dW_AP, dW_BP) = {c:.4f}", flush=True)

        plot_files = []
        if ctx.run is not None:
            counts = sorted(config.sample_counts)
            plot_files.append(plots.series_panels([
                {"series": {f"{k} perturbation": (counts, v) for k, v in averaging.items()}, "logx": True, "hline": 1.0,
                 "xlabel": "estimates averaged (M)", "ylabel": "cos(average, backprop gradient)",
                 "title": "A: averaging at fixed weights"},
                {"series": {"activity perturbation": ([t["steps"] for t in trajectories],
                                                      [t["cos"] for t in trajectories])},
                 "logx": True, "hline": 1.0, "xlabel": f"SGD steps (lr = {config.lr_budget:g} / steps)",
                 "ylabel": "cos(dW_AP, dW_BP)", "title": "B: same lr x steps, smaller lr"},
            ], ctx.run.plots / "equivalence.png", f"{self.name} ({ctx.preset})"))
        smallest = min(trajectories, key=lambda t: t["lr"])
        return {
            "test_error": 1.0 - smallest["cos"],
            "sample_counts": sorted(config.sample_counts),
            "averaging_cos": averaging,
            "trajectories": trajectories,
            "hidden": list(config.hidden),
            "seconds": time.perf_counter() - t0,
            "plots": plot_files,
        }

    def _learner(self, config: SmallLrEquivalenceConfig, lr: float, ctx: RunContext):
        rule = ActivityPerturbationConfig(optimizer=OptimizerConfig(name="sgd", lr=lr, momentum=0.0),
                                          sigma=config.sigma)
        return create_rule("activity-perturbation", rule, hidden=config.hidden, seed=ctx.seed, device=ctx.device)

    def report_section(self, summaries: list[dict]) -> str:
        """Cosine tables (mean +- sd over seeds) from the summaries' own fields."""
        out = []
        for preset in sorted({s["preset"] for s in summaries}):
            runs = sorted((s for s in summaries if s["preset"] == preset), key=lambda s: s["seed"])
            seeds = ", ".join(str(s["seed"]) for s in runs)
            counts = runs[0]["sample_counts"]
            out.append(f"**small-lr-equivalence / {preset}** (seeds {seeds}; 784-"
                       f"{'-'.join(map(str, runs[0]['hidden']))}-10)\n")
            out.append("A. cosine between the average of M estimates and backprop's gradient, at fixed weights\n")
            out.append("| M | " + " | ".join(str(m) for m in counts) + " |")
            out.append("|---|" + "---|" * len(counts))
            for name in ("activity", "weight"):
                cells = [_pm([s["averaging_cos"][name][i] for s in runs], 3) for i in range(len(counts))]
                out.append(f"| {name} perturbation | " + " | ".join(cells) + " |")
            out.append("")
            out.append("B. cosine between the total weight changes of activity perturbation and backprop "
                       "(plain SGD, same minibatches, lr x steps fixed)\n")
            traj = runs[0]["trajectories"]
            out.append("| lr | " + " | ".join(f"{t['lr']:g}" for t in traj) + " |")
            out.append("|---|" + "---|" * len(traj))
            out.append("| steps | " + " | ".join(str(t["steps"]) for t in traj) + " |")
            out.append("| cos(dW_AP, dW_BP) | " + " | ".join(
                _pm([s["trajectories"][i]["cos"] for s in runs], 3) for i in range(len(traj))) + " |")
            out.append("")
        return "\n".join(out)
