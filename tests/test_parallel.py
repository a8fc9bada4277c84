"""FF on several processes: the pipeline equals sequential training; a dead rank never hangs."""

from __future__ import annotations

import json
import re
import signal
import time
from dataclasses import replace

import pytest
import torch

from mortalnet import config as cfgmod
from mortalnet.cli import main
from mortalnet.data.mnist import MnistConfig, synthetic_mnist
from mortalnet.optim import OptimizerConfig, schedule_factor
from mortalnet.parallel.ff_pipeline import (
    _batches,
    data_parallel_rank,
    data_parallel_step,
    partition,
    pipeline_rank,
)
from mortalnet.parallel.launch import RankFailedError, spawn
from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.runs import RunError

from conftest import assert_refused

pytestmark = pytest.mark.multiprocess

RULE = FFConfig(negatives="random", optimizer=OptimizerConfig(lr=0.03, weight_decay=0.001))


def spec(**kw):
    base = {"hidden": [32, 24, 16], "rule": cfgmod.to_dict(RULE),
            "data": cfgmod.to_dict(MnistConfig(source="synthetic")), "epochs": 1, "batch_size": 50,
            "schedule": "half-then-linear", "shuffle": True, "seed": 3, "max_steps": 6}
    base.update(kw)
    return base


def test_partition_is_contiguous_and_balanced():
    assert partition(4, 2) == [[0, 1], [2, 3]]
    assert partition(4, 3) == [[0, 1], [2], [3]]
    assert partition(3, 3) == [[0], [1], [2]]
    with pytest.raises(ValueError):
        partition(2, 3)


@pytest.mark.parametrize("ranks", [2, 3])
def test_pipeline_computes_the_same_weights_as_one_process(ranks):
    results = spawn(pipeline_rank, ranks, args=(spec(return_state=True),), timeout_s=30)
    piped = {k: torch.tensor(v) for k, v in results[0]["state"].items()}
    assert [r["steps"] for r in results] == [6] * ranks

    data = synthetic_mnist()
    x, y = data.train.tensors()
    seq = FFLearner(RULE, (32, 24, 16), seed=3)
    seq.set_lr_scale(schedule_factor("half-then-linear", 1, 1))
    for idx in _batches(len(y), 50, 3, 1, True)[:6]:
        seq.train_batch(x[idx], y[idx])
    for i, layer in enumerate(seq.net.layers):
        torch.testing.assert_close(piped[f"layers.{i}.weight"], layer.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(piped[f"layers.{i}.bias"], layer.bias, rtol=1e-5, atol=1e-6)


def test_pipeline_learns_with_two_ranks():
    results = spawn(pipeline_rank, 2, args=(spec(hidden=[128, 128], epochs=3, max_steps=0),), timeout_s=60)
    assert results[0]["test"]["error_goodness"] < 0.5  # chance is 0.9; synthetic digits, 3 epochs
    assert results[1]["examples_per_s"] > 0


def test_data_parallel_learns_and_keeps_replicas_identical():
    results = spawn(data_parallel_rank, 2, args=(spec(hidden=[128, 128], epochs=3, max_steps=0),), timeout_s=60)
    assert results[0]["test"]["error_goodness"] < 0.5
    # per step: each layer's weight+bias, the readout weights and the peer-norm means, in float32
    steps = results[0]["steps"]
    per_step = 4 * ((784 * 128 + 128) + (128 * 128 + 128) + 128 * 10 + 2 * 128)
    assert results[0]["bytes_all_reduced"] == steps * per_step


def test_a_dead_rank_stops_the_others_quickly(monkeypatch):
    monkeypatch.setenv("MORTALNET_FAULT_KILL_RANK", "1:3")
    t0 = time.perf_counter()
    # rank 1 SIGKILLs itself at step 3: the error names it and its exit (killed by signal 9)
    message = f"rank 1 died (exit code {-signal.SIGKILL}); the other ranks were stopped"
    with pytest.raises(RankFailedError, match=f"^{re.escape(message)}$"):
        spawn(pipeline_rank, 3, args=(spec(max_steps=50),), timeout_s=10)
    assert time.perf_counter() - t0 < 45


def _fixed_negatives_learner(optimizer: str) -> FFLearner:
    """No peer normalization (its running mean is updated with each rank's own rows) and negative labels
    that depend on the row alone: one data-parallel step then equals one full-batch step exactly."""
    rule = replace(RULE, peer_norm=0.0, optimizer=replace(RULE.optimizer, name=optimizer))
    learner = FFLearner(rule, (32, 24), seed=3)
    learner._sample_negative_labels = lambda logits, y: (y + 1 + y % 3) % 10
    return learner


BATCHES = [list(range(0, 5)), [5], list(range(6, 13))]  # 2 ranks: rows 3+2, then 1+0 (empty), then 4+3


def _data_parallel_steps(rank: int, world: int, optimizer: str) -> dict:  # a spawned rank imports it
    learner = _fixed_negatives_learner(optimizer)
    x, y = synthetic_mnist().train.tensors()
    for batch in BATCHES:
        mine = torch.tensor(batch)[rank::world]
        data_parallel_step(learner, x[mine], y[mine], len(batch))
    return {k: v.tolist() for k, v in learner.net.state_dict().items()} | {
        "readout": [w.tolist() for w in learner.net.readout]}


@pytest.mark.parametrize("optimizer", ["smoothed-sgd", "adam"])
def test_data_parallel_steps_equal_full_batch_steps_with_uneven_and_empty_slices(optimizer):
    results = spawn(_data_parallel_steps, 2, args=(optimizer,), timeout_s=30)
    seq = _fixed_negatives_learner(optimizer)
    x, y = synthetic_mnist().train.tensors()
    for batch in BATCHES:
        seq.train_batch(x[batch], y[batch])
    expected = {k: v for k, v in seq.net.state_dict().items()} | {"readout": list(seq.net.readout)}
    for result in results:  # both replicas
        for key, value in expected.items():
            got = [torch.tensor(v) for v in result[key]] if key == "readout" else torch.tensor(result[key])
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6, msg=key)


def test_data_parallel_trains_through_a_last_batch_that_leaves_a_rank_no_rows():
    # 1901 images in batches of 100: the last batch has one row, rank 1's slice of it is empty
    data = cfgmod.to_dict(MnistConfig(source="synthetic", train_subset=1901))
    results = spawn(data_parallel_rank, 2, args=(spec(hidden=[32, 16], data=data, batch_size=100, max_steps=0),),
                    timeout_s=20)
    assert [r["steps"] for r in results] == [20, 20]


@pytest.mark.parametrize("overrides, message", [
    (["ranks=3"], "ranks=3 for 2 hidden layers"),
    (["ranks=0"], "ranks and threads_per_rank must be >= 1"),
    (["timeout_s=0"], "timeout_s must be > 0"),
    (["rule.negatives=hard"], "the layer pipeline uses random negatives"),
    (["rule.goodness_from=2"], "goodness_from=2 but the net has 2 hidden layers"),
    (["mode=data-parallel", "rule.readout=false", "rule.negatives=hard"], "hard negatives"),
])
def test_a_refused_config_ends_before_any_rank_starts_and_leaves_no_run(overrides, message, capsys, tmp_path):
    assert_refused(capsys, tmp_path / "r", "ff-pipeline", ["data.source=synthetic", *overrides], message)


def test_a_dead_rank_ends_the_run_with_a_one_line_error(monkeypatch, capsys, tmp_path):
    assert issubclass(RankFailedError, RunError)  # the CLI reports it; still a RuntimeError
    monkeypatch.setenv("MORTALNET_FAULT_KILL_RANK", "1:3")
    code = main(["run", "ff-pipeline", "--preset", "fast", "--device", "cpu", "--quiet", "--set",
                 "data.source=synthetic", "--set", "timeout_s=10", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "mortalnet: error: rank 1 died" in err and "Traceback" not in err, err
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "failed"


@pytest.mark.parametrize("mode", ["pipeline", "data-parallel"])
def test_a_run_killed_mid_epoch_resumes_from_the_last_epoch_and_ends_where_an_uninterrupted_one_does(
        mode, monkeypatch, capsys, tmp_path):
    """ff-pipeline saved no checkpoint: an interrupted run started again from epoch 1."""
    sets = ["data.source=synthetic", "hidden=128,128", "training.epochs=3", "training.batch_size=50",
            "timeout_s=10", f"mode={mode}"]
    args = ["run", "ff-pipeline", "--preset", "fast", "--device", "cpu", "--quiet", "--seed", "1",
            *[a for s in sets for a in ("--set", s)]]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert whole["test_error"] < 0.5  # it learned (chance: 0.9), so equal errors below mean something

    broken = tmp_path / "broken"
    monkeypatch.setenv("MORTALNET_FAULT_KILL_RANK", "1:95")  # 40 steps an epoch: rank 1 dies in epoch 3
    assert main([*args, "--out", str(broken)]) == 1
    assert "rank 1 died" in capsys.readouterr().err
    marker = json.loads((broken / "checkpoints" / "complete.json").read_text())
    assert marker == {"epoch": 2, "world": 2}
    kept = sorted(p.name for p in (broken / "checkpoints").glob("*.safetensors"))
    assert "rank1-epoch0002.safetensors" in kept and "rank1-epoch0001.safetensors" not in kept
    monkeypatch.delenv("MORTALNET_FAULT_KILL_RANK")

    assert main(["run", "--resume", str(broken), "--quiet"]) == 0
    resumed = json.loads((broken / "summary.json").read_text())
    assert resumed["test_error"] == whole["test_error"]
    assert [r["steps"] for r in resumed["per_rank"]] == [r["steps"] for r in whole["per_rank"]] == [120, 120]
    if mode == "data-parallel":
        assert resumed["per_rank"][0]["bytes_all_reduced"] == whole["per_rank"][0]["bytes_all_reduced"]
    # the weights themselves: both runs' last checkpoints hold the same tensors
    from safetensors.torch import load_file

    for rank in (0, 1):
        a = load_file(tmp_path / "whole" / "checkpoints" / f"rank{rank}-epoch0003.safetensors")
        b = load_file(broken / "checkpoints" / f"rank{rank}-epoch0003.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def _gpipe_spec(**kw):
    return {"hidden": [16, 12, 10, 8], "batch_size": 8, "micro_batches": 4, "steps": 3, "seed": 5, "lr": 0.05,
            "return_state": True, **kw}


def test_gpipe_splits_layers_like_the_ff_pipeline_and_equals_full_batch_sgd():
    """The GPipe baseline gave rank 0 layers 0-1 and the 16->12 layer too (partition over all linears,
    output included): a lopsided split that slowed the baseline the FF pipeline is compared with."""
    from torch import nn
    import torch.nn.functional as F

    from mortalnet.parallel.gpipe import gpipe_rank

    spec = _gpipe_spec()
    results = spawn(gpipe_rank, 2, args=(spec,), timeout_s=30)
    assert [r["layers"] for r in results] == [[0, 1], [2, 3, 4]] == [partition(4, 2)[0], partition(4, 2)[1] + [4]]
    # the same net trained on one process with whole minibatches
    dims = [784, 16, 12, 10, 8, 10]
    torch.manual_seed(5)
    linears = [nn.Linear(dims[i], dims[i + 1]) for i in range(5)]
    opt = torch.optim.SGD([p for lin in linears for p in lin.parameters()], lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(5)
    x_all, y_all = torch.rand(160, 784, generator=gen), torch.randint(0, 10, (160,), generator=gen)
    for step in range(3):
        h = x_all[step * 8 : (step + 1) * 8]
        for i, lin in enumerate(linears):
            h = lin(h) if i == 4 else torch.relu(lin(h))
        F.cross_entropy(h, y_all[step * 8 : (step + 1) * 8]).backward()
        opt.step()
        opt.zero_grad()
    piped = results[0]["state"] | results[1]["state"]
    for i, lin in enumerate(linears):
        torch.testing.assert_close(torch.tensor(piped[f"{i}.weight"]), lin.weight.detach(), rtol=1e-5, atol=1e-6)


def test_gpipe_refuses_micro_batches_that_do_not_divide_the_batch():
    from mortalnet.parallel.gpipe import gpipe_rank

    with pytest.raises(RankFailedError, match="micro_batches=3 must be >= 1 and divide batch_size=8"):
        spawn(gpipe_rank, 1, args=(_gpipe_spec(micro_batches=3),), timeout_s=30)


def test_steady_rate_leaves_out_the_first_step():
    from mortalnet.parallel.ff_pipeline import steady_rate

    # 5 steps of 10 examples: the first took 4 s (start-up), the other four 1 s each
    assert steady_rate(5, 10, t0=0.0, t_first=4.0, t_end=8.0) == 10.0
    assert steady_rate(1, 10, t0=0.0, t_first=0.0, t_end=2.0) == 5.0



@pytest.mark.parametrize("max_steps, resumed", [(0, None), (7, None), (0, (2, {"steps": 4, "train_seconds": 9.0}))])
def test_rank_schedule_walks_fits_batches_counts_steps_and_checkpoints_each_epoch(monkeypatch, max_steps, resumed):
    """RankSchedule, what both trainers share, without processes: the epochs left (after a resume,
    from the next one), each epoch's batches exactly as fit draws them, max_steps over the whole run,
    the fault hook at every step, and a checkpoint per epoch with the run's counters."""
    import mortalnet.parallel.ff_pipeline as fp

    calls = {"fault": [], "saved": [], "lr": []}
    first_epoch, done = (1, {}) if resumed is None else (resumed[0] + 1, resumed[1])
    monkeypatch.setattr(fp.dist, "barrier", lambda: None)
    monkeypatch.setattr(fp, "_checkpoints", lambda spec, rank, world, learner: ("ckpt", first_epoch, done))
    monkeypatch.setattr(fp, "_fault_injection", lambda rank, step: calls["fault"].append(step))
    monkeypatch.setattr(fp, "_end_of_epoch", lambda ckpt, learner, rank, epoch, counters:
                        calls["saved"].append((epoch, dict(counters))))

    class Learner:
        def set_lr_scale(self, scale):
            calls["lr"].append(scale)

    spec = {"epochs": 4, "batch_size": 30, "seed": 5, "shuffle": True, "schedule": "half-then-linear",
            "max_steps": max_steps}
    schedule = fp.RankSchedule(spec, 0, 2, Learner(), n=100)  # 4 batches an epoch (30, 30, 30, 10)
    schedule.start()
    seen = []
    for epoch, batches in schedule.epochs():
        for idx in batches:
            seen.append((epoch, idx))
        schedule.end_epoch(epoch, extra=1.0)
    epochs = list(range(first_epoch, 5))
    expected = [(e, idx) for e in epochs for idx in _batches(100, 30, 5, e, True)]
    start = done.get("steps", 0)
    if max_steps:
        expected = expected[: max_steps - start]
    assert [e for e, _ in seen] == [e for e, _ in expected]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seen, expected))
    assert calls["fault"] == list(range(start, start + len(expected)))  # the step number of each step
    assert calls["lr"] == [schedule_factor("half-then-linear", e, 4) for e in epochs]
    assert [e for e, _ in calls["saved"]] == epochs  # every epoch checkpointed, even past max_steps
    assert calls["saved"][-1][1]["steps"] == start + len(expected) and calls["saved"][-1][1]["extra"] == 1.0
    counters = schedule.counters()
    assert counters["steps"] == start + len(expected)
    assert counters["train_seconds"] >= done.get("train_seconds", 0.0)


def test_device_auto_runs_the_cpu_only_pipeline_on_the_cpu_where_a_gpu_is_visible(monkeypatch, tmp_path):
    """`--device auto` (the default) on a GPU machine stopped ff-pipeline with "run it with --device cpu"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "a GPU")
    out = tmp_path / "r"
    args = ["run", "ff-pipeline", "--preset", "fast", "--quiet", "--set", "data.source=synthetic",
            "--set", "hidden=32,32", "--set", "training.epochs=1", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "env.json").read_text())["machine"]["torch_device"] == "cpu"
