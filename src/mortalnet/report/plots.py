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
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    keys = sorted({k for r in history for k in r if ("error" in k and not k.startswith("train/pair"))})
    for k in keys:
        pts = [(r["epoch"], r[k]) for r in history if r.get(k) is not None]
        if pts:
            ax1.plot(*zip(*pts), label=k, marker="." if len(pts) < 30 else None)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("error rate")
    ax1.set_yscale("log")
    ax1.grid(True, which="both", alpha=0.3)
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
                        path: Path, title: str = "") -> str:
    """One panel per layer: goodness of positive vs negative data, with the threshold theta."""
    plt = _plt()
    n = len(pos)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for i, (ax, gp, gn, th) in enumerate(zip(axes[0], pos, neg, thresholds)):
        hi = np.percentile(np.concatenate([gp, gn]), 99.5)
        bins = np.linspace(0, max(hi, th * 1.2), 60)
        ax.hist(gp, bins=bins, alpha=0.6, label="positive (true label)", color="tab:blue")
        ax.hist(gn, bins=bins, alpha=0.6, label="negative (wrong label)", color="tab:red")
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
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.45), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(np.asarray(images[k]).reshape(28, 28), cmap="gray", interpolation="nearest")
            if k < len(titles):
                ax.set_title(titles[k], fontsize=7)
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
