"""The speed targets (MISSION.md; README "Speed and scale") checked against the records, for the
README's generated results: one row per target and record, the measured value with its range over
rounds, and a status computed from them, never typed.

A ratio measured in several rounds (the benchmarks take every ratio within a round) is "met" when
every round reaches the goal, "met at the median" when the median does and some round does not,
else "not met". A comparison of test errors is "within the seed spread" when the difference of
the means is at most twice its standard error, sqrt(sd_a^2 / n_a + sd_b^2 / n_b).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mortalnet.report.tables import mean_sd_text

# the targets, in the table's order
TIME_TO_ACCURACY = "time to accuracy (mean of the seeds)"
STEP = "FF step FLOP/s over the matmul peak"
EPOCH = "epoch over the naive implementation, exact 10-label test"
TEST = "10-label goodness test over the naive one"
BF16, INT8 = "bfloat16 products", "int8 training products"
MEMORY = "training memory vs depth"
PIPELINE, PIPELINE_SPEED = "pipelined FF learns what one process learns", "pipelined FF speed"
GPU = "the same benchmarks on a GPU"
ORDER = (TIME_TO_ACCURACY, STEP, EPOCH, TEST, BF16, INT8, MEMORY, PIPELINE, PIPELINE_SPEED, GPU)

# the targets' goals
STEP_FRACTION_OF_PEAK = 0.70  # FF step FLOP/s over the same dtype's measured matmul FLOP/s
EPOCH_OVER_NAIVE = 4.0  # one epoch (500 steps + the 10k goodness test) vs the naive implementation
TEST_OVER_NAIVE = 5.0  # the 10-label goodness test vs the naive one


@dataclass(frozen=True)
class Measured:
    """A ratio from one record: its median over rounds and the lowest and highest round."""

    median: float
    low: float
    high: float

    def text(self, unit: str = "") -> str:
        rng = "" if self.low == self.high else f" ({self.low:.2f}-{self.high:.2f}{unit})"
        return f"{self.median:.2f}{unit}{rng}"

    def status(self, goal: float) -> str:
        if self.low >= goal:
            return "met"
        return "met at the median, not in every round" if self.median >= goal else "not met"


def ratio(record: dict[str, Any], name: str) -> Measured | None:
    """record["ratios"][name] with its range over rounds, from the record's table of per-round
    ratios (ff_throughput --rounds); a single value when the record has no range for it."""
    value = record.get("ratios", {}).get(name)
    if value is None:
        return None
    for table in record.get("tables", []):
        for row in table.get("rows", []):
            if row.get("ratio") == name:
                return Measured(row["median"], row["min"], row["max"])
    return Measured(value, value, value)


def row_speed(record: dict[str, Any], measurement: str) -> Measured | None:
    """goodness_test's speed_over_naive of one row, with its range over rounds when recorded."""
    for row in record.get("rows", []):
        if row.get("measurement") == measurement and "speed_over_naive" in row:
            med = row["speed_over_naive"]
            return Measured(med, row.get("speed_over_naive_min", med), row.get("speed_over_naive_max", med))
    return None


def best(candidates: list[tuple[str, Measured | None]]) -> tuple[str, Measured] | None:
    """The (label, measured) with the highest median among those present."""
    present = [(label, m) for label, m in candidates if m is not None]
    return max(present, key=lambda c: c[1].median) if present else None


def within_seed_spread(a: list[float], b: list[float]) -> bool:
    """|mean(a) - mean(b)| <= 2 standard errors of the difference (see the module docstring)."""
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    se = math.sqrt(sd(a) ** 2 / len(a) + sd(b) ** 2 / len(b))
    return abs(statistics.fmean(a) - statistics.fmean(b)) <= 2 * se


def _link(path: Path, record: dict[str, Any]) -> str:
    """The record's file as a link, with the machine it ran on."""
    return f"[{path.stem}]({path.as_posix()}) ({record.get('machine', '?')})"


def _ratio_row(target: str, goal: float, unit: str, path: Path, record: dict[str, Any],
               found: tuple[str, Measured] | None) -> list[str] | None:
    if found is None:
        return None
    label, m = found
    return [target, f">= {goal:g}{unit}", f"{m.text(unit)}: {label}", _link(path, record), m.status(goal)]


def _throughput_rows(path: Path, record: dict[str, Any]) -> list[list[str] | None]:
    """benchmarks/ff_throughput.py: the step's share of the matmul peak, the epoch and the test."""
    r = lambda name: ratio(record, name)  # noqa: E731
    bf16 = best([("eager", r("bf16_step_achieved_over_bf16_matmul_peak")),
                 ("compiled update", r("bf16_compiled_update_step_achieved_over_bf16_matmul_peak"))])
    bound = r("bf16_step_bound_over_bf16_matmul_peak")
    if bf16 is not None and bound is not None:  # what products + the update's least memory traffic allow
        bf16 = (f"{bf16[0]} (products and the update's memory traffic alone allow {bound.text()})", bf16[1])
    epoch = "_over_naive_implementation_speed"
    return [
        _ratio_row(f"{STEP}, float32", STEP_FRACTION_OF_PEAK, "", path, record,
                   best([("fused fast path", r("fast_step_achieved_over_matmul_peak"))])),
        _ratio_row(f"{STEP}, bfloat16", STEP_FRACTION_OF_PEAK, "", path, record, bf16),
        _ratio_row(EPOCH, EPOCH_OVER_NAIVE, "x", path, record, best([
            ("float32", r("epoch_float32" + epoch)),
            ("bfloat16", r("epoch_bfloat16" + epoch)),
            ("bfloat16, compiled update", r("epoch_bfloat16_compiled_update" + epoch)),
            ("bfloat16 compiled, int8 test", r("epoch_bfloat16_compiled_update_int8_test" + epoch)),
            ("int8 training, compiled, int8 test", r("epoch_int8_compiled_update_int8_test" + epoch)),
        ])),
        _ratio_row(f"{TEST} (4x2000)", TEST_OVER_NAIVE, "x", path, record, best([
            ("float32", r("goodness_test_shared_over_naive_speed")),
            ("bfloat16", r("goodness_test_bf16_over_naive_implementation")),
            ("int8 products", r("goodness_test_int8_over_naive_implementation")),
            ("int8 products, compiled", r("goodness_test_int8_compiled_over_naive_implementation")),
        ])),
    ]


def _goodness_test_rows(path: Path, record: dict[str, Any]) -> list[list[str] | None]:
    """benchmarks/goodness_test.py: the exact 10-label test on trained nets, per precision."""
    name = "per-label goodness test: exact, layer 1 shared, "
    variants = best([(p, row_speed(record, name + p)) for p in ("float32", "bfloat16", "int8", "int8-compiled")])
    return [_ratio_row(f"{TEST} (trained nets)", TEST_OVER_NAIVE, "x", path, record, variants)]


def _time_to_accuracy_rows(path: Path, record: dict[str, Any]) -> list[list[str] | None]:
    """benchmarks/time_to_accuracy.py: the preset's mean test error and its slowest seed's seconds."""
    if "test_error_mean" not in record:
        return []
    goal_err, goal_s, runs = record["target_error"], record["target_seconds"], record.get("runs", [])
    met = record["test_error_mean"] <= goal_err and record["seconds_max"] <= goal_s
    seeds = ", ".join(str(run["seed"]) for run in runs)
    measured = (f"{mean_sd_text([run['test_error'] for run in runs])} (seeds {seeds}), "
                f"at most {record['seconds_max']:.0f} s: preset {record['preset']}")
    return [[TIME_TO_ACCURACY, f"<= {goal_err:.1%} in <= {goal_s:.0f} s", measured, _link(path, record),
             "met" if met else "not met"]]


def _pipeline_rows(path: Path, record: dict[str, Any]) -> list[list[str] | None]:
    """benchmarks/ff_pipeline.py: examples/s of the FF layer pipeline (no goal: measured)."""
    one = ratio(record, "ff_pipeline_over_ff_one_process")
    if one is None:
        return []
    measured = f"examples/s of the FF layer pipeline: {one.text('x')} one process"
    gpipe = ratio(record, "ff_pipeline_over_backprop_gpipe")
    if gpipe is not None:
        measured += f", {gpipe.text('x')} a GPipe backprop pipeline"
    return [[PIPELINE_SPEED, "measured against one process and GPipe", measured, _link(path, record), "measured"]]


def _memory_rows(path: Path, record: dict[str, Any]) -> list[list[str] | None]:
    """benchmarks/memory_depth.py: working memory at 16 layers over 2, FF and backprop."""
    r = record.get("ratios", {})
    ff, bp = r.get("ff-layers_working_memory_16_over_2_layers"), r.get("backprop_working_memory_16_over_2_layers")
    if ff is None or bp is None:
        return []
    measured = f"working memory, 16 over 2 layers: FF {ff:.2f}x, backprop {bp:.2f}x"
    return [[MEMORY, "FF flat, backprop growing", measured, _link(path, record),
             "met" if ff < 1.1 and bp > 1.5 else "not met"]]


ROWS_OF = {"ff_throughput": _throughput_rows, "goodness_test": _goodness_test_rows,
           "time_to_accuracy": _time_to_accuracy_rows, "ff_pipeline": _pipeline_rows, "memory_depth": _memory_rows}


def benchmark_rows(path: Path, record: dict[str, Any]) -> list[list[str]]:
    """The target rows one benchmark record answers: [target, goal, measured, record, status]."""
    rows_of = ROWS_OF.get(record.get("benchmark"))
    return [] if rows_of is None else [row for row in rows_of(path, record) if row is not None]


def comparison_row(target: str, summaries: list[dict[str, Any]], a: tuple[str, str],
                   b: tuple[str, str]) -> list[str] | None:
    """Test errors of runs a = (experiment, preset) against b: equal within the seed spread?"""
    errs = {key: [s["test_error"] for s in summaries if (s["experiment"], s["preset"]) == key] for key in (a, b)}
    if not errs[a] or not errs[b]:
        return None
    text = lambda key: f"{mean_sd_text(errs[key])} ({key[1]}, {len(errs[key])} seeds)"
    ok = within_seed_spread(errs[a], errs[b])
    return [target, "test error unchanged within the seed spread", f"{text(a)} vs {text(b)}",
            f"{a[0]} runs in the table above", "met" if ok else "not met"]


def render_targets(results: str | Path, summaries: list[dict[str, Any]]) -> str:
    """The targets table for the README's generated block ("" when no record answers any target)."""
    rows: list[list[str]] = []
    records = []
    for path in sorted((Path(results) / "benchmarks").glob("*.json")):
        record = json.loads(path.read_text())
        records.append(record)
        rows += benchmark_rows(path, record)
    for target, a, b in (
        (BF16, ("ff-supervised", "speed"), ("ff-supervised", "speed-fp32")),
        (INT8, ("ff-supervised", "speed-30-int8"), ("ff-supervised", "speed-30")),
        (PIPELINE, ("ff-pipeline", "paper"), ("ff-pipeline", "paper-1-process")),
    ):
        row = comparison_row(target, summaries, a, b)
        if row is not None:
            rows.append(row)
    if not rows:
        return ""
    if not any((r.get("env") or {}).get("torch_device", "cpu").startswith("cuda") for r in records):
        rows.append([GPU, "absolute times", "no GPU record", "-", "not measured"])
    # by target; sort is stable, so a target's records stay in file order
    rows.sort(key=lambda r: next(i for i, t in enumerate(ORDER) if r[0].startswith(t)))
    lines = ["| target | goal | measured (median, range over rounds) | record | status |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
