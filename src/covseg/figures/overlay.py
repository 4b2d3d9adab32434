"""The ``<case>_overlay.png`` of ``covseg segment``: Fig. 3-style panels of the slices with the
most infection, and the infection area along the scan. Matplotlib's object API only (no pyplot
global state, no backend switching)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covseg.figures import save_figure

__all__ = ["plot_segmentation"]


def plot_segmentation(
    images01: np.ndarray,
    lungs: np.ndarray,
    infections: np.ndarray,
    area_per_slice: Sequence[float],
    path: str | Path,
    *,
    slice_ids: Sequence[int],
    area_unit: str = "mm²",
) -> Path:
    """Panels (input, predicted infection, overlay) for a few slices, plus an area-per-slice plot.

    Args:
        images01: ``(K, H, W)`` input slices in ``[0, 1]`` (canonical display orientation).
        lungs: ``(K, H, W)`` binary lung masks of those slices.
        infections: ``(K, H, W)`` binary infection masks of those slices.
        area_per_slice: infection area of every slice of the scan, inferior -> superior; the plot
            is drawn when there is more than one slice.
        path: output PNG (written to a temporary name, then renamed).
        slice_ids: the index of each of the ``K`` slices in ``area_per_slice`` (row labels and
            markers on the plot).
        area_unit: unit of ``area_per_slice`` for the axis label.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    k = len(images01)
    curve = len(area_per_slice) > 1
    rows = max(k, 1) + (1 if curve else 0)
    fig = Figure(figsize=(9, 2.8 * max(k, 1) + (2.0 if curve else 0)), layout="constrained")
    heights = [2.8] * max(k, 1) + ([2.0] if curve else [])
    grid = fig.add_gridspec(rows, 3, height_ratios=heights)
    for i in range(k):
        img = np.clip(images01[i], 0, 1)
        lung, inf = lungs[i].astype(bool), infections[i].astype(bool)
        overlay = np.stack([img] * 3, axis=-1)
        overlay[lung & ~inf] = 0.75 * overlay[lung & ~inf] + 0.25 * np.array([0.0, 0.6, 1.0])
        overlay[inf] = 0.4 * overlay[inf] + 0.6 * np.array([1.0, 0.1, 0.1])
        for j, (a, name) in enumerate(
            ((img, "input"), (inf, "predicted infection"), (overlay, "overlay (lung blue)"))
        ):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        fig.axes[-3].set_ylabel(f"slice {slice_ids[i]}", fontsize=8)
    if curve:
        ax = fig.add_subplot(grid[-1, :])
        ax.plot(np.arange(len(area_per_slice)), area_per_slice, color="C3", lw=1)
        ax.plot(slice_ids, [area_per_slice[s] for s in slice_ids], "o", color="C0", ms=4)
        ax.set(xlabel="slice (inferior → superior)", ylabel=f"infection ({area_unit})")
        ax.margins(x=0)
        ax.set_ylim(bottom=0)
    return save_figure(fig, path, dpi=80)
