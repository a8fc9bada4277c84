"""Epoch time of a published Forward-Forward implementation next to mortalnet's, in one run.

The peer is loeweX/Forward-Forward (PyTorch + Hydra; supervised FF 784-1000-1000-1000, batch 100,
peer normalization, a neutral-label softmax; ANCHORS.md), run unmodified from a checkout outside
this repository:

    git clone https://github.com/loeweX/Forward-Forward /tmp/loewex-ff
    .venv/bin/pip install hydra-core            # the peer's config library (pulls omegaconf)
    python benchmarks/published_ff.py --peer /tmp/loewex-ff --threads 2

The peer trains in a child process with its own `train` loop, model, optimizer, config.yaml and
data pipeline (a DataLoader with 4 workers that embeds the labels image by image), on CPU. One
thing comes from outside: MNIST. The peer downloads it with torchvision, which this machine cannot
install; its `get_MNIST_partition` is replaced by one that returns the same 50,000 training images
from mortalnet's cache, as torchvision's ToTensor would give them ((1, 28, 28) float tensors in
[0, 1], int labels), and an empty `torchvision` module satisfies its import. Its per-epoch time is
the one its own `train` prints.

mortalnet trains the same images with its shared loop (`training.fit`, no validation) and the
`ff-supervised` demo preset (784-3x1000, batch 100, ffnew.m's recipe): in float32, and with bf16
products (`rule.precision=bfloat16`). The recipes differ: the peer draws wrong labels at random,
mortalnet picks hard negatives from a neutral pass's softmax; both make one neutral and one
positive+negative pass a step, with the same matrix products (the peer's autograd computes no
input gradients: each layer's input is detached).

Sides run one after the other, `--epochs` each (default 4); the ratios divide the median epoch
after the first of each side (the peer's first includes starting its workers), and every
epoch's time is written too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ff_throughput import positive_int, write_record  # noqa: E402

from mortalnet.runs import benchmark_provenance, benchmark_record_path, machine_info, record_tag  # noqa: E402

PEER_MARKER = "PEER_RESULT "  # the child's result line on stdout
PEER_FILES = ("main.py", "config.yaml", "src/ff_model.py", "src/ff_mnist.py", "src/utils.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, help="a checkout of github.com/loeweX/Forward-Forward")
    ap.add_argument("--epochs", type=positive_int, default=4, help="training epochs of each side")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch threads of each side")
    ap.add_argument("--train-images", type=positive_int, default=50_000,
                    help="first N training images (50,000: the peer's and the paper's training set)")
    ap.add_argument("--out", default="results/benchmarks")
    ap.add_argument("--tag", default="", type=record_tag,
                    help="appended to the record's file name (<name>-<device>-<tag>.json), e.g. another host")
    ap.add_argument("--as-peer-driver", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args(argv)
    peer = Path(args.peer)
    missing = [f for f in PEER_FILES if not (peer / f).is_file()]
    if missing:
        ap.error(f"--peer {args.peer}: not a checkout of loeweX/Forward-Forward (missing {', '.join(missing)}); "
                 "get one with: git clone https://github.com/loeweX/Forward-Forward " + args.peer)
    return args


def mnist_train(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n MNIST training images (n, 784) float32 in [0, 1] and labels (n,), from the cache."""
    from mortalnet.data.mnist import MnistConfig, load_mnist

    return load_mnist(MnistConfig()).train.take(n).tensors()


class TorchvisionLikeMnist(torch.utils.data.Dataset):
    """MNIST as torchvision's `MNIST(transform=ToTensor())` serves it: a fresh (1, 28, 28) float tensor
    and an int label per index (the peer writes label pixels into the tensor it gets)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i].reshape(1, 28, 28).clone(), int(self.y[i])


def run_peer(peer: Path, epochs: int, threads: int, n_train: int) -> dict:
    """Train the peer for `epochs` epochs on the first n_train MNIST training images, in this process:
    {"epoch_seconds": its own time of each epoch, "last_epoch": its printed training averages}."""
    torch.set_num_threads(threads)
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))  # imported, never called here
    sys.path.insert(0, str(peer))
    os.chdir(peer)  # the peer's config and relative paths
    import main as peer_main  # the peer's main.py
    from src import utils as peer_utils

    try:
        from omegaconf import OmegaConf
    except ImportError:
        raise SystemExit("the peer reads its config.yaml with omegaconf: pip install hydra-core") from None
    x, y = mnist_train(n_train)
    peer_utils.get_MNIST_partition = lambda opt, partition: TorchvisionLikeMnist(x, y)
    seconds: list[float] = []
    last: dict[str, float] = {}
    print_results = peer_utils.print_results

    def record(partition, iteration_time, scalar_outputs, epoch=None):
        if partition == "train":
            seconds.append(float(iteration_time))
            last.update({k: float(v) for k, v in scalar_outputs.items()})
        print_results(partition, iteration_time, scalar_outputs, epoch)

    peer_utils.print_results = record
    opt = OmegaConf.load(peer / "config.yaml")
    opt.device, opt.training.epochs = "cpu", epochs
    opt = peer_utils.parse_args(opt)  # seeds numpy, torch and random as the peer does
    model, optimizer = peer_utils.get_model_and_optimizer(opt)
    peer_main.train(opt, model, optimizer)
    return {"epoch_seconds": seconds, "last_epoch": last}


def run_ours(precision: str, epochs: int, threads: int, n_train: int) -> tuple[list[float], dict]:
    """mortalnet's ff-supervised demo preset (optionally with bf16 products) through the shared loop."""
    from mortalnet.experiments.ff_supervised import FFSupervised
    from mortalnet.rules.forward_forward import FFLearner
    from mortalnet.training import fit

    torch.set_num_threads(threads)
    cfg = FFSupervised.presets["demo"]()
    rule = replace(cfg.rule, precision=precision)
    learner = FFLearner(rule, cfg.hidden, input_dim=784, num_classes=10, seed=0)
    training = replace(cfg.training, epochs=epochs, progress=False, tensorboard=False)
    result = fit(learner, mnist_train(n_train), None, training, seed=0)
    return [row["epoch_seconds"] for row in result.history], result.history[-1]


def peer_commit(peer: Path) -> str:
    """The peer checkout's git commit, or "unknown" (not a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(peer), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def steady_seconds(epoch_seconds: list[float]) -> float:
    """Median seconds of the epochs after the first (the first starts workers and warms caches); the
    only epoch's when there is one."""
    return statistics.median(epoch_seconds[1:] or epoch_seconds)


def run_peer_process(args: argparse.Namespace, peer: Path) -> tuple[dict, float]:
    """Run the peer in a child process (this script with --as-peer-driver): its result, and the
    child's wall seconds. A peer that fails stops the benchmark with the peer's own output."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--as-peer-driver", "--peer", str(peer),
           "--epochs", str(args.epochs), "--threads", str(args.threads), "--train-images", str(args.train_images)]
    t0 = time.perf_counter()
    child = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    marker = [line for line in child.stdout.splitlines() if line.startswith(PEER_MARKER)]
    if child.returncode != 0 or not marker:
        sys.stderr.write(child.stdout[-3000:] + child.stderr[-3000:])
        raise SystemExit(f"the peer's training failed (exit code {child.returncode}); its output is above")
    return json.loads(marker[-1][len(PEER_MARKER):]), wall


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    peer = Path(args.peer).resolve()
    if args.as_peer_driver:
        print(PEER_MARKER + json.dumps(run_peer(peer, args.epochs, args.threads, args.train_images)))
        return
    mnist_train(1)  # fill the cache first, outside both timings
    peer_result, peer_wall = run_peer_process(args, peer)
    peer_seconds = peer_result["epoch_seconds"]
    ours = {p: run_ours(p, args.epochs, args.threads, args.train_images) for p in ("float32", "bfloat16")}

    def epoch_row(implementation: str, seconds: list[float], train_softmax_error: float) -> dict:
        steady = steady_seconds(seconds)
        return {"implementation": implementation, "seconds_of_each_epoch": ", ".join(f"{s:.1f}" for s in seconds),
                "epoch_seconds": steady, "examples_per_s": args.train_images / steady,
                "last_epoch_train_softmax_error": train_softmax_error}

    rows = [epoch_row("loeweX/Forward-Forward (random wrong labels, 4 DataLoader workers)", peer_seconds,
                      1.0 - peer_result["last_epoch"]["classification_accuracy"])]
    rows += [epoch_row(f"mortalnet ff-supervised demo, {p} products (hard negatives)", seconds,
                       last["train/readout_error"]) for p, (seconds, last) in ours.items()]
    env = machine_info(torch.device("cpu"))
    shown = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "as_peer_driver"})
    shown.peer = "PEER"  # the checkout's local path stays out of the record
    result = {
        **benchmark_provenance("published_ff", shown, f"784-1000-1000-1000, batch 100, {args.train_images} "
                               f"training images, {args.epochs} epochs each, training only", env),
        "peer": {"repository": "https://github.com/loeweX/Forward-Forward", "commit": peer_commit(peer),
                 "process_seconds": peer_wall, "last_epoch": peer_result["last_epoch"]},
        "rows": rows,
        "ratios": {f"epoch_{p}_over_peer_speed": steady_seconds(peer_seconds) / steady_seconds(seconds)
                   for p, (seconds, _) in ours.items()},
        "notes": ["epoch_seconds: the median of the epochs after the first (the peer's first starts its "
                  "DataLoader workers); the ratios divide these",
                  "train softmax error: the running mean over the last epoch's training batches of the "
                  "neutral-label softmax's error (each side's own training metric), evidence that both learn"],
    }
    write_record(result, benchmark_record_path(args.out, "published_ff", "cpu", args.tag))


if __name__ == "__main__":
    main()
