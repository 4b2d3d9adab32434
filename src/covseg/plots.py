"""Figures: training curves and Fig.3-style panels. Matplotlib's object API only (no pyplot
global state, no backend switching)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_curves", "plot_panels"]


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def plot_curves(rows: Sequence[dict], path: str | Path) -> Path:
    """Losses of the three heads, validation Dice and learning rate per epoch.

    Args:
        rows: ``log.csv`` rows (``epoch, lr, loss, loss_lung, loss_aux, loss_final, val_dice``).
        path: output PNG.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_loss, ax_dice, ax_lr = fig.subplots(1, 3)
    ep = [r["epoch"] for r in rows]
    for key, label in (
        ("loss", "total"),
        ("loss_lung", "lung"),
        ("loss_aux", "infection (aux)"),
        ("loss_final", "infection (final)"),
    ):
        ys = [r.get(key, math.nan) for r in rows]
        if any(not math.isnan(y) for y in ys):
            ax_loss.plot(ep, ys, label=label, marker=".")
    ax_loss.set(title="training loss", xlabel="epoch", yscale="log")
    ax_loss.legend(fontsize=8)
    ax_dice.plot(ep, [r.get("val_dice", math.nan) for r in rows], marker=".", color="C2")
    ax_dice.set(title="validation Dice (thr 0.5)", xlabel="epoch", ylim=(0, 1))
    ax_lr.plot(ep, [r["lr"] for r in rows], marker=".", color="C3")
    ax_lr.set(title="learning rate", xlabel="epoch")
    return _save(fig, Path(path))


def plot_panels(
    images: np.ndarray,
    preds: np.ndarray,
    truths: np.ndarray,
    path: str | Path,
    titles: Sequence[str] | None = None,
) -> Path:
    """One row per slice: input, prediction, ground truth, overlay (the paper's Fig. 3).

    Args:
        images: ``(N, H, W)`` in ``[0, 1]``.
        preds: ``(N, H, W)`` binary predictions.
        truths: ``(N, H, W)`` binary truth.
        path: output PNG.
        titles: optional row labels.
    """
    from matplotlib.figure import Figure

    n = len(images)
    fig = Figure(figsize=(10, 2.6 * max(n, 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(n, 1), 4, squeeze=False))
    for i in range(n):
        img, p, t = images[i], preds[i].astype(bool), truths[i].astype(bool)
        overlay = np.stack([img] * 3, axis=-1)
        overlay[p & t] = (1.0, 1.0, 0.0)  # true positive: yellow
        overlay[p & ~t] = (1.0, 0.0, 0.0)  # false positive: red
        overlay[~p & t] = (0.0, 1.0, 0.0)  # missed: green
        for ax, a, name in zip(
            axes[i],
            (img, p, t, overlay),
            ("input", "prediction", "ground truth", "overlay (TP yellow, FP red, FN green)"),
            strict=True,
        ):
            ax.imshow(a, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        if titles is not None:
            axes[i][0].set_ylabel(titles[i], fontsize=8)
    return _save(fig, Path(path))
