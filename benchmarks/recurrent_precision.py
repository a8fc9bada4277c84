"""The recurrent FF training step in float32 and with bf16 products, timed in interleaved blocks.

For each width, two learners of the same recurrent net (`rules/ff_recurrent.py`, the paper's 8
damped iterations; one with `rule.precision=float32`, one with `bfloat16`) take turns: `--blocks`
blocks of `--steps` training steps each, alternating, so that both see the same machine state.
The record keeps every block's ms per step, the ratio of the medians, and the implied seconds of
training per 50k-image epoch. Writes results/benchmarks/recurrent_precision-<device>.json.

    python benchmarks/recurrent_precision.py                  # 2x1000 (the paper preset) and 2x2000, 1 thread
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ff_throughput import benchmark_batches, interleaved_step_times, write_record  # noqa: E402

from mortalnet.rules.ff_recurrent import FFRecurrentConfig, FFRecurrentLearner  # noqa: E402
from mortalnet.runs import benchmark_provenance, machine_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="1000,2000", help="hidden width of the two layers, one net per value")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="the paper records ran one thread each")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/benchmarks")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    B = args.batch
    x, y = benchmark_batches(B, device)
    steps_per_epoch = 50_000 // B

    rows, ratios = [], {}
    for width in (int(w) for w in args.widths.split(",")):
        learners = {
            precision: FFRecurrentLearner(replace(FFRecurrentConfig(), precision=precision), (width, width), seed=0,
                                          device=device)
            for precision in ("float32", "bfloat16")
        }
        ms = interleaved_step_times(learners, x, y, B, args.blocks, args.steps, device)
        for precision in learners:
            median = statistics.median(ms[precision])
            rows.append({"measurement": f"recurrent FF step, 2x{width}, {precision} products",
                         "median_ms_per_step": median, "min_ms_per_step": min(ms[precision]),
                         "max_ms_per_step": max(ms[precision]),
                         "train_seconds_per_epoch": median * steps_per_epoch / 1e3})
        ratios[f"bf16_over_fp32_step_speed_2x{width}"] = (
            statistics.median(ms["float32"]) / statistics.median(ms["bfloat16"]))

    env = machine_info(device)
    arch = f"784-2x({args.widths})-10 recurrent, 8 iterations, batch {B}, {args.threads} thread(s)"
    result = {**benchmark_provenance("recurrent_precision", args, arch, env), "rows": rows, "ratios": ratios}
    write_record(result, Path(args.out) / f"recurrent_precision-{device.type}.json")


if __name__ == "__main__":
    main()
