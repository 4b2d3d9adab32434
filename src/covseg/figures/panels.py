"""The paper's Fig. 3-style panels: input, prediction, ground truth, overlay."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covseg.figures import save_figure

__all__ = ["plot_panels"]


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
    return save_figure(fig, path)
