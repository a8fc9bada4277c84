"""FF training throughput next to the machine's own matmul speed, measured in one run.

Prints and writes (results/benchmarks/ff_throughput-<device>.json):
  * the machine's matmul FLOP/s in float32 and in bfloat16 (best of square 2000^3 and the FF layer
    shapes), and the FF step's achieved FLOP/s over the peak of its own dtype;
  * the FF training step of the given architecture (default: the paper's 784-4x2000, batch 100):
    examples/s and achieved FLOP/s of its matrix products, for the fused fast path and for the
    straightforward path (three full passes as in ffnew.m), and the ratio to the matmul FLOP/s;
  * the per-label goodness test: images/s with layer 1's image part computed once vs ten times,
    in bfloat16, and with a shortlist of 3 labels;
  * the bfloat16 step with `rule.compile_update` (one compiled pass for each layer's update);
  * one epoch (500 steps + the 10k validation test) against a naive autograd implementation.

    python benchmarks/ff_throughput.py                 # paper architecture
    python benchmarks/ff_throughput.py --hidden 1000,1000,1000 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.runs import atomic_write_json, benchmark_provenance, benchmark_record_path, machine_info, record_tag


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers, each >= 1 (e.g. --hidden 2000,2000)."""
    return tuple(positive_int(t) for t in text.split(","))


def positive_ints_option(ap: argparse.ArgumentParser, option: str, text: str) -> tuple[int, ...]:
    """The value `text` of --option (e.g. --hidden) as integers >= 1, or argparse's usage error. The
    option stays a string in args, as typed, for the recorded command line."""
    try:
        return positive_ints(text)
    except argparse.ArgumentTypeError as e:
        ap.error(f"--{option} {text!r}: each value {e}")


def timeit(fn, min_seconds: float = 2.0, warmup: int = 3, device: torch.device | None = None) -> float:
    """Mean seconds per call over at least `min_seconds` (and 3 calls), after `warmup` calls. On a
    CUDA device the queue is drained before the clock starts and before each reading, so
    asynchronous launches are not mistaken for finished work."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        dt = time.perf_counter() - t0
        if dt >= min_seconds and n >= 3:
            return dt / n


def benchmark_batches(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 fixed minibatches the step benchmarks cycle through: uniform images (20B, 784), labels (20B,)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch * 20, 784, generator=g).to(device)
    y = (torch.arange(batch * 20) % 10).to(device)
    return x, y


def interleaved_step_times(learners: dict, x: torch.Tensor, y: torch.Tensor, batch: int, blocks: int,
                           steps: int, device: torch.device) -> dict[str, list[float]]:
    """ms per training step of each learner, timed in `blocks` alternating blocks of `steps` steps
    (cycling through the batches of x, y) after one warm-up block each, so that all see the same
    machine state: {name: [ms per step of each block]}."""

    def block(learner) -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            j = i % (len(x) // batch)
            learner.train_batch(x[j * batch : (j + 1) * batch], y[j * batch : (j + 1) * batch])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - t0) / steps

    for learner in learners.values():  # warm-up (and compilation, where there is any)
        block(learner)
    ms: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(blocks):
        for name, learner in learners.items():
            ms[name].append(block(learner))
    return ms


def write_record(result: dict, out: Path) -> None:
    """Write a benchmark record atomically, then print its rows and ratios and where it went."""
    atomic_write_json(out, result)
    for r in result["rows"]:
        print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{v}" for k, v in r.items()))
    for k, v in result["ratios"].items():
        print(f"  {k}: {v:.2f}")
    print(f"written to {out}")


def median_by_shape(rounds: list[dict], dtype_name: str, shapes) -> dict[str, float]:
    """{"MxKxN": median GFLOP/s over rounds} for one dtype's matmul timings in `rounds`."""
    keys = [f"{m}x{k}x{n}" for m, k, n in shapes]
    return {k: statistics.median(r[f"{dtype_name} by shape {k} GFLOP/s"] for r in rounds) for k in keys}


def matmul_peak(dtype: torch.dtype, device: torch.device, shapes) -> tuple[float, dict]:
    """Best matmul FLOP/s over square and FF-shaped products; also each shape's FLOP/s."""
    per_shape = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, n, dtype=dtype, device=device)
        sec = timeit(lambda: torch.mm(a, b), 1.0, device=device)
        per_shape[f"{m}x{k}x{n}"] = 2 * m * k * n / sec
    return max(per_shape.values()), per_shape


def peak_and_step_rounds(learners: dict[str, FFLearner], x: torch.Tensor, y: torch.Tensor, batch: int,
                         hidden: tuple[int, ...], shapes, rounds: int, timer) -> list[dict]:
    """`rounds` times in turn: the matmul peak in float32 and bfloat16 (`matmul_peak` over `shapes`),
    then each learner's training step (cycling through the batches of x, y; `timer(fn)` gives
    seconds per call). On a shared machine the speed drifts over minutes; within a round a step and
    the peak it is divided by are measured seconds apart. Returns one dict per round: each peak
    (GFLOP/s, and per shape), each learner's ms/step and achieved FLOP/s over the same round's peak
    in the dtype of its products."""
    device = x.device
    out = []
    for _ in range(rounds):
        peaks = {}
        row: dict = {}
        for dtype in (torch.float32, torch.bfloat16):
            peaks[dtype], per_shape = matmul_peak(dtype, device, shapes)
            name = str(dtype).removeprefix("torch.")
            row[f"{name} matmul peak GFLOP/s"] = peaks[dtype] / 1e9
            row.update({f"{name} by shape {k} GFLOP/s": v / 1e9 for k, v in per_shape.items()})
        for name, learner in learners.items():
            state = {"i": 0}

            def step(learner=learner, state=state):
                i = state["i"] % (len(x) // batch)
                learner.train_batch(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
                state["i"] += 1

            sec = timer(step)
            flops = ff_step_flops(784, hidden, batch, learner.cfg.fast)
            dtype = torch.bfloat16 if learner.cfg.precision == "bfloat16" else torch.float32
            row[f"{name} ms/step"] = 1e3 * sec
            row[f"{name} fraction of peak"] = flops / sec / peaks[dtype]
        out.append(row)
    return out


class NaiveFF:
    """A straightforward PyTorch FF with the same recipe, written the usual way: nn.Linear layers,
    autograd on each layer's own loss with detached inputs, separate neutral/positive/negative
    passes, torch.optim.SGD per layer, and the per-label test as ten full passes. Its layer loss
    is the library's (the mean of softplus over the positive and negative rows: the same gradient,
    tested); peer normalization is left out (O(B*H) work, nothing next to the products)."""

    def __init__(self, hidden: tuple[int, ...], seed: int = 0, device: torch.device | str = "cpu") -> None:
        torch.manual_seed(seed)
        self.device = torch.device(device)
        dims = (784, *hidden)
        self.layers = [torch.nn.Linear(a, b).to(self.device) for a, b in zip(dims[:-1], dims[1:])]
        self.readout = torch.nn.Linear(sum(hidden[1:]), 10, bias=False).to(self.device)
        # SGD momentum 0.9 with dampening 0.9 = ffnew.m's smoothing; weight decay inside (slightly different)
        self.opts = [torch.optim.SGD(l.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
                     for l in self.layers]
        self.ro_opt = torch.optim.SGD(self.readout.parameters(), lr=0.1, momentum=0.9, dampening=0.9,
                                      weight_decay=0.003)

    @staticmethod
    def norm(x):
        return x / (x.pow(2).mean(1, keepdim=True).sqrt() + 1e-12)

    def embed(self, x, labels):
        x = x.clone()
        x[:, :10] = labels
        return x

    def step(self, x, y):
        onehot = torch.nn.functional.one_hot(y, 10).float()
        with torch.no_grad():
            h, outs = self.norm(self.embed(x, torch.full((len(x), 10), 0.1, device=x.device))), []
            for l in self.layers:
                h = self.norm(torch.relu(l(h)))
                outs.append(h)
        logits = self.readout(torch.cat(outs[1:], 1))
        self.ro_opt.zero_grad()
        torch.nn.functional.cross_entropy(logits, y).backward()
        self.ro_opt.step()
        with torch.no_grad():
            y_neg = torch.multinomial(torch.softmax(logits - 1000 * onehot, 1), 1).squeeze(1)
        for o in self.opts:
            o.zero_grad()
        self.ff_backward(x, y, y_neg)
        for o in self.opts:
            o.step()

    def ff_backward(self, x, y, y_neg):
        """Each layer's FF loss on positive (true label) and negative (y_neg) rows, backpropagated
        into that layer only (its input is detached)."""
        for labels, sign in ((y, -1.0), (y_neg, 1.0)):
            h = self.norm(self.embed(x, torch.nn.functional.one_hot(labels, 10).float()))
            for l in self.layers:
                z = torch.relu(l(h.detach()))
                g = z.pow(2).sum(1)
                (0.5 * torch.nn.functional.softplus(sign * (g - z.shape[1])).mean()).backward()  # mean over 2B rows
                h = self.norm(z)

    @torch.no_grad()
    def goodness_test(self, x):
        scores = []
        for k in range(10):
            labels = torch.nn.functional.one_hot(torch.full((len(x),), k, device=x.device), 10).float()
            h = self.norm(self.embed(x, labels))
            total = 0
            for i, l in enumerate(self.layers):
                z = torch.relu(l(h))
                if i >= 1:
                    total = total + z.pow(2).sum(1)
                h = self.norm(z)
            scores.append(total)
        return torch.stack(scores, 1)


def ff_step_flops(input_dim: int, hidden: tuple[int, ...], batch: int, fast: bool) -> int:
    """Matrix-product FLOPs of one FF training step (readout products included)."""
    dims = (input_dim, *hidden)
    flops = 0
    for i, (d, h) in enumerate(zip(dims[:-1], dims[1:])):
        if i == 0 and fast:
            flops += 2 * batch * d * h * 2  # image part once (forward) + one gradient product
        else:
            flops += 2 * batch * d * h  # neutral pass
            flops += 2 * (2 * batch) * d * h * 2  # positive+negative forward and gradient
    flops += sum(2 * batch * h * 10 * 2 for h in hidden[1:])  # readout logits + gradient
    return flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="2000,2000,2000,2000")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing budget per measurement")
    ap.add_argument("--rounds", type=positive_int, default=3,
                    help="rounds of matmul peak + training steps, in turn; the FLOP/s ratios are medians over them")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name, ff_throughput-<device>-<tag> (e.g. a host)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hidden = positive_ints_option(ap, "hidden", args.hidden)
    B = args.batch
    if B < 1:
        raise SystemExit("--batch must be >= 1")
    x, y = benchmark_batches(B, device)
    xe = benchmark_batches(50, device)[0]  # 1000 images for every goodness-test timing, whatever the batch

    def t(fn) -> float:
        """Seconds per call of fn within the timing budget (synchronized on CUDA)."""
        return timeit(fn, args.seconds, device=device)

    shapes = [(2000, 2000, 2000), (2 * B, hidden[0], hidden[-1]), (hidden[-1], 2 * B, hidden[-1]), (B, 784, hidden[0])]
    steppers = {
        "float32": FFLearner(FFConfig(), hidden, seed=0, device=device),
        "straightforward": FFLearner(replace(FFConfig(), fast=False), hidden, seed=0, device=device),
        "bfloat16": FFLearner(replace(FFConfig(), precision="bfloat16"), hidden, seed=0, device=device),
    }
    # the same step with rule.compile_update: the smoothed-gradient and weight update of each layer
    # in one torch.compile'd pass (compiled at this first step, outside the timing)
    try:
        compiled = FFLearner(replace(FFConfig(), precision="bfloat16", compile_update=True), hidden, seed=0,
                             device=device)
        compiled.train_batch(x[:B], y[:B])
        steppers["bfloat16, compiled update"] = compiled
    except RuntimeError as exc:  # torch.compile unavailable (no C++ compiler): the row is left out
        print(f"compiled update not measured: {exc}")
    rounds = peak_and_step_rounds(steppers, x, y, B, hidden, shapes, args.rounds, t)
    peak = statistics.median(r["float32 matmul peak GFLOP/s"] for r in rounds) * 1e9
    peak_bf16 = statistics.median(r["bfloat16 matmul peak GFLOP/s"] for r in rounds) * 1e9
    step_time = {name: statistics.median(r[f"{name} ms/step"] for r in rounds) / 1e3 for name in steppers}

    def fraction(name: str) -> float:
        """Median over rounds of the step's achieved FLOP/s over that round's peak in its dtype."""
        return statistics.median(r[f"{name} fraction of peak"] for r in rounds)

    rows = []
    for name, label in (("float32", "fused fast path"), ("straightforward", "straightforward (3 passes)")):
        flops = ff_step_flops(784, hidden, B, name == "float32")
        rows.append({
            "measurement": "FF training step, " + label,
            "examples_per_s": B / step_time[name],
            "ms_per_step": 1e3 * step_time[name],
            "matmul_gflops_per_step": flops / 1e9,
            "achieved_gflop_s": flops / step_time[name] / 1e9,
            "fraction_of_matmul_peak": fraction(name),
        })
    speedup_train = step_time["straightforward"] / step_time["float32"]

    learner = FFLearner(FFConfig(), hidden, seed=0, device=device)
    # both in chunks of 200 images, as FFLearner.evaluate does
    t_fast = t(lambda: learner.predict_batches(learner.goodness_scores, xe, 200))
    t_ref = t(lambda: learner.predict_batches(learner.goodness_scores_reference, xe, 200))
    rows.append({"measurement": "per-label goodness test, layer 1 shared", "images_per_s": len(xe) / t_fast})
    rows.append({"measurement": "per-label goodness test, naive (10 full passes)", "images_per_s": len(xe) / t_ref})

    # --- a naive implementation of the same recipe, per epoch (500 steps + the 10k validation test)
    naive = NaiveFF(hidden, device=device)
    state = {"i": 0}

    def naive_step():
        i = state["i"] % 20
        naive.step(x[i * B : (i + 1) * B], y[i * B : (i + 1) * B])
        state["i"] += 1

    t_naive_step = t(naive_step)
    t_naive_eval = t(lambda: [naive.goodness_test(xe[j : j + 200]) for j in range(0, len(xe), 200)])
    flops = ff_step_flops(784, hidden, B, True)

    for name, label in (("bfloat16", "bfloat16 products"),
                        ("bfloat16, compiled update", "bfloat16 products, compiled update")):
        if name in step_time:
            rows.append({"measurement": "FF training step, fused fast path, " + label,
                         "examples_per_s": B / step_time[name], "ms_per_step": 1e3 * step_time[name],
                         "matmul_gflops_per_step": flops / 1e9, "achieved_gflop_s": flops / step_time[name] / 1e9,
                         "fraction_of_bf16_matmul_peak": fraction(name)})
    bf16 = steppers["bfloat16"]
    t_bf16_step = step_time["bfloat16"]
    t_compiled_step = step_time.get("bfloat16, compiled update")
    t_bf16_eval = t(lambda: bf16.predict_batches(bf16.goodness_scores, xe, 200))
    # the shortlist test (rule.goodness_shortlist=3): one neutral pass picks 3 labels, only those are
    # scored; its agreement with the exact test on trained nets is benchmarks/goodness_test.py's job
    bf16.cfg = replace(bf16.cfg, goodness_shortlist=3)
    t_bf16_short = t(lambda: bf16.predict_batches(bf16.goodness_scores, xe, bf16.goodness_chunk))
    bf16.cfg = replace(bf16.cfg, goodness_shortlist=0)
    steps_per_epoch, eval_scale = -(-50_000 // B), 10_000 / len(xe)  # the 10k validation test, timed on xe
    epoch = {
        "naive": steps_per_epoch * t_naive_step + eval_scale * t_naive_eval,
        "float32": steps_per_epoch * step_time["float32"] + eval_scale * t_fast,
        "bfloat16": steps_per_epoch * t_bf16_step + eval_scale * t_bf16_eval,
        "bfloat16 with the shortlist-3 test": steps_per_epoch * t_bf16_step + eval_scale * t_bf16_short,
    }
    if t_compiled_step is not None:
        epoch["bfloat16, compiled update"] = steps_per_epoch * t_compiled_step + eval_scale * t_bf16_eval
        epoch["bfloat16, compiled update, shortlist-3 test"] = steps_per_epoch * t_compiled_step + eval_scale * t_bf16_short
    for name, sec in epoch.items():
        rows.append({"measurement": f"one epoch (50k train + 10k validation goodness test), {name}",
                     "seconds_per_epoch": sec})
    rows.append({"measurement": "per-label goodness test, naive implementation", "images_per_s": len(xe) / t_naive_eval})
    rows.append({"measurement": "per-label goodness test, layer 1 shared, bfloat16", "images_per_s": len(xe) / t_bf16_eval})
    rows.append({"measurement": "per-label goodness test, shortlist of 3, bfloat16", "images_per_s": len(xe) / t_bf16_short})

    env = machine_info(device)
    result = {
        **benchmark_provenance("ff_throughput", args, f"784-{'-'.join(map(str, hidden))}, batch {B}, float32 and bfloat16 products", env),
        "matmul_peak_gflop_s": peak / 1e9,
        "matmul_gflop_s_by_shape": median_by_shape(rounds, "float32", shapes),
        "bf16_matmul_peak_gflop_s": peak_bf16 / 1e9,
        "bf16_matmul_gflop_s_by_shape": median_by_shape(rounds, "bfloat16", shapes),
        "tables": [{"title": f"The {len(rounds)} rounds of matmul peak and training steps, in turn: the step "
                             "rows, the FLOP/s ratios and the epochs use their medians (the other rows are "
                             "measured once)",
                    "rows": [{"round": k + 1, **{c: v for c, v in r.items() if " by shape " not in c}}
                             for k, r in enumerate(rounds)]}],
        "rounds": rounds,
        "rows": rows,
        "ratios": {
            "fast_step_achieved_over_matmul_peak": rows[0]["fraction_of_matmul_peak"],
            "fast_over_straightforward_step_speed": speedup_train,
            "goodness_test_shared_over_naive_speed": t_ref / t_fast,
            "goodness_test_bf16_over_naive_implementation": t_naive_eval / t_bf16_eval,
            "epoch_float32_over_naive_implementation_speed": epoch["naive"] / epoch["float32"],
            "epoch_bfloat16_over_naive_implementation_speed": epoch["naive"] / epoch["bfloat16"],
            "goodness_test_bf16_shortlist3_over_naive_implementation": t_naive_eval / t_bf16_short,
            "epoch_bfloat16_shortlist3_over_naive_implementation_speed":
                epoch["naive"] / epoch["bfloat16 with the shortlist-3 test"],
            "bfloat16_over_float32_step_speed": step_time["float32"] / t_bf16_step,
            "bf16_step_achieved_over_bf16_matmul_peak": fraction("bfloat16"),
        },
    }
    if t_compiled_step is not None:
        result["ratios"].update({
            "bf16_compiled_update_step_achieved_over_bf16_matmul_peak": fraction("bfloat16, compiled update"),
            "compiled_over_eager_bf16_step_speed": t_bf16_step / t_compiled_step,
            "epoch_bfloat16_compiled_update_over_naive_implementation_speed":
                epoch["naive"] / epoch["bfloat16, compiled update"],
            "epoch_bfloat16_compiled_update_shortlist3_over_naive_implementation_speed":
                epoch["naive"] / epoch["bfloat16, compiled update, shortlist-3 test"],
        })
    print(f"machine: {result['machine']}; matmul peak {peak / 1e9:.0f} GFLOP/s (float32), {peak_bf16 / 1e9:.0f} (bfloat16)")
    write_record(result, benchmark_record_path(args.out, "ff_throughput", device.type, args.tag))


if __name__ == "__main__":
    main()
