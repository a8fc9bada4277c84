"""Figures written with each run (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    from mortalnet.runs import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())
    _plt().close(fig)
    return Path(path).name


def learning_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> str:
    """Train/validation error per epoch (left) and per-layer FF loss or training loss (right)."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    keys = sorted({k for r in history for k in r if ("error" in k and not k.startswith("train/pair"))})
    plotted = False
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in history if r.get(k) is not None]
        if pts:
            ax1.plot(*zip(*pts), label=k, marker="." if len(pts) < 30 else None)
            plotted = True
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("error rate")
    ax1.set_yscale("log")
    ax1.grid(True, which="both", alpha=0.3)
    if plotted:  # training.epochs=0 leaves nothing to plot (and matplotlib warns about an empty legend)
        ax1.legend(fontsize=8)
    ax1.set_title("error")
    loss_keys = sorted({k for r in history for k in r if "loss" in k})
    for k in loss_keys:
        ax2.plot(epochs, [r.get(k, np.nan) for r in history], label=k)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("loss")
    ax2.grid(True, alpha=0.3)
    if loss_keys:
        ax2.legend(fontsize=8)
    ax2.set_title("per-layer FF loss / training loss")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def goodness_histograms(pos: Sequence[np.ndarray], neg: Sequence[np.ndarray], thresholds: Sequence[float],
                        path: Path, title: str = "",
                        names: tuple[str, str] = ("positive (true label)", "negative (wrong label)")) -> str:
    """One panel per layer: goodness of positive vs negative data, with the threshold theta.

    `names` labels the two histograms (what positive and negative data are in this experiment).
    """
    plt = _plt()
    n = len(pos)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False, layout="constrained")
    for i, (ax, gp, gn, th) in enumerate(zip(axes[0], pos, neg, thresholds)):
        hi = np.percentile(np.concatenate([gp, gn]), 99.5)
        bins = np.linspace(0, max(hi, th * 1.2), 60)
        ax.hist(gp, bins=bins, alpha=0.6, label=names[0], color="tab:blue")
        ax.hist(gn, bins=bins, alpha=0.6, label=names[1], color="tab:red")
        ax.axvline(th, color="k", ls="--", lw=1, label="theta")
        ax.set_title(f"layer {i + 1}")
        ax.set_xlabel("goodness (sum of squares)")
        if i == 0:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def receptive_fields(weights: np.ndarray, path: Path, n: int = 100, title: str = "") -> str:
    """First-layer weights (784, H) as 28x28 images (paper figure 2 style).

    The first 10 pixels of the top row are the label pixels; they stay visible.
    """
    plt = _plt()
    n = min(n, weights.shape[1])
    side = int(np.ceil(np.sqrt(n)))
    fig, axes = plt.subplots(side, side, figsize=(side * 0.9, side * 0.9))
    for k, ax in enumerate(np.asarray(axes).ravel()):
        ax.axis("off")
        if k < n:
            w = weights[:, k].reshape(28, 28)
            lim = np.abs(w).max() + 1e-12
            ax.imshow(w, cmap="gray", vmin=-lim, vmax=lim, interpolation="nearest")
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def image_grid(images: np.ndarray, path: Path, titles: Sequence[str] = (), cols: int = 8, title: str = "") -> str:
    """A grid of 28x28 images (N, 784) with optional per-image titles."""
    plt = _plt()
    n = len(images)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.45), squeeze=False, layout="constrained")
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(np.asarray(images[k]).reshape(28, 28), cmap="gray", interpolation="nearest")
            if k < len(titles):
                ax.set_title(titles[k], fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bars(labels: Sequence[str], values: Sequence[float], path: Path, title: str = "", ylabel: str = "",
         hline: float | None = None, hline_label: str = "", colors: Sequence[str] | None = None) -> str:
    """A bar chart (one bar per label), with an optional horizontal reference line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.6))
    ax.bar(range(len(values)), values, color=colors or "tab:blue")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if max((len(s) for s in labels), default=0) > 6 else 0, ha="right")
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1, label=hline_label or None)
        if hline_label:
            ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def curves(x: Sequence[float], series: dict[str, Sequence[float]], path: Path, title: str = "", xlabel: str = "",
           ylabel: str = "", logx: bool = False, xticklabels: Sequence[str] | None = None) -> str:
    """Several named curves over the same x values (markers at the points), optional log x axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    if xticklabels is not None:
        ax.set_xticks(list(x))
        ax.set_xticklabels(xticklabels)
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def soft_target_bars(images: np.ndarray, probs: dict[str, np.ndarray], path: Path, titles: Sequence[str] = (),
                     title: str = "", log_scale: Sequence[bool] = ()) -> str:
    """One column per image (N, 784): the image, then one row of class-probability bars per named
    distribution in `probs` (name -> (N, C)); `log_scale[j]` puts row j on a log axis."""
    plt = _plt()
    n, names = len(images), list(probs)
    fig, axes = plt.subplots(1 + len(names), n, figsize=(2.1 * n, 1.9 * (1 + len(names))), squeeze=False,
                             layout="constrained")
    for k in range(n):
        ax = axes[0, k]
        ax.imshow(np.asarray(images[k]).reshape(28, 28), cmap="gray", interpolation="nearest")
        ax.axis("off")
        if k < len(titles):
            ax.set_title(titles[k], fontsize=8)
        for j, name in enumerate(names):
            ax = axes[1 + j, k]
            p = np.asarray(probs[name][k])
            log = j < len(log_scale) and log_scale[j]
            ax.bar(np.arange(len(p)), np.maximum(p, 1e-12) if log else p, 0.8, color=f"C{j}")
            if log:
                ax.set_yscale("log")
                ax.set_ylim(1e-10, 2)
            ax.set_xticks(range(len(p)))
            ax.tick_params(labelsize=6)
            if k == 0:
                ax.set_ylabel(name + (" (log)" if log else ""), fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def xy_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path, xlabel: str, ylabel: str,
              title: str = "", logx: bool = False, logy: bool = False, hlines: dict[str, float] | None = None,
              vlines: dict[str, float] | None = None, styles: dict[str, dict[str, Any]] | None = None) -> str:
    """Named curves (x, y) on one axis; optional labelled horizontal/vertical reference lines.

    `styles` maps a curve's or a horizontal line's name to matplotlib keywords (color, ls, marker).
    """
    plt = _plt()
    styles = styles or {}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for k, (name, (xs, ys)) in enumerate(curves.items()):
        kw = {"marker": "o" if len(xs) < 30 else None, "ms": 3, "color": f"C{k % 10}", **styles.get(name, {})}
        ax.plot(xs, ys, label=name, **kw)
    for k, (name, y) in enumerate((hlines or {}).items()):
        kw = {"ls": "--", "lw": 1, "color": f"C{(len(curves) + k) % 10}", **styles.get(name, {})}
        ax.axhline(y, label=name, **kw)
    for name, x in (vlines or {}).items():
        ax.axvline(x, ls=":", lw=1, color="k", label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def series_panels(panels: Sequence[dict[str, Any]], path: Path, title: str = "") -> str:
    """Side-by-side panels of labelled series: a generic figure for sweeps.

    Each panel is a dict with `series` ({label: (x, y)} or {label: (x, y, yerr)}), and optional
    `title`, `xlabel`, `ylabel`, `logx`, `logy` (bools), `lines` ({label: (x, y)} drawn dashed,
    e.g. fitted power laws) and `hline` (a y value drawn dotted, e.g. 1.0).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        colors = {}
        for label, data in panel.get("series", {}).items():
            x, y = np.asarray(data[0], float), np.asarray(data[1], float)
            if len(data) > 2 and data[2] is not None:
                h = ax.errorbar(x, y, yerr=np.asarray(data[2], float), marker="o", ms=4, capsize=2, label=label)
                colors[label] = h[0].get_color()
            else:
                (h,) = ax.plot(x, y, marker="o", ms=4, label=label)
                colors[label] = h.get_color()
        for label, (x, y) in panel.get("lines", {}).items():
            base = next((c for k, c in colors.items() if label.startswith(k)), None)
            ax.plot(x, y, ls="--", lw=1, color=base, label=label)
        if panel.get("hline") is not None:
            ax.axhline(panel["hline"], color="k", ls=":", lw=1)
        if panel.get("logx"):
            ax.set_xscale("log")
        if panel.get("logy"):
            ax.set_yscale("log")
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_title(panel.get("title", ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def series_plot(series: dict[str, Sequence[float]], path: Path, xlabel: str, ylabel: str, title: str = "",
                x: Sequence[float] | None = None, logy: bool = False) -> str:
    """Named curves over a common x axis (1, 2, ... unless given)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, ys in series.items():
        xs = list(x) if x is not None else list(range(1, len(ys) + 1))
        ax.plot(xs, list(ys), marker="." if len(ys) < 40 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
