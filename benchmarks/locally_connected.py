"""Speed of the locally connected layer (nets/local.py) against a dense layer of the same FLOPs.

For one FF training step of a layer (forward on positive + negative rows, then the weight
contraction with the FF signal), measured in one run on the same machine:
  * the locally connected layer for several output tilings: (1, 1) is the exact per-position
    product, (H, W) a masked dense layer, in between masked tiles (`default_tile` picks one);
  * a dense layer whose multiply-adds per example equal the locally connected layer's true ones.
Effective GFLOP/s count only the true multiply-adds (masked zeros are overhead).

    python benchmarks/locally_connected.py                       # ff-local-rf's layer 2 (MNIST)
    python benchmarks/locally_connected.py --shape 3,32,32 --threads 2   # ff-cifar10's layers
Writes results/benchmarks/locally_connected-<device>.json (schema of ff_throughput.py).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from mortalnet.nets.local import LocallyConnected2d, default_tile
from mortalnet.runs import atomic_write_json, benchmark_provenance, benchmark_record_path, machine_info, record_tag


def timeit(fn, min_seconds: float, warmup: int = 2) -> float:
    """Median seconds per call over at least `min_seconds` (robust to a busy machine)."""
    for _ in range(warmup):
        fn()
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="3,28,28", help="input C,H,W of the layer")
    ap.add_argument("--channels", type=int, default=3, help="units per output position")
    ap.add_argument("--kernel", type=int, default=11)
    ap.add_argument("--batch", type=int, default=100, help="B: the step sees 2B rows (positive + negative)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0, help="timing budget per measurement")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name (<name>-<device>-<tag>.json), e.g. another host")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    c, H, W = (int(v) for v in args.shape.split(","))
    rows = 2 * args.batch
    g = torch.Generator().manual_seed(0)
    h = torch.rand(rows, c * H * W, generator=g)
    auto = default_tile(H, W, args.kernel, args.channels)
    candidates = {(1, 1), (2, 2), (4, 4), auto, (H // 4, W // 4), (H // 2, W // 2), (H, W)}
    tiles = sorted(t for t in candidates if min(t) >= 1 and H % t[0] == 0 and W % t[1] == 0)  # tiles divide the map
    results, step_time = [], {}
    true_macs = None
    for tile in tiles:
        layer = LocallyConnected2d((c, H, W), args.channels, args.kernel, tile, generator=g)
        signal = torch.randn(rows, layer.fan_out, generator=g)
        true_macs = layer.macs_per_example()

        def step():
            layer(h)
            layer.local_grads(h, signal)

        sec = timeit(step, args.seconds)
        step_time[tile] = sec
        stored = layer.weight.numel()
        results.append({
            "measurement": f"locally connected, tile {tile[0]}x{tile[1]}" + (" (default)" if tile == auto else ""),
            "ms_per_step": 1e3 * sec,
            "masked_mac_overhead": stored / true_macs,
            "effective_gflop_s": 2 * 2 * rows * true_macs / sec / 1e9,
        })
    # dense layer with the same true multiply-adds per example
    d_in = c * H * W
    d_out = max(1, round(true_macs / d_in))
    w = torch.randn(d_in, d_out, generator=g) / d_in**0.5
    sig = torch.randn(rows, d_out, generator=g)

    def dense_step():
        torch.relu(h @ w)
        h.T @ sig

    dense_sec = timeit(dense_step, args.seconds)
    results.append({
        "measurement": f"dense {d_in}->{d_out} (same multiply-adds)",
        "ms_per_step": 1e3 * dense_sec,
        "masked_mac_overhead": 1.0,
        "effective_gflop_s": 2 * 2 * rows * d_in * d_out / dense_sec / 1e9,
    })
    best = min(step_time, key=step_time.get)
    env = machine_info("cpu")
    architecture = (f"locally connected {c}x{H}x{W} -> {args.channels}x{H}x{W}, {args.kernel}x{args.kernel} "
                    f"receptive fields ({true_macs / 1e6:.2f}M multiply-adds per example), FF step on "
                    f"{rows} rows (forward + weight contraction), float32")
    out = {
        **benchmark_provenance("locally_connected", args, architecture, env),
        "rows": results,
        "notes": [f"load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end on "
                  f"{os.cpu_count()} CPUs: on a busy machine every timing is inflated, not always equally"],
        "ratios": {
            "best_tile": f"{best[0]}x{best[1]}",
            "default_tile_time_over_best": step_time[auto] / step_time[best],
            "exact_per_position_time_over_best_tile": step_time[(1, 1)] / step_time[best],
            "masked_dense_time_over_best_tile": step_time[(H, W)] / step_time[best],
            "best_tile_time_over_dense_same_flops": step_time[best] / dense_sec,
        },
    }
    path = benchmark_record_path(args.out, "locally_connected", "cpu", args.tag)
    atomic_write_json(path, out)
    print(f"machine: {out['machine']}; {out['architecture']}")
    for r in results:
        print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{v}" for k, v in r.items()))
    for k, v in out["ratios"].items():
        print(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
