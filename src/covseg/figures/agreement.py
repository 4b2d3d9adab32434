"""Bland-Altman plots of the infection burden: predicted minus true "% of lung infected" against
their mean, one panel per data source, with the bias and the 95 % limits of agreement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from covseg.figures import save_figure

__all__ = ["plot_bland_altman"]


def plot_bland_altman(
    panels: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """One Bland-Altman panel per entry of ``panels``.

    Args:
        panels: panel title -> ``(true %, predicted %)`` per case.
        path: output PNG.
        title: figure title.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    fig = Figure(figsize=(4.2 * n, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
    for ax, (name, pairs) in zip(axes, panels.items(), strict=False):
        pts = np.array([p for p in pairs if None not in p], float).reshape(-1, 2)
        mean, diff = pts.mean(axis=1), pts[:, 1] - pts[:, 0]
        ax.scatter(mean, diff, s=14, color="tab:blue")
        ax.axhline(0.0, color="0.6", lw=0.8)
        if len(diff):
            bias = float(diff.mean())
            ax.axhline(bias, color="tab:red", lw=1.2, label=f"bias {bias:+.2f}")
        if len(diff) >= 2:
            sd = float(diff.std(ddof=1))
            for y in (bias - 1.96 * sd, bias + 1.96 * sd):
                ax.axhline(y, color="tab:red", lw=0.8, ls="--")
            ax.plot([], [], color="tab:red", ls="--", lw=0.8, label=f"95% LoA ±{1.96 * sd:.2f}")
        ax.set_title(f"{name} (n={len(diff)})", fontsize=9)
        ax.set_xlabel("mean of true and predicted % infected")
        ax.set_ylabel("predicted − true (percentage points)")
        if len(diff):
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
