"""Forward-Forward beyond one process: layer pipelining and data parallelism on torch.distributed.

Layer pipeline (Hinton 2022, section 5: "pipelining video through the network"): rank k owns a
contiguous block of layers. It receives the previous block's states for minibatch t
(positive and negative rows, (2B, H)), updates its layers with their local FF objectives,
sends its states on, and goes straight to minibatch t+1: there is no backward pass to wait for
and no activation to keep. Layer l at step t sees layer l-1's output computed with layer l-1's
weights of step t, exactly as in the sequential fast path, so the pipelined trainer computes
the same weights as one process (tested). The pipeline uses random wrong labels as negatives:
hard negatives would need the readout at the top before the negative pass at the bottom, a
backward dependency the pipeline is built to avoid. The softmax readout is not trained here;
the test is the per-label goodness test.

Data parallel: every rank holds the whole network and a slice of each minibatch; each layer's
smoothed gradient (and the readout's gradient, and the peer-normalization means) is summed over
the ranks with an all-reduce as soon as that layer is done, before its update, each rank's
weighted by its share of the minibatch's rows: the full minibatch's mean gradient however the rows
were split (a short last batch may leave a rank none; it joins every all-reduce with zeros). The
data-parallel step equals the single-process step (tested) except for peer normalization: each
rank's signal uses the running mean updated with its own rows only (the all-reduced mean is the
full batch's, from the next step on).

Run as a named experiment (`mortalnet run ff-pipeline ...`, which spawns the ranks itself) or
under torchrun; every distributed call has a timeout, so a dead rank stops the others.

Checkpoints (`spec["checkpoint_dir"]`, a folder every rank can write): after each epoch every rank
saves its whole learner state (`rank<k>-epoch<NNNN>.safetensors`, atomic, no pickle), all ranks
meet at a barrier, and rank 0 then records the epoch in `complete.json` and removes the older
files. A resumed run (`spec["resume"]`) continues every rank from the epoch `complete.json` names,
so a rank that died mid-epoch, or after saving an epoch the others had not finished, costs at most
that epoch. The data order of an epoch depends on (seed, epoch) only, and each rank's random
generator is in its state: a resumed run computes the same weights as an uninterrupted one (tested).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.optim import schedule_factor
from mortalnet.parallel.launch import RankFailedError, describe_error
from mortalnet.rules.ff_update import GradientSink
from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.runs import RunDir, RunError, atomic_write_json, read_json
from mortalnet.training import _epoch_seed


def partition(n_layers: int, n_ranks: int) -> list[list[int]]:
    """Contiguous blocks of layer indices, as even as possible: partition(4, 3) = [[0,1],[2],[3]]."""
    if n_ranks > n_layers:
        raise ValueError(f"{n_ranks} ranks for {n_layers} layers: each rank needs at least one layer")
    base, extra = divmod(n_layers, n_ranks)
    out, start = [], 0
    for r in range(n_ranks):
        size = base + (1 if r < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def steady_rate(steps: int, batch: int, t0: float, t_first: float, t_end: float) -> float:
    """Examples per second after the first step (its one-off costs: allocation, a pipeline that
    fills): (steps - 1) * batch / (t_end - t_first); with one step, steps * batch / (t_end - t0)."""
    if steps > 1 and t_end > t_first:
        return (steps - 1) * batch / (t_end - t_first)
    return steps * batch / max(t_end - t0, 1e-12)


def _batches(n: int, batch: int, seed: int, epoch: int, shuffle: bool) -> list[torch.Tensor]:
    """The minibatch indices of an epoch, exactly as `mortalnet.training.fit` draws them."""
    gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    return [order[i : i + batch] for i in range(0, n, batch)]


class RankCheckpoints:
    """Per-epoch checkpoints of one rank in a folder shared by all ranks (see the module docstring).

    `complete.json` ({"epoch", "world"}) names the last epoch that every rank saved; only that
    epoch's files are kept once the next one is complete. Each file's metadata holds the rank's
    counters at that epoch (steps, train_seconds, and bytes_all_reduced for data parallelism)."""

    MARKER = "complete.json"

    def __init__(self, folder: str | Path, rank: int, world: int) -> None:
        self.folder, self.rank, self.world = Path(folder), rank, world
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, rank: int, epoch: int) -> Path:
        return self.folder / f"rank{rank}-epoch{epoch:04d}.safetensors"

    def completed(self) -> dict[str, Any] | None:
        """The marker of the last epoch all ranks saved, or None when there is none."""
        path = self.folder / self.MARKER
        if not path.exists():
            return None
        marker = read_json(path)
        if not (isinstance(marker, dict) and isinstance(marker.get("epoch"), int) and marker.get("world") == self.world):
            raise RunError(f"{path} does not describe a checkpoint of {self.world} ranks: {marker!r}")
        return marker

    def save(self, learner: FFLearner, epoch: int, counters: dict[str, float]) -> None:
        """This rank's state and counters after `epoch` (atomic)."""
        meta = {"epoch": epoch, "rank": self.rank, "world": self.world, "counters": counters}
        RunDir(self.folder).save_checkpoint(learner.state_tensors(), meta, self._path(self.rank, epoch))

    def commit(self, epoch: int) -> None:
        """Rank 0, after the barrier that follows every rank's save of `epoch`: mark it complete and
        remove the files of earlier epochs."""
        atomic_write_json(self.folder / self.MARKER, {"epoch": epoch, "world": self.world})
        for path in self.folder.glob("rank*-epoch*.safetensors"):
            if int(path.stem.rsplit("epoch", 1)[1]) < epoch:
                path.unlink(missing_ok=True)

    def restore(self, learner: FFLearner) -> tuple[int, dict[str, float]]:
        """Load this rank's state at the completed epoch: (epoch, counters); (0, {}) when no epoch was
        completed (the run starts afresh)."""
        marker = self.completed()
        if marker is None:
            return 0, {}
        meta = RunDir(self.folder).load_into(learner, self._path(self.rank, marker["epoch"]))
        if meta.get("epoch") != marker["epoch"] or meta.get("rank") != self.rank:
            raise RunError(f"{self._path(self.rank, marker['epoch'])} holds rank {meta.get('rank')} epoch "
                           f"{meta.get('epoch')}, not rank {self.rank} epoch {marker['epoch']}")
        return marker["epoch"], dict(meta.get("counters", {}))


def _checkpoints(spec: dict[str, Any], rank: int, world: int,
                 learner: FFLearner) -> tuple[RankCheckpoints | None, int, dict[str, float]]:
    """The rank's checkpoints (None without spec["checkpoint_dir"]), the first epoch to train, and
    the counters (steps, train_seconds, ...) of the epochs already done."""
    if not spec.get("checkpoint_dir"):
        return None, 1, {}
    ckpt = RankCheckpoints(spec["checkpoint_dir"], rank, world)
    epoch, counters = ckpt.restore(learner) if spec.get("resume") else (0, {})
    return ckpt, epoch + 1, counters


def _end_of_epoch(ckpt: RankCheckpoints | None, learner: FFLearner, rank: int, epoch: int,
                  counters: dict[str, float]) -> None:
    """Save this rank's state, wait for every rank to have saved, then (rank 0) mark the epoch complete."""
    if ckpt is None:
        return
    ckpt.save(learner, epoch, counters)
    dist.barrier()
    if rank == 0:
        ckpt.commit(epoch)


class RankSchedule:
    """What every rank of both trainers does around its own step: the epochs left after a resume
    (`_checkpoints`), each epoch's minibatch indices exactly as `fit` draws them (the same on every
    rank), spec["max_steps"], the fault-injection hook, steady-state timing and, after each epoch,
    a checkpoint every rank has saved (`_end_of_epoch`).

        schedule = RankSchedule(spec, rank, world, learner, n)
        schedule.start()                      # barrier: every rank starts its clock together
        for epoch, batches in schedule.epochs():
            for idx in batches:               # (B,) int64 row indices of the training set
                ...                           # the rank's step; `steps` counts it once it returns
            schedule.end_epoch(epoch)
        result = schedule.counters()
    """

    def __init__(self, spec: dict[str, Any], rank: int, world: int, learner: FFLearner, n: int) -> None:
        self.spec, self.rank, self.learner, self.n = spec, rank, learner, n
        self.ckpt, self.first_epoch, self.done = _checkpoints(spec, rank, world, learner)
        self.steps = self.steps_before = int(self.done.get("steps", 0))
        self.seconds_before = float(self.done.get("train_seconds", 0.0))
        self.max_steps = int(spec.get("max_steps", 0))
        self.batch = int(spec["batch_size"])
        self.t0 = self.t_first = 0.0

    def start(self) -> None:
        dist.barrier()
        self.t0 = self.t_first = time.perf_counter()

    def epochs(self) -> Iterator[tuple[int, Iterator[torch.Tensor]]]:
        """(epoch, its minibatches) for each epoch left, with the learning-rate schedule set."""
        epochs = int(self.spec["epochs"])
        for epoch in range(self.first_epoch, epochs + 1):
            self.learner.set_lr_scale(schedule_factor(self.spec["schedule"], epoch, epochs))
            yield epoch, self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[torch.Tensor]:
        for idx in _batches(self.n, self.batch, int(self.spec["seed"]), epoch, bool(self.spec.get("shuffle", True))):
            if self.max_steps and self.steps >= self.max_steps:
                return
            if self.steps == self.steps_before + 1:
                self.t_first = time.perf_counter()  # the first step's one-off costs are not timed
            _fault_injection(self.rank, self.steps)
            yield idx
            self.steps += 1

    def seconds(self) -> float:
        """Training seconds so far, the resumed run's earlier epochs included."""
        return self.seconds_before + time.perf_counter() - self.t0

    def end_epoch(self, epoch: int, **counters: float) -> None:
        """Checkpoint the epoch (with steps, train_seconds and the trainer's own counters)."""
        _end_of_epoch(self.ckpt, self.learner, self.rank, epoch,
                      {"steps": self.steps, "train_seconds": self.seconds(), **counters})

    def counters(self) -> dict[str, Any]:
        """steps, train_seconds and examples_per_s (`steady_rate` over this process's steps)."""
        t_end = time.perf_counter()
        return {"steps": self.steps, "train_seconds": self.seconds_before + t_end - self.t0,
                "examples_per_s": steady_rate(self.steps - self.steps_before, self.batch, self.t0,
                                              self.t_first, t_end)}


def _weights_for_products(learner: FFLearner, i: int) -> torch.Tensor:
    w = learner.net.layers[i].weight
    lp = learner._low_precision()
    return w if lp is None else w.to(lp)


def pipeline_rule(rule: FFConfig) -> FFConfig:
    """The rule as the pipeline's ranks run it (fast path, no readout); ConfigError if it cannot."""
    if rule.negatives != "random":
        raise ConfigError("the layer pipeline uses random negatives (rule.negatives=random); hard negatives "
                          "need the top layers' readout before the bottom layer's negative pass")
    refuse_int8(rule)
    return replace(rule, fast=True, readout=False)


def refuse_int8(rule: FFConfig) -> None:
    """ConfigError for rule.precision=int8: the ranks (pipeline and data-parallel) multiply in
    float32 or bfloat16; int8 training is a single-process option."""
    if rule.precision == "int8":
        raise ConfigError("rule.precision=int8 is a single-process option (ff-supervised); the pipeline and "
                          "data-parallel ranks multiply in float32 or bfloat16 (rule.precision=bfloat16)")


def pipeline_rank(rank: int, world: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One rank of the layer pipeline. `spec`: hidden, rule (FFConfig dict), data (MnistConfig
    dict), epochs, batch_size, schedule, shuffle, seed, max_steps, evaluate."""
    from mortalnet import config as cfgmod

    rule = pipeline_rule(cfgmod.from_dict(FFConfig, spec["rule"]))
    hidden, seed = tuple(spec["hidden"]), int(spec["seed"])
    learner = FFLearner(rule, hidden, seed=seed)  # identical on every rank (same seed)
    owned = partition(len(hidden), world)[rank]
    data = load_mnist(cfgmod.from_dict(MnistConfig, spec["data"]))
    x_train, y_train = data.train.tensors()
    n, B, C = len(y_train), int(spec["batch_size"]), learner.num_classes
    in_width = 784 if rank == 0 else hidden[owned[0] - 1]
    recv_buf = torch.empty(2 * B, in_width)
    pending = None
    schedule = RankSchedule(spec, rank, world, learner, n)
    schedule.start()
    try:
        for epoch, batches in schedule.epochs():
            for idx in batches:
                sink, metrics = learner.gradient_sink(), {}
                if rank == 0:
                    xb, yb = x_train[idx], y_train[idx]
                    y_neg = learner._sample_negative_labels(None, yb)  # random wrong labels
                    img = xb.clone()
                    img[:, :C] = 0.0
                    shared = learner._total_input(img, _weights_for_products(learner, 0),
                                                  torch.zeros_like(learner.net.layers[0].bias))
                    states, sumsq = learner._first_layer_step(img, shared, img.square().sum(1), yb, y_neg,
                                                              sink, metrics)
                    rest = owned[1:]
                else:
                    rows = 2 * len(idx)
                    buf = recv_buf[:rows]
                    _recv(buf, rank - 1, rank)
                    states, sumsq = buf, buf.square().sum(1)
                    rest = owned
                for i in rest:
                    states, sumsq = learner._layer_step(i, states, sumsq, _weights_for_products(learner, i),
                                                        sink, metrics)
                if rank < world - 1:
                    if pending is not None:
                        pending.wait()
                    out = states.contiguous()
                    pending = dist.isend(out, dst=rank + 1)
            if schedule.ckpt is not None and pending is not None:
                pending.wait()  # the next rank has this epoch's last states before the barrier
                pending = None
            schedule.end_epoch(epoch)
        if pending is not None:
            pending.wait()
        dist.barrier()
    except RankFailedError:
        raise
    except RuntimeError as err:  # gloo/nccl errors on a dead or stuck peer
        raise RankFailedError(describe_error(err, rank, rank - 1 if rank else rank + 1)) from None
    result: dict[str, Any] = {"rank": rank, "layers": owned, **schedule.counters()}
    _gather_layers(learner, owned, rank, world, hidden)
    if rank == 0 and spec.get("evaluate", True):
        tx, ty = data.test.tensors()
        result["test"] = learner.evaluate(tx, ty)
        result["state"] = {k: v.tolist() for k, v in learner.net.state_dict().items()} if spec.get("return_state") else None
    return result


def _fault_injection(rank: int, step: int) -> None:
    """Test hook: MORTALNET_FAULT_KILL_RANK=R:S makes rank R SIGKILL itself at step S."""
    import os

    spec = os.environ.get("MORTALNET_FAULT_KILL_RANK")
    if spec:
        r, s = (int(v) for v in spec.split(":"))
        if r == rank and s == step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def _recv(buf: torch.Tensor, src: int, rank: int) -> None:
    try:
        dist.recv(buf, src=src)
    except RuntimeError as err:
        raise RankFailedError(describe_error(err, rank, src)) from None


def _gather_layers(learner: FFLearner, owned: list[int], rank: int, world: int, hidden) -> None:
    """Send every rank's trained layers (and peer-norm means) to rank 0."""
    parts = partition(len(hidden), world)
    for src in range(1, world):
        for i in parts[src]:
            layer = learner.net.layers[i]
            for t in (layer.weight.data, layer.bias.data, learner.net.mean_states(i)):
                if rank == src:
                    dist.send(t.contiguous(), dst=0)
                elif rank == 0:
                    dist.recv(t, src=src)


def _share_sum(t: torch.Tensor, share: float) -> int:
    """t <- the sum over ranks of share_r * t_r, in place on every rank; returns the bytes all-reduced."""
    t.mul_(share)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.numel() * t.element_size()


class _AllReduceSink(GradientSink):
    """Sums each parameter's accumulated gradient over all ranks, each weighted by its rank's share of
    the minibatch's rows, before updating it. The shares add up to 1, so with ffnew.m's smoothed
    gradient (beta * S + (1 - beta) * g_r, S the same on every rank) the sum is beta * S + (1 - beta) * g
    with g the full minibatch's mean gradient."""

    def __init__(self, optimizer, low_precision, share: float) -> None:
        super().__init__(optimizer, low_precision)
        self.share = share
        self.bytes_sent = 0

    def done(self, *params: torch.Tensor) -> None:
        for p in params:
            buf = self.optimizer.state[p]["smoothed_grad"] if self.fused else p.grad
            self.bytes_sent += _share_sum(buf, self.share)
        super().done(*params)

    def join(self, *params: torch.Tensor) -> None:
        """This rank has no rows (share 0): take part in the all-reduce of `params`, then update them."""
        for p in params:
            self._buffer(p)  # p.grad, or the smoothed gradient, exists
        self.done(*params)


def data_parallel_step(learner: FFLearner, x: torch.Tensor, y: torch.Tensor, batch_rows: int) -> int:
    """One data-parallel FF step on this rank's rows (x, y) of a minibatch of `batch_rows` rows in all;
    returns the bytes all-reduced.

    Gradients and peer-normalization means are weighted by this rank's share len(y) / batch_rows and
    summed over the ranks. A rank with no rows (len(y) == 0) still joins every all-reduce, with zeros.
    """
    share = len(y) / batch_rows
    sink = _AllReduceSink(learner.optimizers[0], learner._low_precision(), share)
    if len(y):
        readout_grads, _ = learner._step_fast(x, y, sink)
    else:  # the same all-reduces, in the same order, as _step_fast's layers and readout
        for layer in learner.net.layers:
            sink.join(layer.weight, layer.bias)
        readout_grads = [torch.zeros_like(w) for w in learner.net.readout] if learner.cfg.readout else []
    if not sink.fused:
        learner.optimizers[0].step()
    sent = sink.bytes_sent
    for w, g in zip(learner.net.readout, readout_grads):
        sent += _share_sum(g, share)
        w.grad = g
    learner.optimizers[1].step()
    for i in range(len(learner.net.layers)):  # keep the peer-normalization means identical
        sent += _share_sum(learner.net.mean_states(i), share)
    return sent


def data_parallel_rank(rank: int, world: int, spec: dict[str, Any]) -> dict[str, Any]:
    """One rank of data-parallel FF: every rank trains the whole net on rows rank, rank + world, ... of
    each minibatch (a short last batch may leave it none)."""
    from mortalnet import config as cfgmod

    rule = replace(cfgmod.from_dict(FFConfig, spec["rule"]), fast=True)
    refuse_int8(rule)
    hidden, seed = tuple(spec["hidden"]), int(spec["seed"])
    learner = FFLearner(rule, hidden, seed=seed)
    learner.generator.manual_seed(seed * 1009 + rank + 1)  # each rank its own negatives
    data = load_mnist(cfgmod.from_dict(MnistConfig, spec["data"]))
    x_train, y_train = data.train.tensors()
    schedule = RankSchedule(spec, rank, world, learner, len(y_train))
    sent = int(schedule.done.get("bytes_all_reduced", 0))
    schedule.start()
    try:
        for epoch, batches in schedule.epochs():
            for idx in batches:
                mine = idx[rank::world]
                sent += data_parallel_step(learner, x_train[mine], y_train[mine], len(idx))
            schedule.end_epoch(epoch, bytes_all_reduced=sent)
        dist.barrier()
    except RuntimeError as err:
        raise RankFailedError(describe_error(err, rank)) from None
    result: dict[str, Any] = {"rank": rank, **schedule.counters(), "bytes_all_reduced": sent}
    if rank == 0 and spec.get("evaluate", True):
        tx, ty = data.test.tensors()
        result["test"] = learner.evaluate(tx, ty)
    return result
