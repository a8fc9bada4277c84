"""FF training steps in float32 and with bf16 products, timed side by side in interleaved blocks.

For each net, two learners (one with `rule.precision=float32`, one with `bfloat16`, same seed) take
turns: `--blocks` blocks of `--steps` training steps each, alternating, so that both see the same
machine state. The nets are the paper presets that offer bf16: the recurrent net
(`rules/ff_recurrent.py`, 8 damped iterations) at 2x1000 and 2x2000, and unsupervised FF
(`rules/ff_unsupervised.py`, hybrid negatives) at 4x2000. The record keeps every block's ms per
step, the ratio of the medians, and the implied seconds of training per 50k-image epoch.
Writes results/benchmarks/precision_step-<device>.json.

    python benchmarks/precision_step.py                       # all three nets, 1 thread (as the records ran)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ff_throughput import benchmark_batches, interleaved_step_times, positive_int, write_record  # noqa: E402

from mortalnet.rules.ff_recurrent import FFRecurrentConfig, FFRecurrentLearner  # noqa: E402
from mortalnet.rules.ff_unsupervised import FFUnsupervisedConfig, FFUnsupervisedLearner  # noqa: E402
from mortalnet.runs import benchmark_provenance, benchmark_record_path, machine_info, record_tag  # noqa: E402

# name -> (description, learner class, its config, hidden widths)
NETS = {
    "recurrent-2x1000": ("recurrent FF step, 2x1000", FFRecurrentLearner, FFRecurrentConfig(), (1000, 1000)),
    "recurrent-2x2000": ("recurrent FF step, 2x2000", FFRecurrentLearner, FFRecurrentConfig(), (2000, 2000)),
    "unsupervised-4x2000": ("unsupervised FF step (hybrid negatives), 4x2000", FFUnsupervisedLearner,
                            FFUnsupervisedConfig(), (2000, 2000, 2000, 2000)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, from {', '.join(NETS)}")
    ap.add_argument("--batch", type=positive_int, default=100)
    ap.add_argument("--threads", type=positive_int, default=1, help="the paper records ran one thread each")
    ap.add_argument("--blocks", type=positive_int, default=5)
    ap.add_argument("--steps", type=positive_int, default=5, help="training steps per timed block")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name (<name>-<device>-<tag>.json), e.g. another host")
    args = ap.parse_args(argv)
    unknown = [n for n in args.nets.split(",") if n not in NETS]
    if unknown:
        ap.error(f"unknown net(s) {', '.join(unknown)}; valid: {', '.join(NETS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = args.nets.split(",")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    B = args.batch
    x, y = benchmark_batches(B, device)
    steps_per_epoch = 50_000 // B

    rows, ratios = [], {}
    for name in names:
        what, Learner, config, hidden = NETS[name]
        learners = {precision: Learner(replace(config, precision=precision), hidden, seed=0, device=device)
                    for precision in ("float32", "bfloat16")}
        ms = interleaved_step_times(learners, x, y, B, args.blocks, args.steps, device)
        for precision in learners:
            median = statistics.median(ms[precision])
            rows.append({"measurement": f"{what}, {precision} products",
                         "median_ms_per_step": median, "min_ms_per_step": min(ms[precision]),
                         "max_ms_per_step": max(ms[precision]),
                         "train_seconds_per_epoch": median * steps_per_epoch / 1e3})
        ratios[f"bf16_over_fp32_step_speed_{name}"] = statistics.median(ms["float32"]) / statistics.median(ms["bfloat16"])

    env = machine_info(device)
    arch = f"784-({'; '.join(names)})-10, batch {B}, {args.threads} thread(s)"
    result = {**benchmark_provenance("precision_step", args, arch, env), "rows": rows, "ratios": ratios}
    write_record(result, benchmark_record_path(args.out, "precision_step", device.type, args.tag))


if __name__ == "__main__":
    main()
