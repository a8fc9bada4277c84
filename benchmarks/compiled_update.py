"""The bf16 FF step with and without `rule.compile_update`, timed in interleaved blocks.

Two learners of the same net (bf16 products; one eager, one with the compiled update) take turns:
`--blocks` blocks of `--steps` training steps each, alternating, so that both see the same machine
state; the record keeps every block's ms per step and the ratio of the medians, for each thread
count. Writes results/benchmarks/compiled_update-<device>.json.

    python benchmarks/compiled_update.py                       # 784-4x2000, batch 100, 1 and 2 threads
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ff_throughput import (  # noqa: E402
    benchmark_batches,
    interleaved_step_times,
    positive_int,
    positive_ints,
    positive_ints_option,
    write_record,
)

from mortalnet.rules.forward_forward import FFConfig, FFLearner  # noqa: E402
from mortalnet.runs import benchmark_provenance, benchmark_record_path, machine_info, machine_label, record_tag  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="2000,2000,2000,2000")
    ap.add_argument("--batch", type=positive_int, default=100)
    ap.add_argument("--threads", default="1,2", help="thread counts to measure, comma-separated")
    ap.add_argument("--blocks", type=positive_int, default=8)
    ap.add_argument("--steps", type=positive_int, default=15, help="training steps per timed block")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name (<name>-<device>-<tag>.json), e.g. another host")
    args = ap.parse_args(argv)
    for option in ("hidden", "threads"):  # checked here, kept as typed for the recorded command line
        positive_ints_option(ap, option, getattr(args, option))
    return args


def provenance(args: argparse.Namespace, architecture: str, env: dict, threads: tuple[int, ...]) -> dict:
    """The record's head, with every thread count measured (not only the last one set) in env and
    in the machine label."""
    env = {**env, "torch_threads": list(threads)}
    head = benchmark_provenance("compiled_update", args, architecture, env)
    counts = [str(t) for t in threads]
    counts_text = counts[0] if len(counts) == 1 else f"{', '.join(counts[:-1])} and {counts[-1]}"
    head["machine"] = machine_label({**env, "torch_threads": counts_text})  # e.g. 'AMD EPYC, 1 and 2 threads'
    return head


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    hidden = positive_ints(args.hidden)
    thread_counts = positive_ints(args.threads)
    B = args.batch
    x, y = benchmark_batches(B, device)

    learners = {
        name: FFLearner(replace(FFConfig(), precision="bfloat16", compile_update=compiled), hidden, seed=0,
                        device=device)
        for name, compiled in (("eager", False), ("compiled", True))
    }

    rows, ratios = [], {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        ms = interleaved_step_times(learners, x, y, B, args.blocks, args.steps, device)  # compiles at warm-up
        for name in learners:
            rows.append({"measurement": f"bf16 FF step, {name} update, {threads} thread(s)",
                         "median_ms_per_step": statistics.median(ms[name]),
                         "min_ms_per_step": min(ms[name]), "max_ms_per_step": max(ms[name])})
        ratios[f"compiled_over_eager_step_speed_{threads}_threads"] = (
            statistics.median(ms["eager"]) / statistics.median(ms["compiled"]))

    env = machine_info(device)
    result = {
        **provenance(args, f"784-{'-'.join(map(str, hidden))}, batch {B}, bfloat16", env, thread_counts),
        "rows": rows,
        "ratios": ratios,
    }
    write_record(result, benchmark_record_path(args.out, "compiled_update", device.type, args.tag))


if __name__ == "__main__":
    main()
