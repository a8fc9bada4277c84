"""Result tables come from run records; the README's generated block must be current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mortalnet.report import tables

ROOT = Path(__file__).resolve().parents[1]


def _summary(path: Path, **kw):
    path.mkdir(parents=True)
    base = {"experiment": "ff-supervised", "preset": "paper", "seed": 0, "test_error": 0.014,
            "wall_seconds": 100.0, "git_commit": "abc", "machine": "m", "primary_metric": "error_goodness",
            "test/error_goodness": 0.014, "test/error_softmax": 0.02, "plots": ["learning_curves.png"]}
    base.update(kw)
    (path / "summary.json").write_text(json.dumps(base))


def test_table_shows_mean_and_sd_over_seeds_and_the_reference(tmp_path):
    _summary(tmp_path / "a", seed=0, test_error=0.014, **{"test/error_goodness": 0.014})
    _summary(tmp_path / "b", seed=1, test_error=0.016, **{"test/error_goodness": 0.016})
    block = tables.render(tmp_path)
    assert "| ff-supervised | paper | 0, 1 | 1.50% ± 0.14 |" in block
    assert "1.36% (Hinton 2022" in block
    assert "error_softmax: 2.00% ± 0.00" in block


def test_readout_refits_beside_summaries_are_tabled(tmp_path):
    for seed, (before, after) in enumerate([(0.020, 0.015), (0.022, 0.017)]):
        _summary(tmp_path / f"s{seed}", experiment="ff-unsupervised", seed=seed, test_error=before)
        (tmp_path / f"s{seed}" / "readout_refit.json").write_text(json.dumps(
            {"epochs": 20, "valid_error_before": before, "valid_error_after": after,
             "test_error_before": before, "test_error_after": after}))
    block = tables.render(tmp_path)
    assert "| ff-unsupervised | paper | 0, 1 | 20 | 2.10% ± 0.14 → 1.60% ± 0.14 | 2.10% ± 0.14 → 1.60% ± 0.14 |" in block


def test_benchmark_records_render_their_rows_ratios_and_extra_tables(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    record = {"benchmark": "b", "machine": "m", "command": "python benchmarks/b.py",
              "rows": [{"measurement": "x", "images_per_s": 1234.5}], "ratios": {"x_over_naive": 5.25},
              "tables": [{"title": "Agreement", "rows": [{"test": "shortlist 3", "differs": 4}]}]}
    (bench / "b-cpu.json").write_text(json.dumps(record))
    block = tables.render_benchmarks(tmp_path)
    assert "| x | 1.23e+03 |" in block and "x_over_naive = 5.25" in block
    assert "Agreement\n\n| test | differs |\n|---|---|\n| shortlist 3 | 4 |" in block


def test_mean_sd_text_writes_the_sd_of_percentages_in_points_and_skips_missing_values():
    assert tables.mean_sd_text([0.0123]) == "1.23%"
    assert tables.mean_sd_text([0.01, 0.02, None]) == "1.50% ± 0.71"
    assert tables.mean_sd_text([0.01, 0.02], ".1%") == "1.5% ± 0.7"
    assert tables.mean_sd_text([2.5, 3.5], ".3f") == "3.000 ± 0.707"
    assert tables.mean_sd_text([1000.0, 1004.0], ".3g", ".2g") == "1e+03 ± 2.8"
    assert tables.mean_sd_text([None]) == "-"


def test_runs_by_preset_puts_named_presets_first_and_sorts_seeds():
    runs = [{"preset": p, "seed": s} for p, s in [("b", 1), ("paper", 2), ("a", 0), ("paper", 0), ("b", 0)]]
    grouped = tables.runs_by_preset(runs, order=["paper", "missing"])
    assert [p for p, _ in grouped] == ["paper", "a", "b"]
    assert [[r["seed"] for r in rs] for _, rs in grouped] == [[0, 2], [0], [0, 1]]


def test_splice_replaces_only_the_block():
    text = f"intro\n{tables.BEGIN}\nold\n{tables.END}\noutro\n"
    new = tables.splice(text, "new\n")
    assert new == f"intro\n{tables.BEGIN}\nnew\n{tables.END}\noutro\n"
    with pytest.raises(ValueError):
        tables.splice("no markers", "x")


def test_readme_results_block_is_up_to_date(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert not tables.update_readme("results", "README.md", check=True), (
        "README.md's results block is stale: run `mortalnet report`"
    )


def test_benchmark_provenance_names_the_command_machine_and_commit():
    import argparse

    from mortalnet.runs import benchmark_provenance, machine_info

    args = argparse.Namespace(agreement_threads=1, seconds=3.0, tag="", out="results/benchmarks")
    head = benchmark_provenance("goodness_test", args, "784-10", machine_info("cpu"))
    assert head["command"] == "python benchmarks/goodness_test.py --agreement-threads 1 --seconds 3.0"
    assert head["benchmark"] == "goodness_test" and head["architecture"] == "784-10"
    assert head["machine"].endswith("threads") and head["git_commit"]


def test_cpu_details_tell_two_cpus_of_the_same_name_apart():
    from mortalnet.runs import cpu_details, machine_label

    def cpuinfo(family: str, flags: str) -> str:
        block = (f"processor\t: {{n}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: 17\n"
                 f"model name\t: AMD EPYC\nstepping\t: 1\ncache size\t: 1024 KB\nflags\t\t: {flags}\n\n")
        return block.format(n=0) + block.format(n=1).replace(family, "99")  # only the first block counts

    zen4 = cpu_details(cpuinfo("25", "fpu avx2 fma avx512f avx512_bf16 sse4_2"))
    old = cpu_details(cpuinfo("23", "fpu avx2 fma"))
    assert zen4["family"] == "25" and zen4["model"] == "17" and zen4["vendor"] == "AuthenticAMD"
    assert zen4["matmul_flags"] == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert old["matmul_flags"] == ["avx2", "fma"]
    env = {"cpu": "AMD EPYC", "torch_threads": 2}
    assert machine_label({**env, "cpu_details": zen4}) == "AMD EPYC (family 25 model 17), 2 threads"
    assert machine_label(env) == "AMD EPYC, 2 threads"  # records written before cpu_details existed
    assert cpu_details("") == {k: v for k, v in cpu_details("").items() if k == "torch_cpu_capability"}


def test_benchmark_record_path_takes_a_tag_that_is_a_plain_name():
    import argparse

    from mortalnet.runs import benchmark_record_path

    assert benchmark_record_path("r/b", "ff_throughput", "cpu").as_posix() == "r/b/ff_throughput-cpu.json"
    assert benchmark_record_path("r/b", "ff_throughput", "cpu", "amd-f25").name == "ff_throughput-cpu-amd-f25.json"
    for bad in ("../x", "a b", "x/y"):
        with pytest.raises(argparse.ArgumentTypeError, match="letters, digits"):
            benchmark_record_path("r/b", "ff_throughput", "cpu", bad)


def _bench(tmp_path: Path, name: str, record: dict) -> None:
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    (tmp_path / "benchmarks" / f"{name}.json").write_text(json.dumps({"machine": "m", **record}))


def test_speed_targets_status_comes_from_the_rounds_of_each_ratio(tmp_path):
    from mortalnet.report import targets

    per_round = [{"ratio": "fast_step_achieved_over_matmul_peak", "median": 0.72, "min": 0.68, "max": 0.75},
                 {"ratio": "goodness_test_int8_over_naive_implementation", "median": 5.5, "min": 5.1, "max": 6.0}]
    _bench(tmp_path, "ff_throughput-cpu", {
        "benchmark": "ff_throughput", "tables": [{"title": "rounds", "rows": per_round}],
        "ratios": {"fast_step_achieved_over_matmul_peak": 0.72, "bf16_step_achieved_over_bf16_matmul_peak": 0.5,
                   "epoch_float32_over_naive_implementation_speed": 1.2,
                   "epoch_int8_compiled_update_int8_test_over_naive_implementation_speed": 3.99,
                   "goodness_test_shared_over_naive_speed": 1.3, "goodness_test_int8_over_naive_implementation": 5.5}})
    rows = {r[0]: r for r in targets.benchmark_rows(tmp_path / "benchmarks" / "ff_throughput-cpu.json",
                                                     json.loads((tmp_path / "benchmarks" / "ff_throughput-cpu.json").read_text()))}
    fp32 = rows[f"{targets.STEP}, float32"]
    assert fp32[2].startswith("0.72 (0.68-0.75)") and fp32[4] == "met at the median, not in every round"
    assert rows[f"{targets.STEP}, bfloat16"][4] == "not met"
    epoch = rows[targets.EPOCH]  # the best variant is shown, and 3.99 is not 4
    assert "int8 training" in epoch[2] and epoch[4] == "not met"
    test = rows[f"{targets.TEST} (4x2000)"]
    assert test[2].startswith("5.50x (5.10-6.00x): int8 products") and test[4] == "met"


def test_speed_targets_compare_test_errors_by_the_standard_error_of_the_difference(tmp_path):
    from mortalnet.report import targets

    assert targets.within_seed_spread([0.010, 0.011], [0.0105, 0.0115])
    assert not targets.within_seed_spread([0.010, 0.0101], [0.020, 0.0201])
    _bench(tmp_path, "time_to_accuracy-cpu", {
        "benchmark": "time_to_accuracy", "preset": "speed", "target_error": 0.014, "target_seconds": 300.0,
        "test_error_mean": 0.0101, "seconds_max": 310.0,
        "runs": [{"seed": 0, "test_error": 0.0104}, {"seed": 1, "test_error": 0.0098}]})
    for seed, (bf16, fp32) in enumerate([(0.0104, 0.0098), (0.0098, 0.0094)]):
        _summary(tmp_path / f"bf16-{seed}", preset="speed", seed=seed, test_error=bf16)
        _summary(tmp_path / f"fp32-{seed}", preset="speed-fp32", seed=seed, test_error=fp32)
    table = targets.render_targets(tmp_path, tables.load_summaries(tmp_path))
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert "at most 310 s" in lines[targets.TIME_TO_ACCURACY] and lines[targets.TIME_TO_ACCURACY].endswith("| not met |")
    assert "1.01% ± 0.04 (speed, 2 seeds) vs 0.96% ± 0.03 (speed-fp32, 2 seeds)" in lines[targets.BF16]
    assert lines[targets.BF16].endswith("| met |")
    assert lines[targets.GPU].endswith("| not measured |")  # no record ran on a GPU
