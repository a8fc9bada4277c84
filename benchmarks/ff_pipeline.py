"""Examples/s of FF on several processes vs one, and vs a GPipe backprop pipeline, in one run.

All runs train 784-1000-1000-1000-1000 (default) with minibatches of 100 on the same machine:
  * FF, one process with all the cores (the layer-pipeline code with one rank: the same work);
  * FF layer pipeline, K ranks with one thread each (random negatives, no readout);
  * FF data parallel, K ranks (hard negatives and readout included: more work per example);
  * backprop on one process, and a GPipe backprop pipeline of K ranks with M micro-batches.
Writes results/benchmarks/ff_pipeline-cpu.json (rows + ratios).

    python benchmarks/ff_pipeline.py --ranks 2 --steps 60
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mortalnet import config as cfgmod
from mortalnet.data.mnist import MnistConfig
from mortalnet.parallel.ff_pipeline import data_parallel_rank, pipeline_rank
from mortalnet.parallel.gpipe import gpipe_rank
from mortalnet.parallel.launch import spawn
from mortalnet.rules.forward_forward import FFConfig
from mortalnet.runs import atomic_write_json, git_commit, machine_info, machine_label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="1000,1000,1000,1000")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--micro-batches", type=int, default=4)
    ap.add_argument("--out", default="results/benchmarks")
    args = ap.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    cores = os.cpu_count() or 1
    K = args.ranks
    base = {"hidden": hidden, "data": cfgmod.to_dict(MnistConfig(source="synthetic")), "batch_size": 100,
            "schedule": "constant", "shuffle": True, "seed": 0, "evaluate": False, "max_steps": args.steps,
            "epochs": args.steps // 20 + 1}
    ff_random = dict(base, rule=cfgmod.to_dict(FFConfig(negatives="random", readout=False)))
    ff_hard = dict(base, rule=cfgmod.to_dict(FFConfig()))
    gp = {"hidden": hidden, "batch_size": 100, "steps": args.steps, "seed": 0}

    def rate(results):
        return min(r["examples_per_s"] for r in results)

    rows = []

    def add(name, ranks, threads, results, note=""):
        rows.append({"run": name, "ranks": ranks, "threads_per_rank": threads,
                     "examples_per_s": rate(results), "note": note})
        print(f"{name:45s} {ranks} x {threads} threads: {rate(results):8.0f} examples/s {note}")

    add("FF, one process", 1, cores, spawn(pipeline_rank, 1, (ff_random,), threads_per_rank=cores))
    add("FF layer pipeline", K, 1, spawn(pipeline_rank, K, (ff_random,), threads_per_rank=1),
        "random negatives, no readout, as the one-process row")
    add("FF data parallel (hard negatives + readout)", K, 1, spawn(data_parallel_rank, K, (ff_hard,), threads_per_rank=1),
        "gradients all-reduced per layer")
    add("backprop, one process", 1, cores, spawn(gpipe_rank, 1, (dict(gp, micro_batches=1),), threads_per_rank=cores))
    add(f"backprop GPipe, {args.micro_batches} micro-batches", K, 1,
        spawn(gpipe_rank, K, (dict(gp, micro_batches=args.micro_batches),), threads_per_rank=1),
        f"bubble (K-1)/(M+K-1) = {(K - 1) / (args.micro_batches + K - 1):.2f}")

    r = {row["run"]: row["examples_per_s"] for row in rows}
    env = machine_info("cpu")
    result = {
        "benchmark": "ff_pipeline",
        "command": f"python benchmarks/ff_pipeline.py --hidden {args.hidden} --ranks {K} --steps {args.steps} "
                   f"--micro-batches {args.micro_batches}",
        "architecture": f"784-{'-'.join(map(str, hidden))}, batch 100, float32, {cores} CPU cores",
        "machine": machine_label(env),
        "env": env,
        "git_commit": git_commit(),
        "rows": rows,
        "ratios": {
            "ff_pipeline_over_ff_one_process": r["FF layer pipeline"] / r["FF, one process"],
            "ff_pipeline_over_backprop_gpipe": r["FF layer pipeline"] / r[f"backprop GPipe, {args.micro_batches} micro-batches"],
            "backprop_gpipe_over_backprop_one_process": r[f"backprop GPipe, {args.micro_batches} micro-batches"] / r["backprop, one process"],
        },
        "notes": [f"{K} ranks on a {cores}-core machine: more ranks than cores only time-share the cores."],
    }
    out = Path(args.out) / "ff_pipeline-cpu.json"
    atomic_write_json(out, result)
    for k, v in result["ratios"].items():
        print(f"  {k}: {v:.2f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
