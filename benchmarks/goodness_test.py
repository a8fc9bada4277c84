"""The per-label goodness test: how much cheaper than the naive one, and what a shortlist costs.

The test of Hinton (2022, sec. 3.3) runs each image once per label (10 labels) and picks the
label with the largest goodness summed over hidden layers 2..L. On trained networks (run records
that kept their checkpoint, e.g. `ff-supervised --preset paper` seeds 0 and 1) this measures, in
one invocation:

  * agreement: the validation and test error of the exact test (fused fast path, float32), of the
    same in bfloat16 and with int8 products (`rule.test_precision=int8`; eager, and compiled as a
    `rule.compile_update` learner runs it: int8-compiled), and of the shortlist test
    (`rule.goodness_shortlist=k`: one neutral pass into the softmax readout picks k candidate
    labels, only those are scored by goodness) for each k, with the number of images whose
    predicted label differs from the exact test's;
  * speed, side by side on the first run's trained weights and the same test images (in chunks of
    about 2000 image-label rows, as FFLearner.evaluate: 200 images, or 666 with a shortlist of 3): the naive implementation (`ff_throughput.NaiveFF`: ten full
    float32 passes), the library's straightforward path (`goodness_scores_reference`), the exact
    fast path in float32, bfloat16, int8 and int8-compiled, and the shortlist in float32 and bfloat16;
    every measurement --rounds times (default 3), in turn, each speed-up taken within a round and
    recorded as its median with its range.

    python benchmarks/goodness_test.py --runs results/ff-supervised/paper/seed0,results/ff-supervised/paper/seed1

Writes results/benchmarks/goodness_test-<device>[-<tag>].json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ff_throughput import NaiveFF, positive_int, ratio_over_rounds, timeit  # noqa: E402  (the same naive implementation)

import mortalnet as mn  # noqa: E402
from mortalnet.runs import (  # noqa: E402
    atomic_write_json,
    benchmark_provenance,
    benchmark_record_path,
    machine_info,
    record_tag,
)


def test_config(cfg, shortlist: int, precision: str):
    """The learner's config for one test variant. precision: float32 | bfloat16 | int8 | int8-compiled;
    int8 is rule.test_precision=int8 (layers 2..L) with bfloat16 for layer 1's shared product and the
    shortlist's softmax pass: the fastest setting that still scores all ten labels; int8-compiled the
    same as a rule.compile_update learner runs it (layers 2..L in one compiled pass)."""
    if precision in ("int8", "int8-compiled"):
        return replace(cfg, goodness_shortlist=shortlist, precision="bfloat16", test_precision="int8",
                       compile_update=precision == "int8-compiled")
    return replace(cfg, goodness_shortlist=shortlist, precision=precision, test_precision="same",
                   compile_update=False)


def predictions(learner, x: torch.Tensor, shortlist: int, precision: str) -> torch.Tensor:
    """Predicted labels (N,) of the per-label goodness test with the given shortlist and precision."""
    base = learner.cfg
    learner.cfg = test_config(base, shortlist, precision)
    try:
        return learner.predict_batches(learner.goodness_scores, x, chunk=learner.goodness_chunk).argmax(1)
    finally:
        learner.cfg = base


def speeds_over_naive(rounds: list[dict[str, float]], naive: str) -> dict[str, dict[str, float]]:
    """Per measurement, naive seconds / its seconds taken within each round: {"median", "min", "max"}
    over the rounds (a shared VM's speed drifts between minutes; a ratio of two medians would mix rounds)."""
    return {name: ratio_over_rounds(rounds, naive, name) for name in rounds[0]}


def naive_with_weights(learner) -> NaiveFF:
    """NaiveFF holding the trained learner's layer weights (nn.Linear stores them transposed)."""
    hidden = tuple(layer.bias.numel() for layer in learner.net.layers)
    naive = NaiveFF(hidden)
    with torch.no_grad():
        for lin, layer in zip(naive.layers, learner.net.layers):
            lin.weight.copy_(layer.weight.T)
            lin.bias.copy_(layer.bias)
    return naive


def agreement_table(agreement: list[dict]) -> list[dict]:
    """One row per test variant: its errors on each run's validation and test set, and how many
    images (all runs and splits together) get a different label from the exact float32 test."""
    variants = list(dict.fromkeys((a["test"], a["precision"]) for a in agreement))
    runs = list(dict.fromkeys(a["run"] for a in agreement))
    rows = []
    for test, precision in variants:
        mine = [a for a in agreement if (a["test"], a["precision"]) == (test, precision)]
        row = {"test": test, "precision": precision}
        for split in ("validation", "test"):
            errs = [str(a["errors"]) for run in runs for a in mine if a["run"] == run and a["split"] == split]
            row[f"{split} errors (per run)"] = ", ".join(errs)
        row["images labelled differently from exact float32"] = sum(a["differs_from_exact"] for a in mine)
        row["images compared"] = sum(a["images"] for a in mine)
        rows.append(row)
    return rows


def agreement_title(runs: list[str], agreement: list[dict]) -> str:
    """Title of the agreement table, with the number of images per set as measured (e.g. 10,000 for
    MNIST's test set; the validation set's size depends on the run's data config)."""
    sizes = {}  # split -> image counts seen (one per run)
    for a in agreement:
        sizes.setdefault(a["split"], set()).add(a["images"])
    counts = {n for per_split in sizes.values() for n in per_split}
    if len(counts) == 1:
        per_set = f"{counts.pop():,} images per set"
    else:
        per_set = "; ".join(f"{split}: {' or '.join(f'{n:,}' for n in sorted(ns))} images"
                            for split, ns in sizes.items())
    return f"Agreement with the exact test on the trained networks ({', '.join(runs)}; errors out of {per_set})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="results/ff-supervised/paper/seed0,results/ff-supervised/paper/seed1",
                    help="comma-separated run directories with a checkpoint (a supervised FF learner)")
    ap.add_argument("--k", default="1,2,3,4,5", help="shortlist sizes to measure")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    ap.add_argument("--timing-images", type=int, default=1000)
    ap.add_argument("--rounds", type=positive_int, default=3,
                    help="rounds of every speed measurement, in turn; each speed-up is taken within a round and "
                         "recorded as its median, with its range over the rounds")
    ap.add_argument("--agreement-threads", type=int, default=0,
                    help="torch threads for the agreement part, which needs no idle machine (0 = --threads)")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name, goodness_test-<device>-<tag> (e.g. the nets or host)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ks = [int(k) for k in args.k.split(",")]
    runs = [r for r in args.runs.split(",") if r]
    missing = [r for r in runs if not Path(r).is_dir()]
    if not runs or missing:  # a usage error before minutes of timing, not a traceback after them
        ap.error(f"--runs: not a run directory: {', '.join(missing) or '(none given)'}")

    # --- speed first (needs an idle machine), side by side on the first run's weights -------------
    learner, first_cfg = mn.load_learner(runs[0], device="cpu")
    test_x = mn.load_mnist(first_cfg.data).test.tensors()[0][: args.timing_images]
    naive = naive_with_weights(learner)
    timed = {
        "naive implementation (10 full float32 passes, nn.Linear)":
            lambda: [naive.goodness_test(test_x[j : j + 200]) for j in range(0, len(test_x), 200)],
        "library straightforward path (10 full passes)":
            lambda: learner.predict_batches(learner.goodness_scores_reference, test_x, chunk=200),
    }
    exact_variants = [("exact, layer 1 shared", 0, p) for p in ("float32", "bfloat16", "int8", "int8-compiled")]
    for name, k, precision in exact_variants + [
        (f"shortlist {k}", k, p) for k in ks for p in ("float32", "bfloat16")
    ]:
        timed[f"{name}, {precision}"] = (lambda k=k, p=precision: predictions(learner, test_x, k, p))
    rounds = [{name: timeit(fn, args.seconds) for name, fn in timed.items()} for _ in range(args.rounds)]
    seconds = {name: statistics.median(r[name] for r in rounds) for name in timed}
    speed = speeds_over_naive(rounds, "naive implementation (10 full float32 passes, nn.Linear)")
    rows = [{"measurement": f"per-label goodness test: {name}", "images_per_s": len(test_x) / s,
             "speed_over_naive": speed[name]["median"], "speed_over_naive_min": speed[name]["min"],
             "speed_over_naive_max": speed[name]["max"]} for name, s in seconds.items()]
    # the exact test must agree with the naive one on the trained net (same weights)
    with torch.no_grad():
        naive_pred = torch.cat([naive.goodness_test(test_x[j : j + 200]) for j in range(0, len(test_x), 200)]).argmax(1)
    exact_pred = predictions(learner, test_x, 0, "float32")
    env = machine_info(device)  # the machine as timed (before the agreement part changes the threads)
    print("speed measured", flush=True)
    if args.agreement_threads:
        torch.set_num_threads(args.agreement_threads)

    # --- agreement on the trained networks -----------------------------------------------------
    agreement = []
    for run in runs:
        learner, cfg = mn.load_learner(run, device="cpu")
        data = mn.load_mnist(cfg.data)
        for split_name, split in (("validation", data.valid), ("test", data.test)):
            if not len(split):
                continue
            x, y = split.tensors()
            exact = predictions(learner, x, 0, "float32")
            variants = [("exact", 0, p) for p in ("float32", "bfloat16", "int8", "int8-compiled")]
            variants += [(f"shortlist {k}", k, p) for k in ks for p in ("float32", "bfloat16")]
            for name, k, precision in variants:
                pred = exact if (k, precision) == (0, "float32") else predictions(learner, x, k, precision)
                agreement.append({
                    "run": run, "split": split_name, "test": name, "precision": precision,
                    "errors": int((pred != y).sum()), "images": len(y),
                    "error": (pred != y).float().mean().item(),
                    "differs_from_exact": int((pred != exact).sum()),
                })
        print(f"{run}: agreement measured")

    hidden = [layer.bias.numel() for layer in learner.net.layers]
    ratios = {f"exact_{p.replace('-', '_')}_over_naive_speed": speed[f"exact, layer 1 shared, {p}"]["median"]
              for p in ("float32", "bfloat16", "int8", "int8-compiled")}
    for k in ks:
        ratios[f"shortlist{k}_bfloat16_over_naive_speed"] = speed[f"shortlist {k}, bfloat16"]["median"]
    result = {
        **benchmark_provenance("goodness_test", args, f"784-{'-'.join(map(str, hidden))} (trained: {runs[0]})", env),
        "rows": rows,
        "tables": [{"title": agreement_title(runs, agreement), "rows": agreement_table(agreement)}],
        "agreement": agreement,
        "exact_equals_naive_on_timing_images": bool(torch.equal(naive_pred, exact_pred)),
        "ratios": ratios,
        "notes": [
            "speed: images/s of the 10-label test on the same trained weights and images, one process, measured "
            f"side by side in {args.rounds} rounds (images/s: the median round); speed_over_naive = naive seconds / "
            "these seconds, taken within each round: its median, min and max over the rounds",
            "agreement: errors of each variant on the runs' validation and test sets, and how many images get a "
            "different label from the exact float32 test",
        ],
    }
    out = benchmark_record_path(args.out, "goodness_test", device.type, args.tag)
    atomic_write_json(out, result)
    print(f"machine: {result['machine']}; {result['architecture']}")
    for r in rows:
        print(f"  {r['measurement']}: {r['images_per_s']:.0f} images/s, {r['speed_over_naive']:.2f}x naive "
              f"({r['speed_over_naive_min']:.2f}-{r['speed_over_naive_max']:.2f}x)")
    for a in agreement:
        print(f"  {a['run']} {a['split']:<10} {a['test']:<12} {a['precision']:<8} errors {a['errors']:>4} / "
              f"{a['images']}, differs from exact on {a['differs_from_exact']}")
    print(f"  exact test == naive test on the timing images: {result['exact_equals_naive_on_timing_images']}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
