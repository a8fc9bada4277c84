"""Learning curves in the summary and the README, for experiments whose preset shortens the paper's
schedule (the reader should see where the curve stands at the last epoch)."""

from __future__ import annotations

import statistics
from typing import Any

from mortalnet.report.tables import runs_by_preset


class LearningCurveMixin:
    """For a `SupervisedExperiment`: adds `valid_curve` [[epoch, validation error], ...] to the summary
    and a README section with the epochs run and the mean validation error at each evaluated epoch."""

    def run(self, config: Any, ctx) -> dict[str, Any]:
        summary = super().run(config, ctx)  # type: ignore[misc]
        rows = ctx.run.metrics() if ctx.run is not None else []
        key = f"valid/{summary['primary_metric']}"
        summary["valid_curve"] = [[r["epoch"], r[key]] for r in rows if r.get(key) is not None]
        return summary

    def report_section(self, summaries: list[dict]) -> str:
        out = []
        for preset, runs in runs_by_preset(s for s in summaries if s.get("valid_curve")):
            epochs = sorted({e for r in runs for e, _ in r["valid_curve"]})
            means = []
            for e in epochs:
                vals = [v for r in runs for ep, v in r["valid_curve"] if ep == e]
                means.append(f"{statistics.fmean(vals):.2%}")
            out.append(f"**{runs[0]['experiment']} / {preset}**: {runs[0].get('epochs', '?')} epochs, "
                       f"{len(runs)} seed(s); validation error ({runs[0]['primary_metric']}, mean over seeds) "
                       "by epoch:\n")
            out.append("| epoch | " + " | ".join(str(e) for e in epochs) + " |")
            out.append("|---|" + "---|" * len(epochs))
            out.append("| validation error | " + " | ".join(means) + " |")
            out.append("")
        return "\n".join(out)
