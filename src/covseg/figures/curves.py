"""Training curves of a run (``RUN/curves.png``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from covseg.figures import save_figure

__all__ = ["plot_curves"]


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
    return save_figure(fig, path)
