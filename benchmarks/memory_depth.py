"""Peak training memory vs depth for FF and backprop (layers of 2000 units), measured for real.

Each (rule, depth) runs in a fresh process with glibc's mmap threshold fixed (large blocks go
back to the OS when freed, so the resident set follows what is alive). After one warm-up step
(parameters and optimizer state allocated) the process's peak resident set is reset
(/proc/self/clear_refs), a few steps run, and the new peak minus the resident set before them
is the training working memory: activations, gradients in flight, temporaries. FF keeps one
layer's activity at a time; backprop keeps every layer's for the backward pass.

    python benchmarks/memory_depth.py --depths 2,4,8,16 --batch 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ff_throughput import positive_int  # noqa: E402  (the benchmarks' shared helpers)

from mortalnet.runs import record_tag  # noqa: E402

CHILD = r"""
import gc, json, sys, torch
from mortalnet.rules import create_rule
from mortalnet.rules.forward_forward import FFConfig
variant, depth, width, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
first = 0 if depth == 1 else 1  # goodness and readout from layer 2 (ffnew.m), or from the only layer of a 1-layer net
configs = {"ff-layers": ("forward-forward", FFConfig(negatives="random", readout=False, goodness_from=first,
                                                     readout_from=first)),
           "ff-ffnew": ("forward-forward", FFConfig(goodness_from=first, readout_from=first)),
           "backprop": ("backprop", None)}
rule, config = configs[variant]
learner = create_rule(rule, config, hidden=(width,) * depth, seed=0)
x, y = torch.rand(batch, 784), torch.randint(0, 10, (batch,))
def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
learner.train_batch(x, y)
gc.collect()
before = kib("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
for _ in range(steps):
    learner.train_batch(x, y)
peak = kib("VmHWM:")
params = sum(p.numel() * p.element_size() for p in learner.parameters()) // 1024
print(json.dumps({"rss_before_kib": before, "peak_kib": peak, "working_kib": peak - before, "params_kib": params}))
"""


VARIANTS = {
    "ff-layers": "FF layers (random negatives, no readout)",
    "ff-ffnew": "FF as ffnew.m (hard negatives + softmax readout)",
    "backprop": "backprop",
}


def child_threads() -> str:
    """OMP_NUM_THREADS of the measuring processes: this process's, or 2."""
    return os.environ.get("OMP_NUM_THREADS", "2")


def measure(rule: str, depth: int, width: int, batch: int, steps: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=child_threads())
    out = subprocess.run([sys.executable, "-c", CHILD, rule, str(depth), str(width), str(batch), str(steps)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the measuring process for {rule}, {depth} layers of {width}, batch {batch} failed "
                           f"(exit status {out.returncode}):\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def depth_list(text: str) -> list[int]:
    """argparse type: comma-separated depths, each >= 1."""
    try:
        return [positive_int(d) for d in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"--depths {text!r}: each depth {e}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="2,4,8,16", help="comma-separated numbers of hidden layers (>= 1)")
    ap.add_argument("--width", type=positive_int, default=2000)
    ap.add_argument("--batch", type=positive_int, default=1000)
    ap.add_argument("--steps", type=positive_int, default=2)
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name (memory_depth-cpu-<tag>.json), e.g. another host")
    args = ap.parse_args(argv)
    try:
        depth_list(args.depths)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from mortalnet.report.plots import _plt, _save
    from mortalnet.runs import atomic_write_json, benchmark_provenance, benchmark_record_path, machine_info

    depths = depth_list(args.depths)
    rows = []
    for rule in VARIANTS:
        for depth in depths:
            m = measure(rule, depth, args.width, args.batch, args.steps)
            rows.append({"rule": VARIANTS[rule], "layers": depth, "working_memory_mib": m["working_kib"] / 1024,
                         "parameters_mib": m["params_kib"] / 1024, "resident_before_mib": m["rss_before_kib"] / 1024})
            print(f"{rule:10s} {depth:3d} layers: working memory {m['working_kib'] / 1024:8.1f} MiB, "
                  f"parameters {m['params_kib'] / 1024:7.1f} MiB")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for rule, marker in zip(VARIANTS.values(), "o^s"):
        pts = [(r["layers"], r["working_memory_mib"]) for r in rows if r["rule"] == rule]
        ax.plot(*zip(*pts), marker=marker, label=rule)
    ax.set_xlabel(f"hidden layers of {args.width}")
    ax.set_ylabel("training working memory (MiB)")
    ax.set_xscale("log", base=2)
    ax.set_title(f"peak memory beyond parameters + optimizer state, batch {args.batch}")
    ax.legend()
    ax.grid(alpha=0.3)
    record = benchmark_record_path(args.out, "memory_depth", "cpu", args.tag)
    plot = record.with_suffix(".png")
    _save(fig, plot)

    def ratio(rule):
        w = {r["layers"]: r["working_memory_mib"] for r in rows if r["rule"] == rule}
        return w[depths[-1]] / max(w[depths[0]], 1e-9)

    env = machine_info("cpu")
    if child_threads().isdigit():
        env["torch_threads"] = int(child_threads())  # the measuring processes' threads, not this one's
    notes = ["The readout of ffnew.m keeps each read-out layer's normalized neutral-pass activity "
             "(B x H) until the softmax gradient is known: that part grows with depth."]
    if 1 in depths:
        notes.append("The 1-layer FF nets read out and test goodness from their only layer "
                     "(readout_from = goodness_from = 0); deeper nets from layer 2 on, as ffnew.m.")
    atomic_write_json(record, {
        **benchmark_provenance("memory_depth", args, f"784-({args.width} x depth), batch {args.batch}, float32", env),
        "rows": rows,
        "ratios": {f"{key}_working_memory_{depths[-1]}_over_{depths[0]}_layers": ratio(name)
                   for key, name in VARIANTS.items()},
        "notes": notes,
        "plots": [plot.as_posix()],
    })
    print(f"written to {record}")


if __name__ == "__main__":
    main()
