"""The benchmark scripts' argument checks, provenance and small helpers (no benchmark runs end to end)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """Import benchmarks/<name>.py as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(capsys, parse, argv: list[str]) -> str:
    """parse(argv) exits with argparse's usage error (status 2); its message."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


# -- memory_depth -------------------------------------------------------------------------------


def test_memory_depth_refuses_zero_depth_and_steps(capsys):
    md = load("memory_depth")
    assert "each depth must be >= 1, got 0" in refused(capsys, md.parse_args, ["--depths", "2,0"])
    assert "must be >= 1" in refused(capsys, md.parse_args, ["--steps", "0"])
    assert md.parse_args(["--depths", "1,2"]).depths == "1,2"


def test_memory_depth_measures_a_one_layer_net():
    md = load("memory_depth")
    width = 256  # every part a whole number of KiB: W 784 x 256, b 256, readout 256 x 10, float32
    m = md.measure("ff-ffnew", 1, width, 4, 1)  # goodness and readout from the only layer
    assert m["params_kib"] == (784 * width + width + width * 10) * 4 // 1024 == 784 + 1 + 10
    assert m["rss_before_kib"] > 0 and m["working_kib"] == m["peak_kib"] - m["rss_before_kib"]


def test_memory_depth_shows_the_measuring_process_stderr(monkeypatch):
    md = load("memory_depth")
    monkeypatch.setattr(md, "CHILD", "import sys; sys.stderr.write('ValueError: boom from the child'); sys.exit(3)")
    with pytest.raises(RuntimeError, match="boom from the child"):
        md.measure("ff-ffnew", 1, 8, 4, 1)


def test_memory_depth_record_names_every_option_that_changes_the_numbers(monkeypatch, tmp_path):
    from mortalnet.report.tables import render_benchmarks

    md = load("memory_depth")
    monkeypatch.setattr(md, "measure", lambda rule, depth, width, batch, steps: {
        "working_kib": 1024 * depth * steps, "params_kib": 2048 * depth, "rss_before_kib": 4096})
    out = tmp_path / "benchmarks"
    md.main(["--depths", "1,2", "--width", "8", "--batch", "4", "--steps", "3", "--out", str(out)])
    record = json.loads((out / "memory_depth-cpu.json").read_text())
    assert record["command"] == "python benchmarks/memory_depth.py --depths 1,2 --width 8 --batch 4 --steps 3"
    assert record["benchmark"] == "memory_depth" and "git_commit" in record
    assert (out / "memory_depth-cpu.png").is_file()
    assert "--steps 3" in render_benchmarks(tmp_path)
    md.main(["--depths", "1,2", "--width", "8", "--batch", "4", "--steps", "3", "--out", str(out), "--tag", "zen4"])
    assert (out / "memory_depth-cpu-zen4.json").is_file() and (out / "memory_depth-cpu-zen4.png").is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_every_benchmark_refuses_a_tag_that_is_not_a_file_name(name):
    """Every script takes --tag (the records of memory_depth, compiled_update, ff_pipeline and
    time_to_accuracy are checked to carry it in their tests above and below)."""
    import subprocess

    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--tag", "../x"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "use letters, digits, '-' and '_' only" in done.stderr, done.stderr


# -- precision_step, compiled_update ------------------------------------------------------------


@pytest.mark.parametrize("name", ["precision_step", "compiled_update"])
@pytest.mark.parametrize("option", ["--blocks", "--steps", "--batch"])
def test_timed_blocks_and_steps_must_be_positive(capsys, name, option):
    bench = load(name)
    assert "must be >= 1, got 0" in refused(capsys, bench.parse_args, [option, "0"])
    assert getattr(bench.parse_args([option, "2"]), option[2:]) == 2


def test_compiled_update_refuses_zero_threads(capsys):
    cu = load("compiled_update")
    assert "must be >= 1, got 0" in refused(capsys, cu.parse_args, ["--threads", "1,0"])


def test_compiled_update_records_every_thread_count_measured(monkeypatch, tmp_path):
    from mortalnet.report.tables import render_benchmarks

    cu = load("compiled_update")

    class Learner:
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(cu, "FFLearner", Learner)
    monkeypatch.setattr(cu, "benchmark_batches", lambda batch, device: (None, None))
    monkeypatch.setattr(cu, "interleaved_step_times", lambda learners, *a: {name: [2.0, 1.0] for name in learners})
    threads = torch.get_num_threads()
    out = tmp_path / "benchmarks"
    try:
        cu.main(["--hidden", "8", "--threads", "1,2", "--blocks", "1", "--steps", "1", "--out", str(out),
                 "--tag", "zen4"])
    finally:
        torch.set_num_threads(threads)
    record = json.loads((out / "compiled_update-cpu-zen4.json").read_text())  # --tag names the record
    assert record["env"]["torch_threads"] == [1, 2]
    assert record["machine"].endswith(", 1 and 2 threads")
    assert "--threads 1,2" in record["command"]
    assert len(record["rows"]) == 4
    assert ", 1 and 2 threads;" in render_benchmarks(tmp_path)


# -- time_to_accuracy ---------------------------------------------------------------------------


def test_time_to_accuracy_removes_its_scratch_folder_and_saves_the_plot_atomically(monkeypatch, tmp_path, capsys):
    tta = load("time_to_accuracy")
    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch_parent))
    monkeypatch.setattr(tta, "load_mnist", lambda cfg: None)

    def run_preset(preset, seed, root, snapshot_every, device):
        (root / f"seed{seed}" / "snapshots").mkdir(parents=True)  # what a real run leaves there
        (root / f"seed{seed}" / "snapshots" / "epoch5.safetensors").write_bytes(b"x")
        return {"seed": seed, "test_error": 0.013, "seconds_to_result": 100.0, "wall_seconds": 101.0,
                "data_seconds": 1.0, "train_seconds": 95.0, "test_eval_seconds": 2.0, "epochs": 10,
                "curve_seconds": [50.0, 95.0], "curve_test_error": [0.02, 0.013], "run_dir": str(root)}

    saved = []
    real_save = tta._save
    monkeypatch.setattr(tta, "run_preset", run_preset)
    monkeypatch.setattr(tta, "_save", lambda fig, path: saved.append(Path(path)) or real_save(fig, path))
    out = tmp_path / "benchmarks"
    tta.main(["--seeds", "0", "--baseline-seconds", "0", "--out", str(out)])
    assert list(scratch_parent.iterdir()) == []
    assert saved == [out / "time_to_accuracy-cpu.png"] and saved[0].is_file()
    assert json.loads((out / "time_to_accuracy-cpu.json").read_text())["runs"][0]["epochs"] == 10
    tta.main(["--preset", "speed-30", "--seeds", "0", "--baseline-seconds", "0", "--out", str(out), "--tag", "zen4"])
    tagged = json.loads((out / "time_to_accuracy-cpu-zen4.json").read_text())
    assert tagged["preset"] == "speed-30" and "--tag zen4" in tagged["command"]
    assert tagged["architecture"] == "ff-supervised --preset speed-30, per-label goodness test"  # no baseline ran
    assert "use letters, digits" in refused(capsys, tta.main, ["--tag", "../x"])


# -- goodness_test ------------------------------------------------------------------------------


def test_goodness_test_agreement_title_counts_the_images_measured():
    gt = load("goodness_test")
    same = [{"split": s, "images": 10_000} for s in ("validation", "test")]
    assert gt.agreement_title(["r0", "r1"], same).endswith("(r0, r1; errors out of 10,000 images per set)")
    small = [{"split": "validation", "images": 5_000}, {"split": "test", "images": 10_000}]
    title = gt.agreement_title(["r0"], small)
    assert "validation: 5,000 images" in title and "test: 10,000 images" in title and "per set" not in title


def test_goodness_test_takes_each_speed_up_within_a_round():
    """Speed-ups over the naive test are naive / variant per round, then the median and range over rounds
    (not the ratio of the two medians, which would pair a fast round with a slow one)."""
    gt = load("goodness_test")
    rounds = [{"naive": 1.0, "int8": 0.2}, {"naive": 2.0, "int8": 0.25}, {"naive": 1.5, "int8": 0.5}]
    speed = gt.speeds_over_naive(rounds, "naive")
    assert speed["naive"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert speed["int8"] == pytest.approx({"median": 5.0, "min": 3.0, "max": 8.0})  # 5, 8, 3; medians alone: 1.5 / 0.25 = 6


def test_goodness_test_refuses_a_run_that_is_not_there(capsys, monkeypatch, tmp_path):
    gt = load("goodness_test")
    monkeypatch.setattr(sys, "argv", ["goodness_test.py", "--runs", f"{tmp_path},{tmp_path / 'missing'}"])
    assert "not a run directory: " + str(tmp_path / "missing") in refused(capsys, lambda _: gt.main(), [])


# -- ff_pipeline --------------------------------------------------------------------------------


def test_ff_pipeline_times_rows_round_robin_and_reports_medians(monkeypatch, tmp_path):
    """Rounds interleave the rows; a row's examples/s is its median round, the ratios the medians'."""
    fp = load("ff_pipeline")
    calls = []
    # Rates by (rank function, ranks), one per round: round 2 is a slow spell for everyone.
    rates = {("pipeline_rank", 1): [100, 50, 120], ("pipeline_rank", 2): [110, 60, 100],
             ("data_parallel_rank", 2): [80, 40, 90], ("gpipe_rank", 1): [200, 90, 210],
             ("gpipe_rank", 2): [100, 45, 120]}

    def fake_spawn(fn, ranks, args, threads_per_rank):
        calls.append((fn.__name__, ranks))
        round_index = sum(1 for c in calls if c == calls[-1]) - 1
        return [{"examples_per_s": rates[calls[-1]][round_index]}] * ranks

    monkeypatch.setattr(fp, "spawn", fake_spawn)
    fp.main(["--hidden", "8,8", "--steps", "2", "--repeats", "3", "--out", str(tmp_path), "--tag", "zen4"])
    assert calls[:5] == calls[5:10] == calls[10:] and len(calls) == 15  # each round times every row once
    record = json.loads((tmp_path / "ff_pipeline-cpu-zen4.json").read_text())  # --tag names the record
    rows = {r["run"]: r for r in record["rows"]}
    assert rows["FF layer pipeline"]["examples_per_s"] == 100
    assert (rows["FF layer pipeline"]["min_examples_per_s"], rows["FF layer pipeline"]["max_examples_per_s"]) == (60, 110)
    assert record["ratios"]["ff_pipeline_over_ff_one_process"] == pytest.approx(100 / 100)
    assert record["ratios"]["ff_pipeline_over_backprop_gpipe"] == pytest.approx(100 / 100)
    assert record["ratios"]["backprop_gpipe_over_backprop_one_process"] == pytest.approx(100 / 200)
    assert "--repeats 3" in record["command"]
    assert "ff_pipeline_over_ff_one_process 0.83-1.20" in record["notes"][1]  # 100/120, 110/100 (and 60/50)


def test_ff_pipeline_refuses_zero_repeats(capsys):
    fp = load("ff_pipeline")
    with pytest.raises(SystemExit) as e:
        fp.main(["--repeats", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ff_pipeline", "ff_throughput", "compiled_update"])
@pytest.mark.parametrize("hidden", ["1000,0", "1000,-5", "1000,x", "1000,,1000"])
def test_a_hidden_width_below_one_or_not_a_number_is_a_usage_error(monkeypatch, capsys, name, hidden):
    """Before, ff_pipeline and ff_throughput took `--hidden 1000,0` and failed deep inside the run."""
    bench = load(name)
    argv = ["--hidden", hidden]
    if name == "ff_throughput":  # reads sys.argv
        monkeypatch.setattr(sys, "argv", ["ff_throughput.py", *argv])
        call = lambda _argv: bench.main()  # noqa: E731
    else:
        call = bench.parse_args if name == "compiled_update" else bench.main
    err = refused(capsys, call, argv)
    assert "--hidden" in err and hidden in err


# -- ff_throughput --------------------------------------------------------------------------------


def test_ff_throughput_takes_every_ratio_within_a_round(monkeypatch):
    """Each round measures the peaks and then everything else; a step's FLOP/s is divided by the same
    round's peak in its own dtype (float32 steps by the float32 peak, bf16 steps by the bf16 one), and
    each ratio is taken per round before its median and range over rounds."""
    ft = load("ff_throughput")
    monkeypatch.setattr(ft, "memory_rate", lambda device: 20e9)
    peaks = iter([100e9, 400e9, 800e9, 50e9, 200e9, 400e9, 80e9, 300e9, 600e9])  # rounds 1-3: float32, bfloat16, int8
    monkeypatch.setattr(ft, "matmul_peak", lambda dtype, device, shapes: (next(peaks), {"8x8x8": 7e9}))
    seconds = iter([0.01, 0.02, 0.04, 0.01, 0.03, 0.03])  # rounds 1-3: "a step", "b step"
    calls = []

    def timer(fn):
        fn()
        return next(seconds)

    measurements = {"a step": lambda: calls.append("a"), "b step": lambda: calls.append("b")}
    rounds = ft.timed_rounds(measurements, torch.device("cpu"), [(8, 8, 8)], 3, timer)
    assert calls == ["a", "b"] * 3
    for r in rounds:
        ft.add_fractions_of_peak(r, {"a": 1e9, "b": 2e9}, {"a": "float32", "b": "bfloat16"})
    assert [r["a fraction of peak"] for r in rounds] == pytest.approx([1e9 / 0.01 / 100e9, 1e9 / 0.04 / 50e9, 1e9 / 0.03 / 80e9])
    assert [r["b fraction of peak"] for r in rounds] == pytest.approx([2e9 / 0.02 / 400e9, 2e9 / 0.01 / 200e9, 2e9 / 0.03 / 300e9])
    # b over a per round: 2, 0.25, 1 -> median 1 (the ratio of the median times would be 0.02 / 0.03)
    assert ft.ratio_over_rounds(rounds, "b step s", "a step s") == pytest.approx({"median": 1.0, "min": 0.25, "max": 2.0})
    assert ft.ratio_over_rounds(rounds, "a step s", None)["max"] == 0.04
    assert ft.median_by_shape(rounds, "float32", [(8, 8, 8)]) == {"8x8x8": pytest.approx(7.0)}
    assert [r["int8 matmul peak GFLOP/s"] for r in rounds] == pytest.approx([800.0, 400.0, 600.0])
    assert [r["memory GB/s"] for r in rounds] == pytest.approx([20.0] * 3)


def test_ff_throughput_step_bound_adds_the_update_s_least_traffic_to_the_products_alone():
    """Products of 10 GFLOP replayed in 0.05 s at a 400 GFLOP/s peak: 0.5 of the peak alone; with
    ffnew.m's update traffic for 784-2000 (16 bytes per weight, 25 MB) at 25 GB/s (1 ms) the bound is
    10e9 / 0.051 / 400e9."""
    ft = load("ff_throughput")
    assert ft.update_state_bytes(784, (2000,)) == 16 * 784 * 2000
    assert ft.update_state_bytes(784, (2000, 1000)) == 16 * (784 * 2000 + 2000 * 1000)
    r = {"bfloat16 matmul peak GFLOP/s": 400.0, "memory GB/s": 25.0, "b products alone s": 0.05}
    ft.add_step_bounds(r, {"b": 10e9}, {"b": "bfloat16"}, ft.update_state_bytes(784, (2000,)))
    assert r["b products alone fraction of peak"] == pytest.approx(0.5)
    assert r["b step bound fraction of peak"] == pytest.approx(10e9 / (0.05 + 16 * 784 * 2000 / 25e9) / 400e9)
    assert r["b step bound fraction of peak"] < r["b products alone fraction of peak"]


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_ff_throughput_replays_exactly_the_products_it_counts(precision):
    """The products recorded from one step are the ones ff_step_flops counts (their FLOPs add up to
    it), and the replay runs each of them once, with operands of the recorded layout."""
    ft = load("ff_throughput")
    from mortalnet.rules.forward_forward import FFConfig, FFLearner

    hidden, batch = (24, 32, 24), 20  # more than INT8_MIN_ROWS rows everywhere: no padded int8 products
    learner = FFLearner(FFConfig(precision=precision), hidden, seed=0)
    x, y = torch.rand(batch, 784), torch.arange(batch) % 10
    calls = ft.step_products(learner.train_batch, x, y)

    total = 0
    for _, args, _ in calls:  # (shape, stride, dtype) per tensor; the last two are the factors (addmm: bias first)
        (m, k), (k2, n) = (a[0] for a in [a for a in args if isinstance(a, tuple)][-2:])
        assert k == k2
        total += 2 * m * k * n
    assert total == ft.ff_step_flops(784, hidden, batch, True)
    if precision == "int8":
        assert sum(op is torch.ops.aten._int_mm.out for op, _, _ in calls) == 3 * (len(hidden) - 1)  # neutral, forward, gradient
    replayed = ft._ProductLog()
    run = ft.replay_products(calls, torch.device("cpu"))
    with replayed:
        run()
    assert replayed.calls == calls


# -- published_ff ---------------------------------------------------------------------------------


def test_published_ff_refuses_a_folder_that_is_not_the_peer(capsys, tmp_path):
    pf = load("published_ff")
    (tmp_path / "main.py").write_text("")
    err = refused(capsys, pf.parse_args, ["--peer", str(tmp_path)])
    assert "config.yaml" in err and "src/ff_model.py" in err and "main.py" not in err.split("missing")[1]
    assert "git clone https://github.com/loeweX/Forward-Forward" in err
    assert "must be >= 1" in refused(capsys, pf.parse_args, ["--peer", str(tmp_path), "--epochs", "0"])


def test_published_ff_serves_mnist_as_torchvision_does_and_the_peer_cannot_write_into_it():
    pf = load("published_ff")
    x, y = torch.rand(3, 784), torch.tensor([4, 1, 7])
    data = pf.TorchvisionLikeMnist(x, y)
    image, label = data[2]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 7 and isinstance(label, int)
    assert torch.equal(image.flatten(), x[2])
    image[:, 0, :10] = 0.1  # what the peer's neutral sample does to the tensor it is given
    assert torch.equal(data[2][0].flatten(), x[2]) and len(data) == 3


def test_published_ff_steady_epoch_leaves_out_the_first():
    pf = load("published_ff")
    assert pf.steady_seconds([30.0, 10.0, 12.0, 11.0]) == 11.0
    assert pf.steady_seconds([30.0]) == 30.0


def test_published_ff_stops_with_the_peer_s_own_error_when_it_fails(tmp_path, capsys):
    """A peer that crashes is reported with its traceback and a non-zero exit, not a silent ratio."""
    pf = load("published_ff")
    for f in pf.PEER_FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    (tmp_path / "main.py").write_text("raise RuntimeError('peer exploded at import')\n")
    args = pf.parse_args(["--peer", str(tmp_path), "--epochs", "1", "--train-images", "10"])
    with pytest.raises(SystemExit, match="the peer's training failed"):
        pf.run_peer_process(args, tmp_path)
    assert "peer exploded at import" in capsys.readouterr().err
