"""perturbation-mnist: MNIST with backprop, weight perturbation, activity perturbation, local losses.

The talk's sequence of ideas, measured with the same budget of examples (epochs) for every rule:
weight perturbation learns a small net but falls behind backprop as the net grows; activity
perturbation learns MNIST; many small local losses, each trained by activity perturbation, do
better still (Ren, Kornblith, Liao & Hinton 2023, MNIST test error: BP 2.66%, FG-W 9.25%,
FG-A 3.24%, LG-FG-A 2.55%, with MLP-Mixer nets; ours are plain ReLU MLPs). The perturbation rules
run on digital layers or on a simulated device (each rule's `hardware`), through forward passes,
perturbations and requested updates only; backprop, which needs an exact model, is always digital.

Each arm trains with the shared loop (`fit`) into its own record under <run>/arms/<arm>/
(metrics.jsonl, checkpoint; an interrupted run resumes arm by arm). The headline `test_error` is
the first arm's (for the weight-perturbation arm: its widest net).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, Reference, RunContext, building, check_models
from mortalnet.optim import OptimizerConfig
from mortalnet.report import plots
from mortalnet.rules import create_rule
from mortalnet.rules.activity_perturbation import ActivityPerturbationConfig
from mortalnet.rules.backprop import BackpropConfig
from mortalnet.rules.local_losses import LocalLossesConfig
from mortalnet.rules.weight_perturbation import WeightPerturbationConfig
from mortalnet.training import TrainingConfig, fit

ARMS = ("backprop", "weight-perturbation", "activity-perturbation", "local-losses")


@dataclass(frozen=True)
class PerturbationMnistConfig:
    """Which rules to train on MNIST, on which nets and hardware, with one budget of examples."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """Which MNIST and which part of it."""
    arms: tuple[str, ...] = ("activity-perturbation",)
    """Rules to train, in order: backprop, weight-perturbation, activity-perturbation, local-losses."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the backprop and activity-perturbation nets (backprop also trains ll_hidden if different)."""
    ll_hidden: tuple[int, ...] = (256, 256)
    """Block widths of the local-losses net."""
    wp_widths: tuple[int, ...] = (8, 32, 128, 512)
    """Weight perturbation trains one 784-w-10 net per width w (and backprop the same nets, for reference)."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=60, schedule="cosine",
                                                                            eval_every=5))
    """Epochs (the same budget of examples for every arm), batch size, schedule."""
    backprop: BackpropConfig = field(
        default_factory=lambda: BackpropConfig(optimizer=OptimizerConfig(name="adam", lr=1e-3, momentum=0.9)))
    """Backprop's optimizer (always on digital layers: it needs an exact model)."""
    wp: WeightPerturbationConfig = field(default_factory=WeightPerturbationConfig)
    """Weight perturbation (its `hardware` picks digital layers or a device)."""
    ap: ActivityPerturbationConfig = field(default_factory=ActivityPerturbationConfig)
    """Activity perturbation (its `hardware` picks digital layers or a device)."""
    ll: LocalLossesConfig = field(default_factory=LocalLossesConfig)
    """Local losses (its `hardware` picks digital layers or a device)."""


def _fast() -> PerturbationMnistConfig:
    return PerturbationMnistConfig(
        data=MnistConfig(train_subset=5000, valid_subset=1000, test_subset=2000),
        arms=ARMS, hidden=(64, 64), ll_hidden=(64, 64), wp_widths=(8, 32),
        training=TrainingConfig(epochs=2, schedule="cosine"),
        wp=WeightPerturbationConfig(optimizer=OptimizerConfig(name="adam", lr=1e-2, momentum=0.9), directions=8),
        ap=ActivityPerturbationConfig(optimizer=OptimizerConfig(name="adam", lr=2e-3, momentum=0.9)),
        ll=LocalLossesConfig(optimizer=OptimizerConfig(name="adam", lr=3e-3, momentum=0.9), group_size=8),
    )


# Budgets for the paper presets: 60 epochs of the 50k training images for every rule, cosine schedule.
# Perturbation scales: 1e-3 on ideal devices (= digital layers); on `mild` they must exceed the
# per-pass read/output noise (~0.02-0.1 in units of a total input), hence 0.3 (activity), 0.1 (local
# losses, one layer between perturbation and loss) and 0.03 per weight (weight perturbation).
PAPER_TRAINING = TrainingConfig(epochs=60, schedule="cosine", eval_every=5)
AP_PAPER = ActivityPerturbationConfig(optimizer=OptimizerConfig(name="adam", lr=1e-3, momentum=0.9), sigma=1e-3)
LL_PAPER = LocalLossesConfig(optimizer=OptimizerConfig(name="adam", lr=3e-3, momentum=0.9), sigma=1e-3,
                             group_size=8, normalize=False)
WP_PAPER = WeightPerturbationConfig(optimizer=OptimizerConfig(name="adam", lr=3e-3, momentum=0.9), sigma=1e-3)


def _preset(arm: str, hardware: str) -> PerturbationMnistConfig:
    sigma = {"ideal": {}, "mild": {"activity-perturbation": 0.3, "local-losses": 0.1, "weight-perturbation": 0.03}}
    s = sigma[hardware]
    return PerturbationMnistConfig(
        arms=(arm,), hidden=(256, 256), ll_hidden=(1024,), wp_widths=(8, 32, 128, 512), training=PAPER_TRAINING,
        ap=replace(AP_PAPER, hardware=hardware, sigma=s.get("activity-perturbation", AP_PAPER.sigma)),
        ll=replace(LL_PAPER, hardware=hardware, sigma=s.get("local-losses", LL_PAPER.sigma)),
        wp=replace(WP_PAPER, hardware=hardware, sigma=s.get("weight-perturbation", WP_PAPER.sigma)),
    )


def _paper() -> PerturbationMnistConfig:
    return _preset("activity-perturbation", "ideal")


def _paper_ll() -> PerturbationMnistConfig:
    return _preset("local-losses", "ideal")


def _paper_wp() -> PerturbationMnistConfig:
    return _preset("weight-perturbation", "ideal")


def _paper_bp() -> PerturbationMnistConfig:
    return _preset("backprop", "ideal")


def _mild_ap() -> PerturbationMnistConfig:
    return _preset("activity-perturbation", "mild")


def _mild_ll() -> PerturbationMnistConfig:
    return _preset("local-losses", "mild")


def _mild_wp() -> PerturbationMnistConfig:
    return _preset("weight-perturbation", "mild")


REN = "Ren, Kornblith, Liao & Hinton, ICLR 2023, MNIST (MLP-Mixer)"


@register_experiment("perturbation-mnist")
class PerturbationMnist(Experiment):
    name = "perturbation-mnist"
    description = ("MNIST test error of backprop, weight perturbation (several widths), activity perturbation and "
                   "local losses with the same budget of examples, on digital layers or devices")
    Config = PerturbationMnistConfig
    presets = {"fast": _fast, "paper": _paper, "paper-ll": _paper_ll, "paper-wp": _paper_wp, "paper-bp": _paper_bp,
               "mild-ap": _mild_ap, "mild-ll": _mild_ll, "mild-wp": _mild_wp}
    references = {
        "paper": Reference(0.0324, f"{REN}: FG-A, activity-perturbed forward gradient"),
        "paper-ll": Reference(0.0255, f"{REN}: LG-FG-A, local losses + activity perturbation"),
        "paper-wp": Reference(0.0925, f"{REN}: FG-W, weight-perturbed forward gradient"),
        "paper-bp": Reference(0.0266, f"{REN}: BP"),
    }

    def check(self, config: PerturbationMnistConfig, ctx: RunContext) -> None:
        """Every net of every arm built once, before the first arm trains; an arm with no net is refused."""
        self._check_arms(config)
        for arm in config.arms:
            nets = self._nets(arm, config)
            if not nets:  # only weight perturbation's nets can be none: one per width
                raise ConfigError(f"arm {arm} trains one net per width of wp_widths, which is empty")
            for label, rule, rule_cfg, hidden in nets:
                with building(f"arm {arm}, net {label}"):
                    self._learner(rule, rule_cfg, hidden, ctx)

    @staticmethod
    def _check_arms(config: PerturbationMnistConfig) -> None:
        """ConfigError unless `arms` names at least one arm, each of them known and once, and
        wp_widths lists no width twice (a repeated arm or width would only reload the first's record)."""
        check_models(config.arms, ARMS, field="arms")
        if len(set(config.wp_widths)) < len(config.wp_widths):
            raise ConfigError(f"wp_widths lists a width twice: {config.wp_widths}")

    def run(self, config: PerturbationMnistConfig, ctx: RunContext) -> dict[str, Any]:
        self._check_arms(config)
        t0 = time.perf_counter()
        data = load_mnist(config.data)
        train = data.train.tensors(ctx.device)
        valid = data.valid.tensors(ctx.device) if len(data.valid) else None
        test = data.test.tensors(ctx.device)
        results, plot_files = [], []
        for arm in config.arms:
            for label, rule, rule_cfg, hidden in self._nets(arm, config):
                res = self._train(label, rule, rule_cfg, hidden, config, ctx, train, valid, test)
                res.update(arm=arm, hardware=getattr(rule_cfg, "hardware", "digital"))
                results.append(res)
                plot_files += res.pop("plots", [])
                if ctx.progress:
                    print(f"{label}: test error {res['test_error']:.2%}", flush=True)
        first = [r for r in results if r["arm"] == config.arms[0]]
        headline = max(first, key=lambda r: sum(r["hidden"])) if config.arms[0] == "weight-perturbation" else first[0]
        return {
            "test_error": headline["test_error"],
            **{f"test/{r['label']}": r["test_error"] for r in results if r is not headline},
            "headline": headline["label"],
            "arms": results,
            "epochs": config.training.epochs,
            "n_train": len(data.train),
            "n_test": len(data.test),
            "data_source": data.source,
            "seconds": time.perf_counter() - t0,
            "plots": plot_files,
        }

    @staticmethod
    def _nets(arm: str, config: PerturbationMnistConfig) -> list[tuple[str, str, Any, tuple[int, ...]]]:
        """(label, rule, rule config, hidden widths) of each net an arm trains."""
        if arm == "backprop":  # on the activity-perturbation net, and on the local-losses net's layers
            nets = [("backprop", "backprop", config.backprop, config.hidden)]
            if tuple(config.ll_hidden) != tuple(config.hidden):
                nets.append(("backprop-ll-net", "backprop", config.backprop, config.ll_hidden))
            return nets
        if arm == "activity-perturbation":
            return [("activity-perturbation", arm, config.ap, config.hidden)]
        if arm == "local-losses":
            return [("local-losses", arm, config.ll, config.ll_hidden)]
        nets = []
        for w in config.wp_widths:  # weight perturbation, and backprop on the same nets for reference
            nets.append((f"weight-perturbation-w{w}", arm, config.wp, (w,)))
            nets.append((f"backprop-w{w}", "backprop", config.backprop, (w,)))
        return nets

    @staticmethod
    def _learner(rule: str, rule_cfg: Any, hidden: tuple[int, ...], ctx: RunContext):
        """A new, untrained learner of `rule` on a 784-hidden-10 net."""
        return create_rule(rule, rule_cfg, hidden=hidden, input_dim=784, num_classes=10, seed=ctx.seed,
                           device=ctx.device)

    def _train(self, label, rule, rule_cfg, hidden, config, ctx: RunContext, train, valid, test) -> dict[str, Any]:
        learner = self._learner(rule, rule_cfg, hidden, ctx)
        sub, resume = ctx.sub_run(f"arms/{label}")
        if sub is not None and sub.exists("result.json"):  # finished before an interruption
            return sub.read_json("result.json")
        training = ctx.loop_settings(config.training)
        result = fit(learner, train, valid, training, ctx.seed, run=sub, resume=resume)
        t = time.perf_counter()
        err = learner.evaluate(*test)
        last = result.history[-1] if result.history else {}
        res = {
            "label": label, "rule": rule, "hidden": list(hidden), "test_error": err[learner.primary_metric],
            "test": err, "valid_error": last.get(f"valid/{learner.primary_metric}"),
            "train_seconds": result.train_seconds, "test_eval_seconds": time.perf_counter() - t,
        }
        energy = learner.energy() if hasattr(learner, "energy") else None
        if energy is not None:
            res["energy"] = energy
        if sub is not None:
            name = f"learning_curves_{label}.png"
            plots.learning_curves(result.history, ctx.run.plots / name, f"{self.name} ({ctx.preset}): {label}")
            sub.write_json("result.json", {**res, "plots": [name]})
            res["plots"] = [name]
        return res

    def report_section(self, summaries: list[dict]) -> str:
        """One row per (net, rule, hardware): test error mean +- sd over seeds, from the summaries' arms."""
        groups: dict[tuple, list[dict]] = {}
        order = []
        for s in sorted(summaries, key=lambda s: (s["preset"], s["seed"])):
            for r in s.get("arms", []):
                key = (r["label"], r["hardware"], tuple(r["hidden"]), s["preset"])
                if key not in groups:
                    groups[key], _ = [], order.append(key)
                groups[key].append({**r, "seed": s["seed"], "epochs": s.get("epochs")})
        if not groups:
            return ""
        refs = {"backprop": "2.66% (BP)", "activity-perturbation": "3.24% (FG-A)", "local-losses": "2.55% (LG-FG-A)",
                "weight-perturbation": "9.25% (FG-W)"}
        out = ["**perturbation-mnist**: MNIST test error by rule, net and hardware (same epochs within a preset; "
               f"reference: {REN})\n",
               "| preset | rule | net | hardware | epochs | seeds | test error (mean ± sd) | reference | train time "
               "| training energy: mortal (device + learner) | same work, digital fp32 |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        rule_order = {a: i for i, a in enumerate(ARMS)}
        order.sort(key=lambda k: (k[3], rule_order.get(groups[k][0]["arm"], 9), sum(k[2]), k[0]))
        for key in order:
            rows = groups[key]
            label, hardware, hidden, preset = key
            errs = [r["test_error"] for r in rows]
            mean, sd = float(np.mean(errs)), (float(np.std(errs, ddof=1)) if len(errs) > 1 else None)
            err_text = f"{mean:.2%}" + (f" ± {sd * 100:.2f}" if sd is not None else "")
            net = "784-" + "-".join(map(str, hidden)) + "-10"
            secs = float(np.mean([r["train_seconds"] for r in rows]))
            ref = refs.get(label.split("-w")[0] if label.startswith("weight") else label, "-")
            if label.startswith("backprop-w"):
                ref = "-"
            energy = [r["energy"] for r in rows if r.get("energy")]
            e_text = (f"{np.mean([e['mortal_total_J'] for e in energy]):.3g} J "
                      f"| {np.mean([e['digital_fp32_total_J'] for e in energy]):.3g} J") if energy else "- | -"
            out.append(f"| {preset} | {label} | {net} | {hardware} | {rows[0]['epochs']} "
                       f"| {', '.join(str(r['seed']) for r in rows)} | {err_text} | {ref} | {secs / 60:.1f} min "
                       f"| {e_text} |")
        return "\n".join(out) + "\n"
