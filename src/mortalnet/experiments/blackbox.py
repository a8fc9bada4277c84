"""blackbox: FF learns through an unknown, non-differentiable function in its forward pass; backprop
cannot (Hinton 2022, secs. 1, 7; MISSION.md section 3).

A black box (`nets/blackbox.py`: a fixed random mixing, tanh and an n-bit converter, computed in
NumPy; its parameters are hidden from every learner) sits between hidden layers 1 and 2. Five
models on MNIST, one table:

  * ff            supervised FF (`ff-layerwise`, dense) without the box;
  * ff-box        the same with the box: FF needs only each layer's own input and output;
  * backprop      the same MLP trained by backprop, without the box;
  * backprop-box  backprop through the NumPy box: the backward pass stops with NoDerivativeError;
  * backprop-box-torch  the box re-implemented in torch so that autograd can run: the converter's
                  rounding has zero derivative, so no gradient of the loss reaches layer 1, which
                  only decays with the weight cost; only the layers above the box learn (its error
                  says how much that buys).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, RunContext, building, check_models
from mortalnet.nets.blackbox import NoDerivativeError, NumpyQuantizer, opaque, torch_quantizer
from mortalnet.optim import OptimizerConfig
from mortalnet.report.tables import mean_sd_text, runs_by_preset
from mortalnet.runs import RunError
from mortalnet.rules.backprop import BackpropConfig, BackpropLearner
from mortalnet.rules.ff_layerwise import FFLayerwiseConfig, FFLayerwiseLearner
from mortalnet.training import TrainingConfig, fit

MODELS = ("ff", "ff-box", "backprop", "backprop-box", "backprop-box-torch")


@dataclass(frozen=True)
class BlackBoxConfig:
    """FF and backprop with and without a black box between hidden layers 1 and 2."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it."""
    hidden: tuple[int, ...] = (1000, 1000, 1000)
    """Hidden layer widths of every model."""
    models: tuple[str, ...] = MODELS
    """Which rows of the table to run: ff, ff-box, backprop, backprop-box, backprop-box-torch."""
    box_bits: int = 8
    """Precision of the box's converter."""
    box_seed: int = 1234
    """The box's hidden randomness (its mixing matrix), unknown to the learners."""
    rule: FFLayerwiseConfig = field(default_factory=FFLayerwiseConfig)
    """FF hyper-parameters (dense layers, supervised, ffnew.m's recipe)."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=20, eval_every=5))
    """Epochs, batch size, schedule of the FF models."""
    backprop: BackpropConfig = field(default_factory=BackpropConfig)
    """Optimizer of the backprop models."""
    backprop_training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=20, eval_every=5, schedule="cosine"))
    """Epochs, batch size, schedule of the backprop models."""

    def __post_init__(self) -> None:
        check_models(self.models, MODELS)
        if len(self.hidden) < 2:
            raise ConfigError("the box sits between hidden layers 1 and 2: give at least 2 hidden layers")


def _fast() -> BlackBoxConfig:
    return BlackBoxConfig(
        data=MnistConfig(train_subset=5000, valid_subset=1000, test_subset=2000),
        hidden=(300, 300),
        rule=FFLayerwiseConfig(optimizer=OptimizerConfig(name="smoothed-sgd", lr=0.03, momentum=0.9,
                                                         weight_decay=0.001)),
        training=TrainingConfig(epochs=4),
        backprop_training=TrainingConfig(epochs=4, schedule="cosine"),
    )


def _paper() -> BlackBoxConfig:
    return BlackBoxConfig()


class BoxedBackprop(BackpropLearner):
    """The backprop MLP with a box after hidden layer `box_after` (no dropout)."""

    def __init__(self, config: BackpropConfig, hidden: tuple[int, ...], box, box_after: int = 0, **kwargs):
        if config.dropout or config.input_dropout:
            raise ConfigError("BoxedBackprop has no dropout")
        super().__init__(config, hidden, **kwargs)
        self.box, self.box_after = box, box_after

    def forward_net(self, x: torch.Tensor) -> torch.Tensor:
        for i, lin in enumerate(self.net.linears[:-1]):
            x = torch.relu(lin(x))
            if i == self.box_after:
                x = self.box(x)
        return self.net.linears[-1](x)

    def train_batch(self, x, y):
        logits = self.forward_net(x)
        loss = F.cross_entropy(logits, y)
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=False)
        loss.backward()  # raises NoDerivativeError through an opaque box
        g1 = self.net.linears[0].weight.grad
        opt.step()
        return {"loss": loss.detach(), "train_error": (logits.argmax(1) != y).float().mean().detach(),
                "grad_norm/layer1": g1.norm().detach()}

    @torch.no_grad()
    def logits(self, x):
        return self.forward_net(x)


@register_experiment("blackbox")
class BlackBox(Experiment):
    name = "blackbox"
    description = "a NumPy black box between two layers: FF learns as without it, backprop cannot"
    Config = BlackBoxConfig
    presets = {"fast": _fast, "paper": _paper}
    references = {}

    def _learner(self, model: str, config: BlackBoxConfig, ctx: RunContext):
        box = NumpyQuantizer(config.hidden[0], config.box_bits, config.box_seed)
        if model.startswith("ff"):
            learner = FFLayerwiseLearner(config.rule, config.hidden, 784, 10, seed=ctx.seed, device=ctx.device)
            if model == "ff-box":
                learner.set_black_box(0, box)
            return learner
        kwargs = dict(input_dim=784, num_classes=10, seed=ctx.seed, device=ctx.device)
        if model == "backprop":
            return BackpropLearner(config.backprop, config.hidden, **kwargs)
        wrapped = opaque(box) if model == "backprop-box" else torch_quantizer(box)
        if model not in ("backprop-box", "backprop-box-torch"):
            raise ConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
        return BoxedBackprop(config.backprop, config.hidden, wrapped, 0, **kwargs)

    def check(self, config: BlackBoxConfig, ctx: RunContext) -> None:
        """Every model built once: the backprop models' settings are refused before the FF models train."""
        for model in config.models:
            with building(f"model {model}"):
                self._learner(model, config, ctx)

    def run(self, config: BlackBoxConfig, ctx: RunContext) -> dict[str, Any]:
        data = load_mnist(config.data)
        train, valid = data.train.tensors(ctx.device), data.valid.tensors(ctx.device)
        test = data.test.tensors(ctx.device)
        results: dict[str, Any] = {}
        for model in config.models:
            learner = self._learner(model, config, ctx)
            training = config.training if model.startswith("ff") else config.backprop_training
            training = ctx.loop_settings(training)
            sub, resume = ctx.sub_run(model)
            w1 = (learner.layers[0].weight if model.startswith("ff") else learner.net.linears[0].weight).clone()
            try:
                fitted = fit(learner, train, valid if len(valid[1]) else None, training, ctx.seed, run=sub,
                             resume=resume)
            except NoDerivativeError as err:
                results[model] = {"status": "failed", "error": str(err)}
                continue
            w1_after = learner.layers[0].weight if model.startswith("ff") else learner.net.linears[0].weight
            res = learner.evaluate(*test)
            results[model] = {
                "status": "trained",
                "test_error": res[learner.primary_metric],
                **{f"test_{k}": v for k, v in res.items()},
                "train_seconds": fitted.train_seconds,
                "epochs": training.epochs,
                "layer1_weight_change": ((w1_after - w1).norm() / w1.norm()).item(),
            }
            if model == "backprop-box-torch":
                grads = [r.get("train/grad_norm/layer1") for r in fitted.history]
                results[model]["layer1_mean_grad_norm"] = max(g for g in grads if g is not None)
        trained = [m for m, r in results.items() if r["status"] == "trained"]
        if not trained:  # e.g. models=backprop-box alone: nothing has a test error to report
            raise RunError("no model trained: " + "; ".join(f"{m}: {r['error']}" for m, r in results.items()))
        head = "ff-box" if "ff-box" in trained else trained[0]
        summary = {
            "test_error": results[head]["test_error"],
            "headline_model": head,
            "models": results,
            **{f"test/{m}": r["test_error"] for m, r in results.items() if "test_error" in r},
            "box": {"kind": "NumpyQuantizer", "bits": config.box_bits, "after_layer": 1},
            "plots": [],
        }
        if "ff" in results and "ff-box" in results:
            summary["ff_box_minus_ff"] = results["ff-box"]["test_error"] - results["ff"]["test_error"]
        return summary

    def report_section(self, summaries: list[dict]) -> str:
        """One table per preset: each model's test error (mean +- sd over seeds) or why it failed."""
        notes = {
            "ff": "FF, no box",
            "ff-box": "FF, box between layers 1 and 2",
            "backprop": "backprop, no box",
            "backprop-box": "backprop through the NumPy box",
            "backprop-box-torch": "backprop through the same box written in torch",
        }
        out = []
        for preset, runs in runs_by_preset(summaries):
            box = runs[0]["box"]
            out.append(f"**blackbox / {preset}** ({len(runs)} seed(s); box: fixed random orthogonal mixing, "
                       f"tanh, {box['bits']}-bit converter, in NumPy, after hidden layer {box['after_layer']})\n")
            out.append("| model | test error | layer-1 weight change | outcome |")
            out.append("|---|---|---|---|")
            for model in runs[0]["models"]:
                rows = [r["models"][model] for r in runs if model in r["models"]]
                if rows[0]["status"] == "failed":
                    msg = rows[0]["error"].split(":")[0]
                    out.append(f"| {notes.get(model, model)} | - | - | fails: `NoDerivativeError` ({msg}) |")
                    continue
                change = statistics.fmean(r["layer1_weight_change"] for r in rows)
                outcome = "learns"
                if model == "backprop-box-torch":
                    outcome = (f"largest layer-1 gradient norm {max(r['layer1_mean_grad_norm'] for r in rows):.1g}: "
                               "layer 1 never learns (weight decay only); only the layers above the box train")
                out.append(f"| {notes.get(model, model)} | {mean_sd_text(r['test_error'] for r in rows)} | {change:.3f} | {outcome} |")
            out.append("")
        return "\n".join(out)
