"""The figures: a figure title never covers the panels' own titles; an empty history still draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mortalnet.report import plots


def _figures(tmp_path: Path):
    r = np.random.default_rng(0)
    return {
        "goodness_histograms": lambda: plots.goodness_histograms(
            [r.normal(1000, 50, 200) for _ in range(3)], [r.normal(900, 50, 200) for _ in range(3)], [1000] * 3,
            tmp_path / "g.png", "goodness: true label vs most likely wrong label (validation)"),
        "learning_curves": lambda: plots.learning_curves(
            [{"epoch": 1, "train/loss": 1.0, "valid/error": 0.5}, {"epoch": 2, "train/loss": 0.5, "valid/error": 0.3}],
            tmp_path / "lc.png", "learning curves of a long experiment name"),
        "image_grid": lambda: plots.image_grid(r.random((8, 784)), tmp_path / "ig.png", [str(i) for i in range(8)],
                                               cols=4, title="samples"),
        "soft_target_bars": lambda: plots.soft_target_bars(r.random((3, 784)), {"teacher": r.random((3, 10))},
                                                           tmp_path / "s.png", ["a", "b", "c"], title="soft targets"),
        "series_panels": lambda: plots.series_panels(
            [{"title": "panel", "series": {"a": ([0, 1], [0.1, 0.2])}, "xlabel": "x", "ylabel": "y"}] * 2,
            tmp_path / "p.png", title="two panels"),
    }


@pytest.mark.parametrize("name", ["goodness_histograms", "learning_curves", "image_grid", "soft_target_bars",
                                  "series_panels"])
def test_the_figure_title_does_not_overlap_a_panel_title(name, tmp_path, monkeypatch):
    drawn = []

    def keep(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        suptitle = fig.get_suptitle() and fig._suptitle.get_window_extent(renderer)
        titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
        drawn.append((suptitle, titles))
        plots._plt().close(fig)
        return Path(path).name

    monkeypatch.setattr(plots, "_save", keep)
    _figures(tmp_path)[name]()
    (suptitle, titles), = drawn
    assert suptitle and titles, "the figure should have both a title and panel titles"
    # goodness_histograms' "layer 2" sat under its figure title before constrained layout; the other
    # figures had room by their sizes alone, and keep it whatever their titles
    assert all(not suptitle.overlaps(t) for t in titles)


def test_learning_curves_of_a_run_with_no_epochs_draw_without_a_warning(tmp_path):
    """training.epochs=0 (the untrained net's test error) leaves no curve: the figure is still
    written, and matplotlib is not asked for a legend of nothing (it warned on the terminal)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        name = plots.learning_curves([], tmp_path / "lc.png", "no epochs")
    assert (tmp_path / name).stat().st_size > 0
