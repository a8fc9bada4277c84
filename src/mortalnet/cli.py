"""The `mortalnet` command: list | config | run | eval | report."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

NOT_AN_ERROR_RATE = "not an error rate: "
"""How an experiment's `headline` starts when its number is not an error rate (e.g. 1 - cosine)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mortalnet",
        description="Learning without backpropagation on hardware nobody can model exactly.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="named experiments with their presets")

    c = sub.add_parser("config", help="show an experiment's config keys, values and what they mean")
    c.add_argument("experiment")
    c.add_argument("--preset", default="paper")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")

    r = sub.add_parser("run", help="run an experiment and write its record")
    r.add_argument("experiment", nargs="?", default="", help="experiment name (optional with --resume)")
    r.add_argument("--preset", default=None, help="preset name (see `mortalnet list`; default fast)")
    r.add_argument("--seed", type=int, default=None, help="default 0")
    r.add_argument("--seeds", default="", help="several seeds, e.g. 0,1,2: one run each (--out becomes a parent dir)")
    r.add_argument("--out", default=None, help="run directory (default runs/<experiment>/<preset>-s<seed>-<time>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. training.epochs=3 (see `mortalnet config EXP`)")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--resume", default=None, metavar="DIR", help="continue an interrupted run from its checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("eval", help="re-evaluate a saved run on the test set")
    e.add_argument("run_dir")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--snapshots", action="store_true",
                   help="evaluate every snapshot the run kept (training.snapshot_every): test error vs training time")
    e.add_argument("--refit-readout", type=int, default=0, metavar="EPOCHS",
                   help="ff-unsupervised/ff-local-rf: train the linear softmax afresh on the frozen final layers "
                        "for EPOCHS epochs, then test it (writes readout_refit.json; the checkpoint is unchanged)")

    rep = sub.add_parser("report", help="rebuild the README results section from the records in results/")
    rep.add_argument("--results", default="results")
    rep.add_argument("--readme", default="README.md")
    rep.add_argument("--check", action="store_true", help="exit 1 if the README's block is stale; change nothing")
    return p


def _cmd_list() -> None:
    from mortalnet.experiments import get_experiment, list_experiments

    for name in list_experiments():
        exp = get_experiment(name)
        print(f"{name:22s} {exp.description}")
        presets = []
        for preset in exp.presets:
            ref = exp.references.get(preset)
            presets.append(f"{preset}" + (f" (reference {ref.value:.2%})" if ref and ref.metric == "test_error" else ""))
        print(f"{'':22s} presets: {', '.join(presets)}")


def _cmd_config(args) -> None:
    from mortalnet import config as cfgmod
    from mortalnet.api import preset_config

    cfg = preset_config(args.experiment, args.preset, args.set)
    for key, value, doc in cfgmod.describe(cfg):
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        print(f"{key}={shown}")
        if doc:
            print(textwrap.fill(doc, width=96, initial_indent="    ", subsequent_indent="    "))


def _cmd_run(args) -> None:
    from mortalnet.api import run
    from mortalnet.config import ConfigError
    from mortalnet.runs import RunError

    if args.resume is None and not args.experiment:
        raise ConfigError("name an experiment (see `mortalnet list`) or give --resume DIR")
    seeds = _parse_seeds(args.seeds) if args.seeds else [args.seed]
    if args.seeds and (args.resume is not None or args.seed is not None):
        raise ConfigError("--seeds runs one fresh run per seed: it goes with neither --seed nor --resume")
    if args.seeds and args.out is not None:  # every seed's folder is checked before the first seed trains
        folders = [Path(args.out) / f"seed{s}" for s in seeds]
        taken = [str(f) for f in folders if (f / "config.json").exists()]
        if taken:  # the state of the disk, as a single --out that holds a run: RunError, exit 1
            raise RunError(f"{', '.join(taken)} already hold runs; continue one with --resume or choose "
                           "another --out")
    for seed in seeds:
        out = args.out
        if out is not None and args.seeds:  # --seeds: always DIR/seed<k>, however many
            out = str(Path(out) / f"seed{seed}")
        summary = run(
            args.experiment, preset=args.preset, seed=seed, overrides=args.set, out=out,
            device=args.device, resume=args.resume, progress=not args.quiet,
        )
        print(_result_line(summary))


def _result_line(summary: dict) -> str:
    """The line a finished run prints: its headline number (a test error, or what the experiment
    measures instead), which model it belongs to and the tests behind it, the time and the record."""
    from mortalnet.experiments import get_experiment

    parts = [f"{k[5:]} {v:.2%}" for k, v in summary.items() if k.startswith("test/")]
    model = summary.get("headline")  # the model the number belongs to, in multi-model experiments
    if isinstance(model, dict):
        model = ", ".join(f"{k} {v}" for k, v in model.items())
    measured = get_experiment(summary["experiment"]).headline
    if measured.startswith(NOT_AN_ERROR_RATE):
        number = f"{measured.removeprefix(NOT_AN_ERROR_RATE)} {summary['test_error']:.4f}"
    else:
        number = f"test error {summary['test_error']:.2%}"
    inside = "; ".join(str(text) for text in (model, "  ".join(parts)) if text)
    detail = f"  ({inside})" if inside else ""
    return (f"{summary['experiment']} preset={summary['preset']} seed={summary['seed']}: {number}{detail}  "
            f"{summary['wall_seconds']:.0f} s  record: {summary['run_dir']}")


def _parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; anything else is a ConfigError."""
    from mortalnet.config import ConfigError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds expects comma-separated integers >= 0, e.g. 0,1,2; got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {text!r}")
    return seeds


def _cmd_eval(args) -> None:
    from mortalnet.api import evaluate, evaluate_snapshots, refit_readout

    if args.refit_readout:
        r = refit_readout(args.run_dir, epochs=args.refit_readout, device=args.device)
        for split in ("valid", "test"):
            if f"{split}_error_before" in r:
                print(f"{split} error (softmax): {r[f'{split}_error_before']:.2%} as trained alongside FF, "
                      f"{r[f'{split}_error_after']:.2%} refit for {r['epochs']} epochs on the frozen layers")
        print(f"written: {Path(args.run_dir) / 'readout_refit.json'}")
        return
    if args.snapshots:
        for row in evaluate_snapshots(args.run_dir, device=args.device):
            print(f"epoch {row['epoch']:4d}  {row['train_seconds']:8.1f} s  test error {row['test_error']:.2%}")
        print(f"written: {Path(args.run_dir) / 'snapshots.json'}")
        return
    result = evaluate(args.run_dir, device=args.device)
    parts = "  ".join(f"{k[5:]} {v:.2%}" for k, v in result.items() if k.startswith("test/"))
    print(f"{result['experiment']} ({args.run_dir}, epoch {result.get('epoch')}): test error "
          f"{result['test_error']:.2%}  ({parts})")


def _cmd_report(args) -> int:
    from mortalnet.report.tables import update_readme

    changed = update_readme(args.results, args.readme, check=args.check)
    if args.check:
        if changed:
            print(f"{args.readme}: the results block is stale; run `mortalnet report`", file=sys.stderr)
            return 1
        print(f"{args.readme}: results block is up to date")
        return 0
    print(f"{args.readme}: results block {'rewritten' if changed else 'already up to date'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mortalnet` console script."""
    args = _parser().parse_args(argv)
    from mortalnet.config import ConfigError
    from mortalnet.data.mnist import DataError
    from mortalnet.registry import UnknownNameError
    from mortalnet.runs import RunError
    from mortalnet.training import DivergedError

    try:
        if args.command == "list":
            _cmd_list()
        elif args.command == "config":
            _cmd_config(args)
        elif args.command == "run":
            _cmd_run(args)
        elif args.command == "eval":
            _cmd_eval(args)
        elif args.command == "report":
            return _cmd_report(args)
    except (ConfigError, UnknownNameError) as err:
        print(f"mortalnet: error: {err}", file=sys.stderr)
        return 2
    except (RunError, DataError, DivergedError) as err:
        print(f"mortalnet: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        command = getattr(err, "resume_command", "mortalnet run --resume <run dir>")
        print(f"mortalnet: interrupted; continue with `{command}`", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
