"""perturbation-variance: how noisy weight and activity perturbation are, as networks grow.

On digital layers, where the true gradient can be computed (by autograd on a separate copy of
the weights, for measurement only: the estimators never see it), each estimator's single-direction
estimate g_hat of the minibatch gradient g is compared with g:
  * cosine similarity cos(g_hat, g), and
  * relative variance E|g_hat - g|^2 / |g|^2. Weight perturbation draws one Gaussian direction u
    of all n weights and biases, shared by the whole minibatch, so g_hat = (u . g) u has relative
    variance n + 1 whatever the batch size (Werfel, Xie & Seung 2005). Activity perturbation draws
    one u per example, so its per-example noise averages over the minibatch (Ren et al. 2023:
    (q + 2)/N V, q fan-out, N batch); Ren et al.'s (pq + 2)/N V for weight perturbation assumes
    independent perturbations per example too, which the weight-perturbation estimator here does
    not draw,
for a width sweep (fixed depth) and a depth sweep (fixed width) of ReLU MLPs on an MNIST
minibatch. The fitted exponent of relative variance vs number of perturbed variables is ~1 for
both; activity perturbation is less noisy by about the fan-in factor (Werfel, Xie & Seung 2005).
The measured ratio (`wp_over_ap`, next to the mean fan-in) depends on `batch_size`: only
activity perturbation's noise falls as the minibatch grows.
The headline `test_error` is 1 - mean cosine of activity perturbation (layerwise, the rule's
default) on the widest net: how far one estimate is from the true direction.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, Reference, RunContext, building
from mortalnet.report import plots
from mortalnet.rules.perturbation import (
    DigitalLayer,
    LayerMirror,
    activity_perturbation,
    weight_perturbation,
)

ESTIMATORS = ("weight", "activity-simultaneous", "activity-layerwise")


@dataclass(frozen=True)
class PerturbationVarianceConfig:
    """Width and depth sweeps measuring the noise of perturbation estimates against the true gradient."""

    data: MnistConfig = field(default_factory=lambda: MnistConfig(train_subset=1000, valid_subset=0, test_subset=0))
    """Where the minibatch comes from (the first `batch_size` training images)."""
    batch_size: int = 100
    """Examples in the minibatch whose gradient is estimated."""
    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    """Hidden widths of the width sweep."""
    width_sweep_depth: int = 2
    """Hidden layers of every net in the width sweep."""
    depths: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    """Numbers of hidden layers of the depth sweep."""
    depth_sweep_width: int = 64
    """Hidden width of every net in the depth sweep."""
    samples: int = 200
    """Independent single-direction estimates per (net, estimator)."""
    sigma: float = 1e-3
    """Perturbation scale (weights, or total inputs)."""
    mask_inactive: bool = True
    """Activity perturbation: zero the estimate of inactive ReLUs (the rule's default)."""


def _fast() -> PerturbationVarianceConfig:
    return PerturbationVarianceConfig(data=MnistConfig(train_subset=200, valid_subset=0, test_subset=0),
                                      batch_size=50, widths=(8, 16, 32, 64), depths=(1, 2, 4), depth_sweep_width=16,
                                      samples=30)


def _paper() -> PerturbationVarianceConfig:
    return PerturbationVarianceConfig()


def build_net(dims: list[int], generator: torch.Generator, device) -> tuple[list[DigitalLayer], LayerMirror]:
    """Digital ReLU layers (linear output) of widths dims, He-initialized as the rules do."""
    acts = ["relu"] * (len(dims) - 2) + ["linear"]
    layers = [DigitalLayer(a, b, act, device) for a, b, act in zip(dims[:-1], dims[1:], acts)]
    return layers, LayerMirror(layers, generator, device)


def autograd_gradient(layers: list[DigitalLayer], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The true gradient of the mean cross-entropy w.r.t. [W_1.., b_1..], by autograd on a copy.

    For measurement only: the copy is made from the digital layers' nominal weights, which a
    device would not reveal; no learning rule calls this.
    """
    params = [t.clone().requires_grad_(True) for layer in layers for t in layer.nominal_weights()]
    h = x
    for i, layer in enumerate(layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if layer.activation == "relu":
            h = torch.relu(h)
    loss = torch.nn.functional.cross_entropy(h, y)
    grads = torch.autograd.grad(loss, params)
    return [g.detach() for g in grads[0::2]] + [g.detach() for g in grads[1::2]]


def measure(layers: list[DigitalLayer], x: torch.Tensor, y: torch.Tensor, estimator: str, samples: int,
            sigma: float, mask_inactive: bool, generator: torch.Generator) -> dict[str, float]:
    """Cosine similarity and relative variance of single-direction estimates against autograd's gradient."""
    truth = torch.cat([g.flatten() for g in autograd_gradient(layers, x, y)]).double()
    norm2 = truth.square().sum()
    cos, err2, total = [], [], torch.zeros_like(truth)
    for _ in range(samples):
        if estimator == "weight":
            est = weight_perturbation(layers, x, y, sigma, 1, generator, clean_pass=False)
        else:
            est = activity_perturbation(layers, x, y, sigma, 1, generator, mode=estimator.split("-")[1],
                                        mask_inactive=mask_inactive)
        flat = torch.cat([t.flatten() for t in est.weight + est.bias]).double()
        cos.append((flat @ truth / (flat.norm() * truth.norm() + 1e-30)).item())
        err2.append(((flat - truth).square().sum() / norm2).item())
        total += flat
    bias = ((total / samples - truth).norm() / truth.norm()).item()
    return {"cos_mean": float(np.mean(cos)), "cos_sd": float(np.std(cos)), "rel_var": float(np.mean(err2)),
            "rel_var_se": float(np.std(err2) / math.sqrt(samples)), "mean_error": bias}


def fit_exponent(n: list[float], v: list[float]) -> float:
    """Slope of log v against log n (least squares)."""
    return float(np.polyfit(np.log(n), np.log(v), 1)[0])


@register_experiment("perturbation-variance")
class PerturbationVariance(Experiment):
    name = "perturbation-variance"
    description = ("noise of weight vs activity perturbation estimates against the true gradient, vs the number "
                   "of perturbed variables (width and depth sweeps); headline = 1 - cosine of activity "
                   "perturbation on the widest net")
    Config = PerturbationVarianceConfig
    presets = {"fast": _fast, "paper": _paper}
    references: dict[str, Reference] = {}
    headline = "not an error rate: 1 - cosine of activity perturbation's estimate with the gradient, widest net"

    @staticmethod
    def _nets(config: PerturbationVarianceConfig) -> list[tuple[str, int, int, list[int]]]:
        """(sweep, width, depth, layer widths) of every net measured, width sweep first."""
        nets = [("width", w, config.width_sweep_depth) for w in config.widths]
        nets += [("depth", config.depth_sweep_width, d) for d in config.depths]
        return [(sweep, width, depth, [784, *([width] * depth), 10]) for sweep, width, depth in nets]

    def check(self, config: PerturbationVarianceConfig, ctx: RunContext) -> None:
        """Every net of both sweeps built once, before the first is measured."""
        for name in ("widths", "depths"):  # each sweep's exponent is a slope fitted to its points
            values = getattr(config, name)
            if len(set(values)) < len(values):
                raise ConfigError(f"{name} lists a value twice: {values}")
            if len(values) < 2:
                raise ConfigError(f"{name} needs at least two values: each sweep's exponent is a slope fitted "
                                  f"to its points, got {values}")
        if config.samples < 1 or config.batch_size < 1:
            raise ConfigError(f"samples and batch_size must be >= 1, got {config.samples} and {config.batch_size}")
        if not config.sigma > 0:
            raise ConfigError(f"sigma (perturbation scale) must be > 0, got {config.sigma}")
        for name in ("widths", "depths", "width_sweep_depth", "depth_sweep_width"):
            value = getattr(config, name)
            if min(value if isinstance(value, tuple) else (value,)) < 1:
                raise ConfigError(f"{name} must be >= 1 (a width or a number of hidden layers), got {value}")
        gen = torch.Generator(device=ctx.device)
        for sweep, width, depth, dims in self._nets(config):
            with building(f"the {sweep} sweep's net of width {width} and depth {depth}"):
                build_net(dims, gen, ctx.device)

    def run(self, config: PerturbationVarianceConfig, ctx: RunContext) -> dict[str, Any]:
        t0 = time.perf_counter()
        data = load_mnist(config.data)
        x, y = data.train.tensors(ctx.device)
        if len(y) < config.batch_size:
            raise ConfigError(f"batch_size={config.batch_size} but the data has only {len(y)} training images")
        x, y = x[: config.batch_size], y[: config.batch_size]
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        nets = self._nets(config)
        points = []
        for sweep, width, depth, dims in nets:
            layers, _ = build_net(dims, gen, ctx.device)
            n_weights = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
            n_neurons = sum(dims[1:])
            for estimator in ESTIMATORS:
                m = measure(layers, x, y, estimator, config.samples, config.sigma, config.mask_inactive, gen)
                n_pert = n_weights if estimator == "weight" else n_neurons
                points.append({"sweep": sweep, "width": width, "depth": depth, "estimator": estimator,
                               "n_weights": n_weights, "n_neurons": n_neurons, "n_perturbed": n_pert, **m})
                if ctx.progress:
                    print(f"{sweep:5s} width {width:4d} depth {depth} {estimator:22s} cos {m['cos_mean']:.4f} "
                          f"rel.var {m['rel_var']:.4g}", flush=True)
        exponents = {}
        for sweep in ("width", "depth", "both"):
            for est in ESTIMATORS:
                pts = [p for p in points if sweep in (p["sweep"], "both") and p["estimator"] == est]
                exponents[f"{sweep}/{est}"] = fit_exponent([p["n_perturbed"] for p in pts], [p["rel_var"] for p in pts])
        ratios = []  # weight / activity noise at the same net, next to its mean fan-in
        for sweep, width, depth, _ in nets:
            by = {p["estimator"]: p for p in points if (p["sweep"], p["width"], p["depth"]) == (sweep, width, depth)}
            ratios.append({"sweep": sweep, "width": width, "depth": depth,
                           "fan_in": by["weight"]["n_weights"] / by["weight"]["n_neurons"],
                           "wp_over_ap": by["weight"]["rel_var"] / by["activity-simultaneous"]["rel_var"]})
        widest = max(config.widths)
        head = next(p for p in points if p["sweep"] == "width" and p["width"] == widest
                    and p["estimator"] == "activity-layerwise")
        plot_files = []
        if ctx.run is not None:
            plot_files.append(self._plot(points, exponents, ctx))
        return {
            "test_error": 1.0 - head["cos_mean"],
            "points": points,
            "exponents": exponents,
            "wp_over_ap": ratios,
            "batch_size": config.batch_size,
            "samples": config.samples,
            "seconds": time.perf_counter() - t0,
            "plots": plot_files,
        }

    def _plot(self, points: list[dict], exponents: dict[str, float], ctx: RunContext) -> str:
        panels = []
        for sweep in ("width", "depth"):
            series, lines, cos_series = {}, {}, {}
            for est in ESTIMATORS:
                pts = sorted((p for p in points if p["sweep"] == sweep and p["estimator"] == est),
                             key=lambda p: p["n_perturbed"])
                n = [p["n_perturbed"] for p in pts]
                v = [p["rel_var"] for p in pts]
                series[est] = (n, v)
                slope, icpt = np.polyfit(np.log(n), np.log(v), 1)
                lines[f"{est} fit: slope {slope:.2f}"] = (n, list(np.exp(icpt) * np.asarray(n, float) ** slope))
                cos_series[est] = ([p[sweep] for p in pts], [p["cos_mean"] for p in pts],
                                   [p["cos_sd"] for p in pts])
            panels.append({"series": series, "lines": lines, "logx": True, "logy": True,
                           "xlabel": "perturbed variables (weights for WP, neurons for AP)",
                           "ylabel": "E|g_hat - g|^2 / |g|^2", "title": f"{sweep} sweep: relative variance"})
            panels.append({"series": cos_series, "logx": True, "xlabel": f"hidden {sweep}",
                           "ylabel": "cos(g_hat, g)", "title": f"{sweep} sweep: cosine with the true gradient"})
        return plots.series_panels(panels, ctx.run.plots / "variance_scaling.png", f"{self.name} ({ctx.preset})")

    def report_section(self, summaries: list[dict]) -> str:
        """Exponents and per-net noise, mean +- sd over seeds, from the summaries' own fields."""
        out = []
        for preset in sorted({s["preset"] for s in summaries}):
            runs = [s for s in summaries if s["preset"] == preset]
            seeds = ", ".join(str(s["seed"]) for s in sorted(runs, key=lambda s: s["seed"]))
            out.append(f"**perturbation-variance / {preset}** (seeds {seeds}; minibatch {runs[0]['batch_size']}, "
                       f"{runs[0]['samples']} single-direction estimates per point)\n")
            out.append("| sweep | estimator | fitted exponent of relative variance vs perturbed variables |")
            out.append("|---|---|---|")
            for key in runs[0]["exponents"]:
                vals = [s["exponents"][key] for s in runs]
                sweep, est = key.split("/")
                out.append(f"| {sweep} | {est} | {_pm(vals, 2)} |")
            out.append("")
            out.append("| sweep | width | depth | mean fan-in | rel. var. WP | rel. var. AP (simultaneous) "
                       "| rel. var. AP (layerwise) | WP / AP | cos WP | cos AP (layerwise) |")
            out.append("|---|---|---|---|---|---|---|---|---|---|")
            for i, r in enumerate(runs[0]["wp_over_ap"]):
                def pick(est, key):
                    return [next(p[key] for p in s["points"] if (p["sweep"], p["width"], p["depth"], p["estimator"])
                                 == (r["sweep"], r["width"], r["depth"], est)) for s in runs]
                out.append(
                    f"| {r['sweep']} | {r['width']} | {r['depth']} | {r['fan_in']:.0f} "
                    f"| {_pm(pick('weight', 'rel_var'), 3, g=True)} "
                    f"| {_pm(pick('activity-simultaneous', 'rel_var'), 3, g=True)} "
                    f"| {_pm(pick('activity-layerwise', 'rel_var'), 3, g=True)} "
                    f"| {_pm([s['wp_over_ap'][i]['wp_over_ap'] for s in runs], 3, g=True)} "
                    f"| {_pm(pick('weight', 'cos_mean'), 4)} | {_pm(pick('activity-layerwise', 'cos_mean'), 4)} |")
            out.append("")
        return "\n".join(out)


def _pm(values: list[float], digits: int, g: bool = False) -> str:
    """'mean ± sd' (sd over seeds; just the mean for one seed)."""
    fmt = f"{{:.{digits}g}}" if g else f"{{:.{digits}f}}"
    m = float(np.mean(values))
    if len(values) < 2:
        return fmt.format(m)
    return f"{fmt.format(m)} ± {fmt.format(float(np.std(values, ddof=1)))}"
