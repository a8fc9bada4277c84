"""The shared loop: checkpoints, resume (also after kill -9) equal to an uninterrupted run, NaN stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from mortalnet.rules.backprop import BackpropLearner
from mortalnet.rules.base import NonFiniteError, sample_rows
from mortalnet.rules.forward_forward import FFConfig, FFLearner
from mortalnet.runs import RunDir, RunError, checkpoint_train_seconds, record_digest
from mortalnet.training import DivergedError, TrainingConfig, _params_finite, fit


def _learner(kind: str, seed: int = 0):
    if kind == "ff":
        return FFLearner(FFConfig(), (64, 64), seed=seed)
    return BackpropLearner(hidden=(64,), seed=seed)


@pytest.mark.parametrize("kind", ["ff", "backprop"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, tiny_data, kind):
    cfg = TrainingConfig(epochs=4, batch_size=100, progress=False, tensorboard=False)
    train = tiny_data.train.tensors()
    valid = tiny_data.valid.tensors()

    straight = _learner(kind)
    fit(straight, train, valid, cfg, seed=7, run=RunDir(tmp_path / "a"))

    class Stop(Exception):
        pass

    def die_after_2(epoch, row):
        if epoch == 2:
            raise Stop

    run_b = RunDir(tmp_path / "b")
    with pytest.raises(Stop):
        fit(_learner(kind), train, valid, cfg, seed=7, run=run_b, on_epoch=die_after_2)
    resumed = _learner(kind, seed=123)  # a different init: everything must come from the checkpoint
    second = fit(resumed, train, valid, cfg, seed=7, run=run_b, resume=True)
    # the total counts the interrupted session's training too; the session's own time does not
    first_two = run_b.metrics()[1]["train_seconds"]
    assert second.train_seconds == pytest.approx(first_two + second.session_train_seconds)
    assert 0 < second.session_train_seconds < second.train_seconds

    for (k, va), vb in zip(straight.state_tensors().items(), resumed.state_tensors().values()):
        assert torch.equal(va, vb), k
    rows_a, rows_b = RunDir(tmp_path / "a").metrics(), run_b.metrics()
    assert [r["epoch"] for r in rows_b] == [1, 2, 3, 4]
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if "seconds" not in k} == {k: v for k, v in rb.items() if "seconds" not in k}


def test_checkpoint_is_safetensors_without_pickle(tmp_path, tiny_data):
    run = RunDir(tmp_path)
    fit(_learner("ff"), tiny_data.train.tensors(), None,
        TrainingConfig(epochs=1, progress=False, tensorboard=False), seed=0, run=run)
    blob = run.checkpoint_path.read_bytes()
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    assert json.loads(header["__metadata__"]["mortalnet"])["epoch"] == 1
    assert b"\x80\x04\x95" not in blob[:200]  # no pickle opcode stream
    tensors, meta = run.load_checkpoint()
    assert "module.net.layers.0.weight" in tensors and meta["epoch"] == 1


class _Exploding(BackpropLearner):
    """Goes NaN in epoch 2: stands for a learning rate that is too high. With report_nan=False its
    metrics stay finite: only the parameter check at the epoch's end can see it."""

    def __init__(self, *a, report_nan: bool = True, **k):
        super().__init__(*a, **k)
        self.steps, self.report_nan = 0, report_nan

    def train_batch(self, x, y):
        self.steps += 1
        m = dict(super().train_batch(x, y))
        if self.steps > 25:  # 20 steps per epoch with 2000 examples / 100
            with torch.no_grad():
                self.net.linears[0].weight.mul_(float("nan"))
            m["loss"] = torch.tensor(float("nan") if self.report_nan else 0.0)
        return {k: v if self.report_nan else v.nan_to_num(0.0) for k, v in m.items()}


def test_nan_stops_with_location_and_keeps_last_good_checkpoint(tmp_path, tiny_data):
    run = RunDir(tmp_path)
    learner = _Exploding(hidden=(32,), seed=0)
    cfg = TrainingConfig(epochs=3, batch_size=100, finite_check_every=1, progress=False, tensorboard=False)
    with pytest.raises(DivergedError, match="epoch 2 before step 6/20"):
        fit(learner, tiny_data.train.tensors(), None, cfg, seed=0, run=run)
    tensors, meta = run.load_checkpoint()
    assert meta["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_nan_reaching_the_hard_negatives_stops_with_location_not_a_traceback(tmp_path, tiny_data):
    """With hard negatives a NaN net makes torch.multinomial raise inside train_batch, before any
    periodic check: the loop turns that into a DivergedError naming epoch and step."""
    run = RunDir(tmp_path)
    learner = _learner("ff")
    real_step = learner.train_batch

    def step(x, y):
        if learner.optimizers[0].param_groups[0].get("poisoned"):
            with torch.no_grad():
                learner.net.layers[0].weight.fill_(float("nan"))
        out = real_step(x, y)
        learner.optimizers[0].param_groups[0]["poisoned"] = True  # from the second step on
        return out

    learner.train_batch = step
    cfg = TrainingConfig(epochs=2, batch_size=100, finite_check_every=50, progress=False, tensorboard=False)
    with pytest.raises(DivergedError, match=r"parameter net.layers.0.weight became non-finite in epoch 1 by step 2/\d+ "
                                            r"\(NonFiniteError: the probabilities sampled from \(labels or symbols\)"):
        fit(learner, tiny_data.train.tensors(), None, cfg, seed=0, run=run)


def test_logits_overflowing_from_finite_weights_stop_as_a_divergence(tmp_path, tiny_data):
    """Readout weights that are finite but large enough for the logits to overflow float32 (what
    `--set rule.optimizer.lr=1e9` does to ff-supervised on MNIST within a few steps): the hard
    negatives' sampler meets NaN probabilities, and the run stops with a DivergedError naming epoch
    and step (it was torch.multinomial's traceback)."""
    learner = FFLearner(FFConfig(), (64, 64), seed=0)
    with torch.no_grad():
        for w in learner.net.readout:
            w.fill_(1e38)  # every logit sums 1e38 times positive states: inf
    cfg = TrainingConfig(epochs=2, batch_size=100, finite_check_every=50, progress=False, tensorboard=False)
    with pytest.raises(DivergedError, match=r"sampled from \(labels or symbols\) became non-finite in epoch 1 at "
                                            r"step 1/20 with every parameter finite \(values overflowed\)"):
        fit(learner, tiny_data.train.tensors(), None, cfg, seed=0, run=RunDir(tmp_path))
    assert _params_finite(learner) is None  # the parameters alone would not have told


def test_sample_rows_refuses_only_non_finite_probabilities():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert sample_rows(probs, g).tolist() == [1, 0]
    with pytest.raises(NonFiniteError, match="non-finite"):
        sample_rows(torch.tensor([[float("nan"), 1.0, 0.0]]), g)
    with pytest.raises(RuntimeError, match="probability tensor") as err:
        sample_rows(torch.tensor([[-1.0, 1.0, 0.0]]), g)  # finite but negative: torch's own error
    assert not isinstance(err.value, NonFiniteError)


def _cli(args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "mortalnet", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.mark.multiprocess
def test_kill_minus_nine_then_resume_gives_the_same_numbers(tmp_path):
    common = ["run", "ff-supervised", "--preset", "fast", "--set", "data.source=synthetic",
              "--set", "training.epochs=3", "--set", "hidden=64,64", "--quiet"]
    whole = _cli(common + ["--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    killed = _cli(common + ["--out", str(tmp_path / "killed")], env={"MORTALNET_FAULT_KILL_AFTER_EPOCH": "2"})
    assert killed.returncode == -9  # really SIGKILLed after epoch 2's checkpoint
    assert not (tmp_path / "killed" / "summary.json").exists()
    status = json.loads((tmp_path / "killed" / "status.json").read_text())
    assert status["state"] == "running"  # a kill -9 leaves no chance to say goodbye
    resumed = _cli(["run", "--resume", str(tmp_path / "killed"), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    for key in ("test_error", "test/error_goodness", "test/error_softmax", "valid_error"):
        assert a[key] == b[key], key
    ta, _ = RunDir(tmp_path / "whole").load_checkpoint()
    tb, _ = RunDir(tmp_path / "killed").load_checkpoint()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    env = json.loads((tmp_path / "killed" / "env.json").read_text())
    assert len(env["resumed"]) == 1


@pytest.mark.multiprocess
def test_a_multi_model_run_resumes_each_model_where_it_stopped(tmp_path):
    """fast-weights trains several models in sub-folders: kill -9 during the first model, resume, and
    every model's numbers equal those of an uninterrupted run (the killed model continues from its
    checkpoint instead of starting over; the next one starts fresh)."""
    common = ["run", "fast-weights", "--preset", "fast", "--quiet",
              "--set", "data.train=256", "--set", "data.valid=64", "--set", "data.test=64",
              "--set", "hidden_sizes=8", "--set", "models=rnn,lstm",
              "--set", "training.epochs=3", "--set", "training.checkpoint_every=1", "--set", "training.eval_every=1"]
    whole = _cli(common + ["--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    killed = _cli(common + ["--out", str(tmp_path / "killed")], env={"MORTALNET_FAULT_KILL_AFTER_EPOCH": "2"})
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "lstm-8").exists()  # died inside the first model
    before = RunDir(tmp_path / "killed" / "rnn-8").metrics()
    assert [row["epoch"] for row in before] == [1, 2]
    earlier = checkpoint_train_seconds(tmp_path / "killed")
    assert earlier == pytest.approx(before[-1]["train_seconds"])
    resumed = _cli(["run", "--resume", str(tmp_path / "killed"), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())["results"]
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    b = summary["results"]
    # the run's wall time counts the interrupted session's training too (all models' training is inside it)
    assert summary["wall_seconds"] >= checkpoint_train_seconds(tmp_path / "killed")
    assert [(r["model"], r["test_error"], r["valid_error"], r["train_error"]) for r in a] == \
           [(r["model"], r["test_error"], r["valid_error"], r["train_error"]) for r in b]
    after = RunDir(tmp_path / "killed" / "rnn-8").metrics()
    assert after[:2] == before and after[2]["epoch"] == 3  # continued at epoch 3: epochs 1-2 (and their timings) kept


def test_checkpoint_train_seconds_sums_a_run_or_its_sub_runs(tmp_path):
    t = {"w": torch.zeros(2)}
    RunDir(tmp_path / "single").save_checkpoint(t, {"train_seconds": 5.0})
    for name, seconds in (("a", 3.0), ("b", 4.5)):
        RunDir(tmp_path / "multi" / name).save_checkpoint(t, {"train_seconds": seconds})
    RunDir(tmp_path / "multi" / "a").save_snapshot(1, t, {"train_seconds": 100.0})  # snapshots are not counted
    assert checkpoint_train_seconds(tmp_path / "single") == 5.0
    assert checkpoint_train_seconds(tmp_path / "multi") == 7.5
    assert checkpoint_train_seconds(tmp_path / "empty") == 0.0


@pytest.mark.parametrize("header", [b"[1, 2]", b'{"__metadata__": [1]}', b'{"__metadata__": {"mortalnet": "[3]"}}',
                                    b'{"__metadata__": {"mortalnet": 3}}', b'{"__metadata__": {"mortalnet": "{"}}',
                                    b"\xff\xfe"])
def test_a_tampered_checkpoint_header_is_a_clear_error(tmp_path, header):
    (tmp_path / "checkpoint.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(RunError, match="not a readable mortalnet checkpoint"):
        checkpoint_train_seconds(tmp_path)
    with pytest.raises(RunError, match="not a readable mortalnet checkpoint"):
        RunDir(tmp_path).load_checkpoint()


def test_a_checkpoint_header_longer_than_its_file_is_a_clear_error(tmp_path):
    RunDir(tmp_path).save_checkpoint({"w": torch.zeros(2)}, {"epoch": 1, "train_seconds": 1.0})
    path = tmp_path / "checkpoint.safetensors"
    blob = bytearray(path.read_bytes())
    for length in (2**63 + 5, 2**40):
        blob[:8] = (length % 2**64).to_bytes(8, "little")
        path.write_bytes(bytes(blob))
        with pytest.raises(RunError, match="not a readable mortalnet checkpoint"):
            checkpoint_train_seconds(tmp_path)
        with pytest.raises(RunError, match="not a readable mortalnet checkpoint"):
            RunDir(tmp_path).load_checkpoint()


def test_a_checkpoint_that_does_not_fit_the_run_is_a_clear_error(tmp_path, tiny_data):
    run = RunDir(tmp_path)
    cfg = TrainingConfig(epochs=2, progress=False, tensorboard=False)
    train = tiny_data.train.tensors()
    run.save_checkpoint({"w": torch.zeros(2)}, {"train_seconds": 1.0})  # no epoch
    with pytest.raises(RunError, match="no epoch"):
        fit(_learner("ff"), train, None, cfg, seed=0, run=run, resume=True)
    fit(_learner("ff"), train, None, replace(cfg, epochs=1), seed=0, run=run)
    other = FFLearner(FFConfig(), (32, 32), seed=0)  # other widths than the checkpoint's
    with pytest.raises(RunError, match="does not fit this run's learner"):
        fit(other, train, None, cfg, seed=0, run=run, resume=True)


def test_a_snapshot_is_written_before_its_epochs_checkpoint(tmp_path, tiny_data, monkeypatch):
    """A crash between the two writes must not lose the snapshot: a resume starts after the checkpoint."""
    run = RunDir(tmp_path)
    cfg = TrainingConfig(epochs=3, snapshot_every=1, progress=False, tensorboard=False)
    train = tiny_data.train.tensors()
    save = RunDir.save_snapshot

    def crash_at_epoch_2(self, epoch, tensors, meta):
        if epoch == 2:
            raise OSError("disk full")
        return save(self, epoch, tensors, meta)

    monkeypatch.setattr(RunDir, "save_snapshot", crash_at_epoch_2)
    with pytest.raises(OSError):
        fit(_learner("ff"), train, None, cfg, seed=0, run=run)
    monkeypatch.setattr(RunDir, "save_snapshot", save)
    fit(_learner("ff"), train, None, cfg, seed=0, run=run, resume=True)
    assert [p.name for p in run.snapshots()] == ["epoch0001.safetensors", "epoch0002.safetensors",
                                                 "epoch0003.safetensors"]


def test_json_records_take_numpy_and_tensor_values(tmp_path):
    import numpy as np

    from mortalnet.runs import atomic_write_json, read_json

    atomic_write_json(tmp_path / "a.json", {"x": np.float32("nan"), "t": torch.tensor(float("inf")),
                                            "v": torch.tensor([1.0, float("nan")]), "n": np.arange(2)})
    assert read_json(tmp_path / "a.json") == {"x": None, "t": None, "v": [1.0, None], "n": [0, 1]}


def test_a_checkpoint_with_a_changed_byte_is_refused_naming_the_file(tmp_path, tiny_data):
    run = RunDir(tmp_path)
    fit(_learner("backprop"), tiny_data.train.tensors(), None,
        TrainingConfig(epochs=1, progress=False, tensorboard=False), seed=0, run=run)
    tensors, _ = run.load_checkpoint()  # untouched: loads
    blob = bytearray(run.checkpoint_path.read_bytes())
    blob[-5] ^= 0x80  # a sign or exponent bit of the last tensor, header intact
    run.checkpoint_path.write_bytes(bytes(blob))
    with pytest.raises(RunError, match=r"checkpoint.safetensors has been altered"):
        run.load_checkpoint()


def test_an_edited_config_json_is_refused_and_one_without_a_digest_still_loads(tmp_path):
    from mortalnet.api import _stored_config

    run = RunDir(tmp_path)
    record = {"experiment": "backprop-mlp", "preset": "fast", "seed": 0, "overrides": [],
              "config": {"training": {"epochs": 2}}}
    run.write_json("config.json", {**record, "sha256": record_digest(record)})
    assert _stored_config(run)[1].training.epochs == 2
    run.write_json("config.json", {**record, "config": {"training": {"epochs": 3}}, "sha256": record_digest(record)})
    with pytest.raises(RunError, match="config.json has been edited"):
        _stored_config(run)
    run.write_json("config.json", record)  # written before the digest existed (the recorded runs)
    assert _stored_config(run)[1].training.epochs == 2


def test_a_write_that_fails_midway_leaves_the_old_checkpoint_and_no_temporary(tmp_path, tiny_data, monkeypatch):
    import mortalnet.runs as runs

    run = RunDir(tmp_path)
    fit(_learner("backprop"), tiny_data.train.tensors(), None,
        TrainingConfig(epochs=1, progress=False, tensorboard=False), seed=0, run=run)
    old = run.checkpoint_path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        run.save_checkpoint({"w": torch.ones(3)}, {"epoch": 2})
    assert run.checkpoint_path.read_bytes() == old
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_non_finite_weight_behind_finite_metrics_stops_the_run_at_the_epoch_end(tmp_path, tiny_data):
    run = RunDir(tmp_path)
    cfg = TrainingConfig(epochs=3, batch_size=100, progress=False, tensorboard=False)
    with pytest.raises(DivergedError, match="parameter net.linears.0.weight became non-finite during epoch 2"):
        fit(_Exploding(hidden=(32,), seed=0, report_nan=False), tiny_data.train.tensors(), None, cfg, seed=0, run=run)
    tensors, meta = run.load_checkpoint()
    assert meta["epoch"] == 1 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
