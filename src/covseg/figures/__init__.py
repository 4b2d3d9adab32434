"""Figures: training curves, Fig. 3-style panels, the segmentation overlay. Matplotlib's object
API only (no pyplot global state, no backend switching); files written atomically."""

from __future__ import annotations

from pathlib import Path

from covseg.files import atomic_path

__all__ = ["save_figure"]


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Render a Matplotlib ``Figure`` (object API, no pyplot) to a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
