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

CHILD = r"""
import gc, json, sys, torch
from mortalnet.rules import create_rule
from mortalnet.rules.forward_forward import FFConfig
variant, depth, width, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
configs = {"ff-layers": ("forward-forward", FFConfig(negatives="random", readout=False)),
           "ff-ffnew": ("forward-forward", FFConfig()), "backprop": ("backprop", None)}
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


def measure(rule: str, depth: int, width: int, batch: int, steps: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run([sys.executable, "-c", CHILD, rule, str(depth), str(width), str(batch), str(steps)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="2,4,8,16")
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default="results/benchmarks")
    args = ap.parse_args()
    from mortalnet.report.plots import _plt, _save
    from mortalnet.runs import atomic_write_json, git_commit, machine_info, machine_label

    depths = [int(d) for d in args.depths.split(",")]
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
    out_dir = Path(args.out)
    plot = out_dir / "memory_depth-cpu.png"
    _save(fig, plot)

    def ratio(rule):
        w = {r["layers"]: r["working_memory_mib"] for r in rows if r["rule"] == rule}
        return w[depths[-1]] / max(w[depths[0]], 1e-9)

    env = machine_info("cpu")
    atomic_write_json(out_dir / "memory_depth-cpu.json", {
        "benchmark": "memory_depth",
        "command": f"python benchmarks/memory_depth.py --depths {args.depths} --width {args.width} --batch {args.batch}",
        "architecture": f"784-({args.width} x depth), batch {args.batch}, float32",
        "machine": machine_label(env), "env": env, "git_commit": git_commit(),
        "rows": rows,
        "ratios": {f"{key}_working_memory_{depths[-1]}_over_{depths[0]}_layers": ratio(name)
                   for key, name in VARIANTS.items()},
        "notes": ["The readout of ffnew.m keeps each read-out layer's normalized neutral-pass activity "
                  "(B x H) until the softmax gradient is known: that part grows with depth."],
        "plots": [plot.as_posix()],
    })
    print(f"written to {out_dir / 'memory_depth-cpu.json'}")


if __name__ == "__main__":
    main()
