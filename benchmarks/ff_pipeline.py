"""Examples/s of FF on several processes vs one, and vs a GPipe backprop pipeline, in one run.

All runs train 784-1000-1000-1000-1000 (default) with minibatches of 100 on the same machine:
  * FF, one process with all the cores (the layer-pipeline code with one rank: the same work);
  * FF layer pipeline, K ranks with one thread each (random negatives, no readout);
  * FF data parallel, K ranks (hard negatives and readout included: more work per example);
  * backprop on one process, and a GPipe backprop pipeline of K ranks with M micro-batches.
Writes results/benchmarks/ff_pipeline-cpu.json (rows + ratios).

    python benchmarks/ff_pipeline.py --ranks 2 --steps 60 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from mortalnet import config as cfgmod
from mortalnet.data.mnist import MnistConfig
from mortalnet.parallel.ff_pipeline import data_parallel_rank, pipeline_rank
from mortalnet.parallel.gpipe import gpipe_rank
from mortalnet.parallel.launch import spawn
from mortalnet.rules.forward_forward import FFConfig
from mortalnet.runs import benchmark_provenance, benchmark_record_path, machine_info, record_tag

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ff_throughput import positive_int, positive_ints_option, write_record  # noqa: E402  (the benchmarks' shared helpers)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="1000,1000,1000,1000")
    ap.add_argument("--ranks", type=positive_int, default=2)
    ap.add_argument("--steps", type=positive_int, default=60)
    ap.add_argument("--micro-batches", type=positive_int, default=4)
    ap.add_argument("--repeats", type=positive_int, default=3, help="rounds, each timing every row once")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name (<name>-<device>-<tag>.json), e.g. another host")
    args = ap.parse_args(argv)
    hidden = list(positive_ints_option(ap, "hidden", args.hidden))
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

    gpipe_name = f"backprop GPipe, {args.micro_batches} micro-batches"
    # (row name, ranks, threads per rank, rank function, its argument, note)
    runs = [
        ("FF, one process", 1, cores, pipeline_rank, ff_random, ""),
        ("FF layer pipeline", K, 1, pipeline_rank, ff_random, "random negatives, no readout, as the one-process row"),
        ("FF data parallel (hard negatives + readout)", K, 1, data_parallel_rank, ff_hard,
         "gradients all-reduced per layer"),
        ("backprop, one process", 1, cores, gpipe_rank, dict(gp, micro_batches=1), ""),
        (gpipe_name, K, 1, gpipe_rank, dict(gp, micro_batches=args.micro_batches),
         f"bubble (K-1)/(M+K-1) = {(K - 1) / (args.micro_batches + K - 1):.2f}"),
    ]
    # Round-robin: every round times each run once, so a slow spell of the machine hits all rows
    # alike instead of one; rows report the median round and the range.
    rates: dict[str, list[float]] = {name: [] for name, *_ in runs}
    for round_index in range(args.repeats):
        for name, ranks, threads, fn, arg, _ in runs:
            rates[name].append(rate(spawn(fn, ranks, (arg,), threads_per_rank=threads)))
            print(f"round {round_index + 1}/{args.repeats}  {name:45s} {ranks} x {threads} threads: "
                  f"{rates[name][-1]:8.0f} examples/s")
    rows = [{"run": name, "ranks": ranks, "threads_per_rank": threads,
             "examples_per_s": statistics.median(rates[name]),
             "min_examples_per_s": min(rates[name]), "max_examples_per_s": max(rates[name]), "note": note}
            for name, ranks, threads, _, _, note in runs]

    def ratio(a: str, b: str) -> tuple[float, float, float]:
        """The ratio of row a's median to row b's, and the lowest and highest per-round ratio."""
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        return statistics.median(rates[a]) / statistics.median(rates[b]), min(per_round), max(per_round)

    ratio_pairs = {
        "ff_pipeline_over_ff_one_process": ("FF layer pipeline", "FF, one process"),
        "ff_pipeline_over_backprop_gpipe": ("FF layer pipeline", gpipe_name),
        "backprop_gpipe_over_backprop_one_process": (gpipe_name, "backprop, one process"),
    }
    ratios = {key: ratio(a, b) for key, (a, b) in ratio_pairs.items()}
    env = machine_info("cpu")
    result = benchmark_provenance("ff_pipeline", args,
                                  f"784-{'-'.join(map(str, hidden))}, batch 100, float32, {cores} CPU cores", env)
    result |= {
        "rows": rows,
        "ratios": {key: median for key, (median, _, _) in ratios.items()},
        "notes": [f"{K} ranks on a {cores}-core machine: more ranks than cores only time-share the cores.",
                  f"{args.repeats} rounds, each timing every row once in turn; examples/s is the median round "
                  "(min and max beside it), ratios are of the medians. Per-round ratio ranges: "
                  + "; ".join(f"{key} {low:.2f}-{high:.2f}" for key, (_, low, high) in ratios.items())],
    }
    write_record(result, benchmark_record_path(args.out, "ff_pipeline", "cpu", args.tag))


if __name__ == "__main__":
    main()
