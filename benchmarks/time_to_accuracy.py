"""Time to accuracy: how soon supervised FF reaches a test error on this machine, next to the paper recipe.

Runs `ff-supervised --preset speed` (or --preset P) for each seed exactly as a user would
(`mortalnet run`, in this process), and counts its wall time the way the target is stated: everything
from the start of the run to the written record, except loading MNIST from the local cache
(`wall_seconds - data_seconds` of the run's summary). The runs keep snapshots
(`training.snapshot_every`), evaluated on the test set after the clock has stopped, which gives the
test error vs training seconds curve. Then, on the same machine in the same invocation, the paper
preset runs for the same time budget (as a subprocess stopped at the budget, its snapshots evaluated
the same way): what the paper's recipe reaches in that time.

Prints a table and writes results/benchmarks/time_to_accuracy-<device>.json and a plot.

    python benchmarks/time_to_accuracy.py                       # speed preset, seeds 0 and 1, + paper 300 s
    python benchmarks/time_to_accuracy.py --seeds 0 --baseline-seconds 0
    python benchmarks/time_to_accuracy.py --preset speed-30 --tag speed-30   # record time_to_accuracy-cpu-speed-30.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mortalnet import api
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.report.plots import _plt, _save
from mortalnet.runs import (atomic_write_json, benchmark_record_path, git_commit, machine_info, machine_label,
                            record_tag)


def run_preset(preset: str, seed: int, root: Path, snapshot_every: int, device: str) -> dict:
    """One run of ff-supervised's `preset` with snapshots (record in root/seed<k>); its numbers and curve."""
    out = root / f"seed{seed}"
    summary = api.run("ff-supervised", preset, seed, [f"training.snapshot_every={snapshot_every}"], out=out,
                      device=device, progress=False)
    curve = api.evaluate_snapshots(out, device=device)
    return {
        "seed": seed,
        "test_error": summary["test_error"],
        "seconds_to_result": summary["wall_seconds"] - summary["data_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "data_seconds": summary["data_seconds"],
        "train_seconds": summary["train_seconds"],
        "test_eval_seconds": summary["test_eval_seconds"],
        "epochs": summary["epochs"],
        "curve_seconds": [r["train_seconds"] for r in curve],
        "curve_test_error": [r["test_error"] for r in curve],
        "run_dir": str(out),
    }


def run_budgeted(preset: str, seed: int, root: Path, seconds: float, device: str, threads: int) -> dict:
    """Run `preset` in a subprocess, stop it after `seconds` of training, evaluate its snapshots."""
    out = root / f"{preset}-seed{seed}-budget"
    cmd = [sys.executable, "-m", "mortalnet", "run", "ff-supervised", "--preset", preset, "--seed", str(seed),
           "--out", str(out), "--quiet", "--device", device, "--set", "training.snapshot_every=1",
           "--set", "training.tensorboard=false"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    t0 = time.perf_counter()
    metrics = out / "metrics.jsonl"
    try:
        # stop at the first epoch end past the budget (the snapshot of that epoch is complete then)
        while proc.poll() is None:
            time.sleep(1.0)
            rows = [line for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
            if rows and float(json.loads(rows[-1])["train_seconds"]) >= seconds:
                time.sleep(2.0)  # the snapshot is written right after the metrics line
                break
            if time.perf_counter() - t0 > 3 * seconds + 600:
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    curve = api.evaluate_snapshots(out, device=device) if (out / "snapshots").is_dir() else []
    return {
        "seed": seed,
        "preset": preset,
        "budget_seconds": seconds,
        "curve_seconds": [r["train_seconds"] for r in curve],
        "curve_test_error": [r["test_error"] for r in curve],
        "run_dir": str(out),
    }


def error_at(seconds: list[float], errors: list[float], budget: float) -> float | None:
    """The test error of the last snapshot taken within `budget` training seconds."""
    inside = [e for s, e in zip(seconds, errors) if s <= budget]
    return inside[-1] if inside else None


def plot(result: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in result["runs"]:
        ax.plot(r["curve_seconds"], np.array(r["curve_test_error"]) * 100, "o-", ms=3,
                label=f"{result['preset']} seed {r['seed']}")
        ax.plot([r["seconds_to_result"]], [r["test_error"] * 100], "k*", ms=9)
    for r in result.get("baseline", []):
        ax.plot(r["curve_seconds"], np.array(r["curve_test_error"]) * 100, "s--", ms=3,
                label=f"{r['preset']} seed {r['seed']} (first {r['budget_seconds']:.0f} s)")
    ax.axhline(result["target_error"] * 100, color="gray", lw=0.8, ls=":", label=f"target {result['target_error']:.1%}")
    ax.axvline(result["target_seconds"], color="gray", lw=0.8, ls=":")
    ax.set_xlabel("wall seconds of training (star: the finished run, test included)")
    ax.set_ylabel("test error, per-label goodness (%)")
    ax.set_ylim(0, 6)
    ax.set_title(f"ff-supervised time to accuracy ({result['machine']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)  # atomic, as the other plots (closes the figure)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="speed")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--snapshot-every", type=int, default=5)
    ap.add_argument("--baseline", default="paper", help="preset run for the same budget, side by side")
    ap.add_argument("--baseline-seconds", type=float, default=300.0, help="0: skip the baseline")
    ap.add_argument("--target-error", type=float, default=0.014)
    ap.add_argument("--target-seconds", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--records", default="", help="where the preset's run records go, one seed<k> folder each "
                    "(e.g. results/ff-supervised/speed; default: a temporary directory)")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag, help="appended to the record's file name, "
                    "time_to_accuracy-<device>-<tag> (e.g. a preset or host), so that records sit side by side")
    args = ap.parse_args(argv)
    command = "python " + " ".join(sys.argv if argv is None else ["benchmarks/time_to_accuracy.py", *argv])

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    load_mnist(MnistConfig())  # fills the cache: the runs below load from it, as the target allows
    cache_seconds = time.perf_counter() - t0
    # the scratch folder (per-epoch snapshots of the runs kept there) is removed at the end, whatever happens
    with tempfile.TemporaryDirectory(prefix="tta-") as scratch:
        measure(args, command, Path(scratch), threads, cache_seconds)


def measure(args: argparse.Namespace, command: str, scratch: Path, threads: int, cache_seconds: float) -> None:
    """The runs (records in --records, or in `scratch`), the baseline (in `scratch`), the record and plot."""
    root = Path(args.records) if args.records else scratch
    seeds = [int(s) for s in args.seeds.split(",")]
    env = machine_info(args.device)
    result = {
        "benchmark": "time_to_accuracy",
        "command": command,
        "experiment": "ff-supervised",
        "preset": args.preset,
        "config_overrides": [f"training.snapshot_every={args.snapshot_every}"],
        "machine": machine_label(env),  # CPU model and torch threads
        "env": env,
        "git_commit": git_commit(),
        "target_error": args.target_error,
        "target_seconds": args.target_seconds,
        "mnist_first_load_seconds": cache_seconds,
        "runs": [],
    }
    for seed in seeds:
        r = run_preset(args.preset, seed, root, args.snapshot_every, args.device)
        result["runs"].append(r)
        print(f"{args.preset} seed {seed}: test error {r['test_error']:.2%} after {r['seconds_to_result']:.0f} s "
              f"({r['epochs']} epochs; training {r['train_seconds']:.0f} s, test {r['test_eval_seconds']:.1f} s)",
              flush=True)
    errors = [r["test_error"] for r in result["runs"]]
    secs = [r["seconds_to_result"] for r in result["runs"]]
    result["test_error_mean"] = float(np.mean(errors))
    result["test_error_sd"] = float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0
    result["seconds_mean"] = float(np.mean(secs))
    result["seconds_max"] = float(np.max(secs))
    result["target_met"] = bool(result["test_error_mean"] <= args.target_error and max(secs) <= args.target_seconds)
    if args.baseline_seconds > 0:
        budget = result["seconds_mean"]
        base = run_budgeted(args.baseline, seeds[0], scratch, max(args.baseline_seconds, budget), args.device, threads)
        base["error_at_speed_preset_seconds"] = error_at(base["curve_seconds"], base["curve_test_error"], budget)
        result["baseline"] = [base]
        result["ratios"] = {}
        if base["error_at_speed_preset_seconds"] is not None:
            result["ratios"]["baseline_error_over_preset_error_at_same_seconds"] = (
                base["error_at_speed_preset_seconds"] / result["test_error_mean"])
        at = base["error_at_speed_preset_seconds"]
        print(f"{args.baseline} seed {seeds[0]} after {budget:.0f} s of training: "
              f"{'no epoch finished' if at is None else f'test error {at:.2%}'}", flush=True)
    print(f"{args.preset}: {result['test_error_mean']:.2%} ± {result['test_error_sd']:.2%} over seeds {args.seeds}, "
          f"at most {result['seconds_max']:.0f} s; target <= {args.target_error:.1%} in <= {args.target_seconds:.0f} s: "
          f"{'met' if result['target_met'] else 'NOT met'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = benchmark_record_path(out, "time_to_accuracy", args.device, args.tag).stem
    against = f" vs --preset {args.baseline}" if args.baseline_seconds > 0 else ""  # the baseline ran
    result["architecture"] = f"ff-supervised --preset {args.preset}{against}, per-label goodness test"
    result["rows"] = [
        {"run": f"{args.preset} seed {r['seed']}", "epochs": r["epochs"], "test_error_%": 100 * r["test_error"],
         "seconds_to_result": r["seconds_to_result"], "training_s": r["train_seconds"], "test_s": r["test_eval_seconds"]}
        for r in result["runs"]
    ] + [
        {"run": f"{b['preset']} seed {b['seed']}, stopped after {b['budget_seconds']:.0f} s", "epochs": len(b["curve_seconds"]),
         "test_error_%": 100 * b["curve_test_error"][-1], "training_s": b["curve_seconds"][-1]}
        for b in result.get("baseline", []) if b["curve_seconds"]
    ]
    result["plots"] = [(out / f"{name}.png").as_posix()]
    result["notes"] = [
        f"{args.preset}: {result['test_error_mean']:.2%} ± {100 * result['test_error_sd']:.2f} (seeds {args.seeds}), "
        f"at most {result['seconds_max']:.0f} s from start to record, MNIST loaded from the cache; target "
        f"<= {args.target_error:.1%} in <= {args.target_seconds:.0f} s: {'met' if result['target_met'] else 'not met'}."
    ]
    plot(result, out / f"{name}.png")
    atomic_write_json(out / f"{name}.json", result)
    print(f"written: {out / name}.json, .png")


if __name__ == "__main__":
    main()
