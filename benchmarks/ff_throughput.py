"""FF training throughput next to the machine's own matmul speed, measured in one run.

Prints and writes (results/benchmarks/ff_throughput-<device>.json):
  * the machine's matmul FLOP/s in float32 and in bfloat16 (best of square 2000^3 and the FF layer
    shapes), and the FF step's achieved FLOP/s over the peak of its own dtype;
  * the FF training step of the given architecture (default: the paper's 784-4x2000, batch 100):
    examples/s and achieved FLOP/s of its matrix products, for the fused fast path and for the
    straightforward path (three full passes as in ffnew.m), and the ratio to the matmul FLOP/s;
  * the per-label goodness test: images/s with layer 1's image part computed once vs ten times,
    in bfloat16, with int8 products (`rule.test_precision=int8`, over the int8 matmul rate
    measured likewise), and with a shortlist of 3 labels;
  * the bfloat16 step with `rule.compile_update` (one compiled pass for each layer's update), and
    the int8 goodness test as a compile_update learner runs it (layers 2..L in one compiled pass);
  * on CPU, the step with int8 training products (`rule.precision=int8`: layers 2..L in int8, layer 1
    in bf16), eager and with the compiled update, over the int8 matmul rate;
  * one epoch (500 steps + the 10k validation test) against a naive autograd implementation;
  * what bounds the step: the products of one float32, bf16 and int8 step recorded and replayed
    alone (same shapes, strides, dtypes), their FLOP/s over the peak, and the bound with ffnew.m's
    update added at its least memory traffic (weights and smoothed gradients read and written once,
    float32) at the memory rate measured in the same round (a STREAM-like triad).

Everything is measured --rounds times (default 3), in turn; each ratio is taken within a round
(a shared VM's speed drifts between minutes) and recorded as its median, with its range over the
rounds in a table.

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
from torch.utils._python_dispatch import TorchDispatchMode

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


def add_fractions_of_peak(r: dict, flops: dict[str, float], peak_of: dict[str, str]) -> None:
    """Into one round's record r: "<name> fraction of peak", the FLOP/s of step `name` (flops[name] per
    "<name> step s") over the same round's matmul peak in the dtype of its products (peak_of[name])."""
    for name, f in flops.items():
        r[f"{name} fraction of peak"] = f / r[f"{name} step s"] / (r[f"{peak_of[name]} matmul peak GFLOP/s"] * 1e9)


def update_state_bytes(input_dim: int, hidden: tuple[int, ...]) -> int:
    """The least memory traffic of ffnew.m's update in one step: each float32 weight and its smoothed
    gradient read and written once (16 bytes per weight; 217 MB for 784-4x2000, which no cache holds)."""
    return 16 * sum(a * b for a, b in zip((input_dim, *hidden[:-1]), hidden))


def add_step_bounds(r: dict, flops: dict[str, float], peak_of: dict[str, str], state_bytes: int) -> None:
    """Into one round's record r, for each step `name` whose products were replayed alone
    ("<name> products alone s"): "<name> products alone fraction of peak", their FLOP/s over the peak
    of the step's dtype, and "<name> step bound fraction of peak", the same FLOPs over the products'
    time plus state_bytes at the round's memory rate ("memory GB/s"): the most any implementation of
    the recipe can reach on this machine if its update does not overlap its products."""
    for name, f in flops.items():
        peak_flops = r[f"{peak_of[name]} matmul peak GFLOP/s"] * 1e9
        products_s = r[f"{name} products alone s"]
        r[f"{name} products alone fraction of peak"] = f / products_s / peak_flops
        r[f"{name} step bound fraction of peak"] = f / (products_s + state_bytes / (r["memory GB/s"] * 1e9)) / peak_flops


def ratio_over_rounds(rounds: list[dict], num: str, den: str | None) -> dict[str, float]:
    """r[num] / r[den] (or r[num] alone) in each round: {"median", "min", "max"} over rounds."""
    values = sorted(r[num] / (r[den] if den else 1.0) for r in rounds)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1]}


def median_by_shape(rounds: list[dict], dtype_name: str, shapes) -> dict[str, float]:
    """{"MxKxN": median GFLOP/s over rounds} for one dtype's matmul timings in `rounds`."""
    keys = [f"{m}x{k}x{n}" for m, k, n in shapes]
    return {k: statistics.median(r[f"{dtype_name} by shape {k} GFLOP/s"] for r in rounds) for k in keys}


def matmul_peak(dtype: torch.dtype, device: torch.device, shapes) -> tuple[float, dict]:
    """Best matmul FLOP/s over square and FF-shaped products; also each shape's FLOP/s. int8: the
    products the int8 goodness test uses (torch._int_mm, int32 accumulation; operations/s)."""
    per_shape = {}
    for m, k, n in shapes:
        if dtype == torch.int8:
            a = torch.randint(-127, 128, (m, k), dtype=dtype, device=device)
            b = torch.randint(-127, 128, (k, n), dtype=dtype, device=device)
            mm = torch._int_mm
        else:
            a = torch.randn(m, k, dtype=dtype, device=device)
            b = torch.randn(k, n, dtype=dtype, device=device)
            mm = torch.mm
        sec = timeit(lambda: mm(a, b), 1.0, device=device)
        per_shape[f"{m}x{k}x{n}"] = 2 * m * k * n / sec
    return max(per_shape.values()), per_shape


PRODUCT_OPS = frozenset({  # the matrix products a step runs (bf16 and fp32 mm / addmm, int8 _int_mm)
    torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default, torch.ops.aten.addmm.out,
    torch.ops.aten.addmm_.default, torch.ops.aten._int_mm.default, torch.ops.aten._int_mm.out,
})


class _ProductLog(TorchDispatchMode):
    """Records each matrix product dispatched while active: (op, args, kwargs), every tensor replaced
    by its (shape, stride, dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCT_OPS:
            spec = lambda v: (tuple(v.shape), tuple(v.stride()), v.dtype) if isinstance(v, torch.Tensor) else v
            self.calls.append((func, [spec(a) for a in args], {k: spec(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def step_products(step, x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    """The matrix products of one call step(x, y), in order, as _ProductLog records them (run it on an
    eager learner: the compiled one runs the same products)."""
    log = _ProductLog()
    with log:
        step(x, y)
    return log.calls


def replay_products(calls: list[tuple], device: torch.device):
    """A no-argument callable running the recorded products alone, in order, on random operands of
    the same shapes, strides and dtypes (`out=` buffers reused, as the step reuses its workspace):
    the time a step would take if it were nothing but its products."""

    def operand(spec):
        if not (isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[2], torch.dtype)):
            return spec
        shape, stride, dtype = spec
        t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        if dtype == torch.int8:
            return t.copy_(torch.randint(-127, 128, shape, dtype=dtype, device=device))
        return t.copy_(torch.randn(shape, device=device))

    ops = [(f, [operand(a) for a in args], {k: operand(v) for k, v in kw.items()}) for f, args, kw in calls]

    def run():
        for f, args, kwargs in ops:
            f(*args, **kwargs)

    return run


def memory_rate(device: torch.device, numel: int = 16 * 2**20) -> float:
    """Bytes/s of c = a + s b on float32 arrays far larger than any cache (64 MB each), counting the
    three arrays once each (STREAM's triad): the rate a memory-bound weight update can hope for."""
    a, b, c = (torch.rand(numel, device=device) for _ in range(3))
    sec = timeit(lambda: torch.add(a, b, alpha=0.5, out=c), 1.0, device=device)
    return 3 * 4 * numel / sec


def cycling_steps(step, x: torch.Tensor, y: torch.Tensor, batch: int):
    """A no-argument callable: each call runs step(x_batch, y_batch) on the next of the batches of x, y."""
    state = {"i": 0}

    def call():
        i = state["i"] % (len(x) // batch)
        step(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
        state["i"] += 1

    return call


def timed_rounds(measurements: dict, device: torch.device, shapes, rounds: int, timer) -> list[dict]:
    """`rounds` times in turn: the matmul peak in float32, bfloat16 and int8 (`matmul_peak` over `shapes`),
    then every measurement (a no-argument callable; `timer(fn)` gives seconds per call). A shared
    VM's speed drifts over minutes (neighbours come and go): within a round, a step, the naive
    step it is compared with and the peak it is divided by are measured within a minute, so each
    ratio is taken per round and the record reports its median and range over rounds. Returns one
    dict per round: each peak (GFLOP/s, also per shape), the memory rate ("memory GB/s", `memory_rate`)
    and "<name> s" for each measurement."""
    out = []
    for _ in range(rounds):
        row: dict = {}
        for dtype in (torch.float32, torch.bfloat16, torch.int8):
            peak, per_shape = matmul_peak(dtype, device, shapes)
            name = str(dtype).removeprefix("torch.")
            row[f"{name} matmul peak GFLOP/s"] = peak / 1e9
            row.update({f"{name} by shape {k} GFLOP/s": v / 1e9 for k, v in per_shape.items()})
        row["memory GB/s"] = memory_rate(device) / 1e9
        for name, fn in measurements.items():
            row[f"{name} s"] = timer(fn)
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
                    help="rounds of every measurement, in turn; each ratio is taken within a round, recorded as its median")
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
    learners = {
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
        learners["bfloat16, compiled update"] = compiled
    except RuntimeError as exc:  # torch.compile unavailable (no C++ compiler): its rows are left out
        print(f"compiled update not measured: {exc}")
    if device.type == "cpu":  # rule.precision=int8: layers 2..L's training products in int8 (CPU only)
        learners["int8"] = FFLearner(replace(FFConfig(), precision="int8"), hidden, seed=0, device=device)
        try:
            compiled8 = FFLearner(replace(FFConfig(), precision="int8", compile_update=True), hidden, seed=0,
                                  device=device)
            compiled8.train_batch(x[:B], y[:B])
            learners["int8, compiled update"] = compiled8
        except RuntimeError as exc:
            print(f"compiled int8 update not measured: {exc}")
    naive = NaiveFF(hidden, device=device)  # a naive implementation of the same recipe
    fp32, bf16 = learners["float32"], learners["bfloat16"]
    bf16_short = FFLearner(replace(FFConfig(), precision="bfloat16", goodness_shortlist=3), hidden, seed=0,
                           device=device)
    int8_test = FFLearner(replace(FFConfig(), precision="bfloat16", test_precision="int8"), hidden, seed=0, device=device)
    int8_short = FFLearner(replace(FFConfig(), precision="bfloat16", test_precision="int8", goodness_shortlist=3),
                           hidden, seed=0, device=device)
    # the int8 test as a rule.compile_update learner runs it (layers 2..L in one compiled pass,
    # int8_goodness_pass; compiled at its first call, in the timer's warm-up)
    compiled_tests = {}
    if "bfloat16, compiled update" in learners:
        for name, k in (("layer 1 shared, int8, compiled", 0), ("shortlist of 3, int8, compiled", 3)):
            compiled_tests[name] = FFLearner(replace(FFConfig(), precision="bfloat16", test_precision="int8",
                                                     compile_update=True, goodness_shortlist=k), hidden, seed=0,
                                             device=device)
    measurements = {f"{name} step": cycling_steps(lr.train_batch, x, y, B) for name, lr in learners.items()}
    measurements["naive step"] = cycling_steps(naive.step, x, y, B)
    # the per-label test of 1000 images in chunks of 200, as FFLearner.evaluate does; the shortlist
    # test (rule.goodness_shortlist=3): one neutral pass picks 3 labels, only those are scored (its
    # agreement with the exact test on trained nets is benchmarks/goodness_test.py's job)
    measurements.update({
        "test, layer 1 shared": lambda: fp32.predict_batches(fp32.goodness_scores, xe, 200),
        "test, 10 full passes": lambda: fp32.predict_batches(fp32.goodness_scores_reference, xe, 200),
        "test, naive implementation": lambda: [naive.goodness_test(xe[j : j + 200]) for j in range(0, len(xe), 200)],
        "test, layer 1 shared, bfloat16": lambda: bf16.predict_batches(bf16.goodness_scores, xe, 200),
        "test, shortlist of 3, bfloat16":
            lambda: bf16_short.predict_batches(bf16_short.goodness_scores, xe, bf16_short.goodness_chunk),
        # rule.test_precision=int8: all ten labels, layers 2..L in int8 (layer 1's shared product in bf16)
        "test, layer 1 shared, int8": lambda: int8_test.predict_batches(int8_test.goodness_scores, xe, 200),
        "test, shortlist of 3, int8":
            lambda: int8_short.predict_batches(int8_short.goodness_scores, xe, int8_short.goodness_chunk),
    })
    measurements.update({f"test, {name}": lambda lr=lr: lr.predict_batches(lr.goodness_scores, xe, lr.goodness_chunk)
                         for name, lr in compiled_tests.items()})
    # each eager learner's step products replayed alone (same shapes, strides, dtypes, order): what its
    # step would take if it were nothing but products (the compiled learners run the same products)
    alone = [name for name in ("float32", "bfloat16", "int8") if name in learners]
    for name in alone:
        calls = step_products(learners[name].train_batch, x[:B], y[:B])
        measurements[f"{name} products alone"] = replay_products(calls, device)
    rounds = timed_rounds(measurements, device, shapes, args.rounds, t)

    flops = {name: ff_step_flops(784, hidden, B, lr.cfg.fast) for name, lr in learners.items()}
    # the int8 learners' products are int8 in layers 2..L and bf16 in layer 1 (~5% of 4x2000's): over the int8 peak
    peak_of = {name: lr.cfg.precision for name, lr in learners.items()}
    steps_per_epoch, eval_scale = -(-50_000 // B), 10_000 / len(xe)  # the 10k validation test, timed on xe
    # a compile_update learner runs the compiled int8 test (when it could be compiled here)
    int8_test_of_compiled = "layer 1 shared, int8" + (", compiled" if compiled_tests else "")
    int8_short_of_compiled = "shortlist of 3, int8" + (", compiled" if compiled_tests else "")
    epochs = {  # name: (step measurement, test measurement)
        "naive": ("naive step", "test, naive implementation"),
        "float32": ("float32 step", "test, layer 1 shared"),
        "bfloat16": ("bfloat16 step", "test, layer 1 shared, bfloat16"),
        "bfloat16 with the shortlist-3 test": ("bfloat16 step", "test, shortlist of 3, bfloat16"),
        "bfloat16, compiled update": ("bfloat16, compiled update step", "test, layer 1 shared, bfloat16"),
        "bfloat16, compiled update, shortlist-3 test": ("bfloat16, compiled update step", "test, shortlist of 3, bfloat16"),
        "bfloat16, compiled update, int8 test": ("bfloat16, compiled update step", f"test, {int8_test_of_compiled}"),
        "int8, int8 test": ("int8 step", "test, layer 1 shared, int8"),
        "int8, compiled update, int8 test": ("int8, compiled update step", f"test, {int8_test_of_compiled}"),
        "int8, compiled update, int8 shortlist-3 test": ("int8, compiled update step", f"test, {int8_short_of_compiled}"),
    }
    int8_test_flops = 2 * 10 * len(xe) * sum(a * b for a, b in zip(hidden[:-1], hidden[1:]))  # layers 2..L, 10 labels
    state_bytes = update_state_bytes(784, hidden)
    for r in rounds:  # the derived numbers of each round, from its own measurements
        add_fractions_of_peak(r, flops, peak_of)
        add_step_bounds(r, {name: flops[name] for name in alone}, peak_of, state_bytes)
        for name, (step, test) in epochs.items():
            if f"{step} s" in r:
                r[f"epoch, {name} s"] = steps_per_epoch * r[f"{step} s"] + eval_scale * r[f"{test} s"]
        for test in ("layer 1 shared, int8", "layer 1 shared, int8, compiled"):
            if f"test, {test} s" in r:
                r[f"{test} test fraction of peak"] = (int8_test_flops / r[f"test, {test} s"]
                                                      / (r["int8 matmul peak GFLOP/s"] * 1e9))

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    rows = []
    for name, label in (("float32", "fused fast path"), ("straightforward", "straightforward (3 passes)"),
                        ("bfloat16", "fused fast path, bfloat16 products"),
                        ("bfloat16, compiled update", "fused fast path, bfloat16 products, compiled update"),
                        ("int8", "fused fast path, int8 products in layers 2..L (layer 1 bf16)"),
                        ("int8, compiled update", "fused fast path, int8 products in layers 2..L, compiled update")):
        if name in learners:
            sec = median(f"{name} step s")
            prefix = {"float32": "", "bfloat16": "bf16_", "int8": "int8_"}[peak_of[name]]
            rows.append({"measurement": "FF training step, " + label, "examples_per_s": B / sec,
                         "ms_per_step": 1e3 * sec, "matmul_gflops_per_step": flops[name] / 1e9,
                         "achieved_gflop_s": flops[name] / sec / 1e9,
                         f"fraction_of_{prefix}matmul_peak": median(f"{name} fraction of peak")})
    for name in alone:
        prefix = {"float32": "", "bfloat16": "bf16_", "int8": "int8_"}[peak_of[name]]
        rows.append({"measurement": f"the {name} step's matrix products alone (replayed)",
                     "ms_per_step": 1e3 * median(f"{name} products alone s"),
                     f"fraction_of_{prefix}matmul_peak": median(f"{name} products alone fraction of peak"),
                     f"bound_fraction_of_{prefix}matmul_peak": median(f"{name} step bound fraction of peak")})
    rows.append({"measurement": "naive implementation step", "examples_per_s": B / median("naive step s"),
                 "ms_per_step": 1e3 * median("naive step s")})
    for name in ("layer 1 shared", "10 full passes", "naive implementation", "layer 1 shared, bfloat16",
                 "shortlist of 3, bfloat16", "layer 1 shared, int8", "shortlist of 3, int8", *compiled_tests):
        rows.append({"measurement": f"per-label goodness test, {name}", "images_per_s": len(xe) / median(f"test, {name} s")})
    for name in epochs:
        if f"epoch, {name} s" in rounds[0]:
            rows.append({"measurement": f"one epoch (50k train + 10k validation goodness test), {name}",
                         "seconds_per_epoch": median(f"epoch, {name} s")})

    spread = {  # each ratio per round, numerator over denominator
        "fast_step_achieved_over_matmul_peak": ("float32 fraction of peak", None),
        "fast_over_straightforward_step_speed": ("straightforward step s", "float32 step s"),
        "goodness_test_shared_over_naive_speed": ("test, 10 full passes s", "test, layer 1 shared s"),
        "goodness_test_bf16_over_naive_implementation": ("test, naive implementation s", "test, layer 1 shared, bfloat16 s"),
        "goodness_test_bf16_shortlist3_over_naive_implementation": ("test, naive implementation s", "test, shortlist of 3, bfloat16 s"),
        "goodness_test_int8_over_naive_implementation": ("test, naive implementation s", "test, layer 1 shared, int8 s"),
        "int8_test_products_achieved_over_int8_matmul_peak": ("layer 1 shared, int8 test fraction of peak", None),
        "epoch_float32_over_naive_implementation_speed": ("epoch, naive s", "epoch, float32 s"),
        "epoch_bfloat16_over_naive_implementation_speed": ("epoch, naive s", "epoch, bfloat16 s"),
        "epoch_bfloat16_shortlist3_over_naive_implementation_speed": ("epoch, naive s", "epoch, bfloat16 with the shortlist-3 test s"),
        "bfloat16_over_float32_step_speed": ("float32 step s", "bfloat16 step s"),
        "bf16_step_achieved_over_bf16_matmul_peak": ("bfloat16 fraction of peak", None),
    }
    if "bfloat16, compiled update" in learners:
        spread.update({
            "bf16_compiled_update_step_achieved_over_bf16_matmul_peak": ("bfloat16, compiled update fraction of peak", None),
            "compiled_over_eager_bf16_step_speed": ("bfloat16 step s", "bfloat16, compiled update step s"),
            "epoch_bfloat16_compiled_update_over_naive_implementation_speed": ("epoch, naive s", "epoch, bfloat16, compiled update s"),
            "epoch_bfloat16_compiled_update_shortlist3_over_naive_implementation_speed":
                ("epoch, naive s", "epoch, bfloat16, compiled update, shortlist-3 test s"),
            "epoch_bfloat16_compiled_update_int8_test_over_naive_implementation_speed":
                ("epoch, naive s", "epoch, bfloat16, compiled update, int8 test s"),
        })
    if compiled_tests:
        spread.update({
            "goodness_test_int8_compiled_over_naive_implementation":
                ("test, naive implementation s", "test, layer 1 shared, int8, compiled s"),
            "goodness_test_int8_compiled_shortlist3_over_naive_implementation":
                ("test, naive implementation s", "test, shortlist of 3, int8, compiled s"),
            "goodness_test_int8_compiled_over_eager_speed": ("test, layer 1 shared, int8 s", "test, layer 1 shared, int8, compiled s"),
            "int8_compiled_test_products_achieved_over_int8_matmul_peak":
                ("layer 1 shared, int8, compiled test fraction of peak", None),
        })
    if "int8, compiled update" in learners:
        spread.update({
            "int8_compiled_update_step_achieved_over_int8_matmul_peak": ("int8, compiled update fraction of peak", None),
            "int8_over_bf16_compiled_update_step_speed": ("bfloat16, compiled update step s", "int8, compiled update step s"),
            "epoch_int8_compiled_update_int8_test_over_naive_implementation_speed":
                ("epoch, naive s", "epoch, int8, compiled update, int8 test s"),
            "epoch_int8_compiled_update_int8_shortlist3_over_naive_implementation_speed":
                ("epoch, naive s", "epoch, int8, compiled update, int8 shortlist-3 test s"),
        })
    for name in alone:  # products alone, and with the update's least memory traffic added (see state_bytes)
        prefix = {"float32": "", "bfloat16": "bf16_", "int8": "int8_"}[peak_of[name]]
        spread[f"{prefix}step_products_alone_over_{prefix}matmul_peak"] = (f"{name} products alone fraction of peak", None)
        spread[f"{prefix}step_bound_over_{prefix}matmul_peak"] = (f"{name} step bound fraction of peak", None)
    ratios = {k: ratio_over_rounds(rounds, num, den) for k, (num, den) in spread.items()}
    peak, peak_bf16 = median("float32 matmul peak GFLOP/s"), median("bfloat16 matmul peak GFLOP/s")
    peak_int8 = median("int8 matmul peak GFLOP/s")

    env = machine_info(device)
    result = {
        **benchmark_provenance("ff_throughput", args, f"784-{'-'.join(map(str, hidden))}, batch {B}, float32, bfloat16 and int8 products", env),
        "matmul_peak_gflop_s": peak,
        "matmul_gflop_s_by_shape": median_by_shape(rounds, "float32", shapes),
        "bf16_matmul_peak_gflop_s": peak_bf16,
        "bf16_matmul_gflop_s_by_shape": median_by_shape(rounds, "bfloat16", shapes),
        "int8_matmul_peak_gop_s": peak_int8,
        "int8_matmul_gop_s_by_shape": median_by_shape(rounds, "int8", shapes),
        "memory_gb_s": median("memory GB/s"),
        "update_state_bytes_per_step": state_bytes,
        "rows": rows,
        "ratios": {k: v["median"] for k, v in ratios.items()},
        "tables": [{"title": f"Each ratio's median and range over the {len(rounds)} rounds (all measurements "
                             "repeated in turn; the rows above and the ratios below are the medians)",
                    "rows": [{"ratio": k, "median": v["median"], "min": v["min"], "max": v["max"]}
                             for k, v in ratios.items()]}],
        "rounds": rounds,
    }
    print(f"machine: {result['machine']}; matmul peak {peak:.0f} GFLOP/s (float32), {peak_bf16:.0f} (bfloat16), "
          f"{peak_int8:.0f} GOP/s (int8)")
    write_record(result, benchmark_record_path(args.out, "ff_throughput", device.type, args.tag))


if __name__ == "__main__":
    main()
