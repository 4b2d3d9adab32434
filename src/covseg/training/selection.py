"""Choosing the post-processing (threshold, minimum component, lung margin) on labelled data.

The search scores exactly what :func:`covseg.inference.postprocess.masks_from_probabilities`
produces — it runs the same stages (:func:`~covseg.inference.postprocess.near_lungs`, the
threshold, :func:`~covseg.inference.postprocess.component_sizes`) with the same scaling — only
sharing work across the grid: the lung region once per margin, one labelling per threshold for
all component sizes. Training runs it on a run's validation slices; ``experiments/oof_threshold.py``
on the out-of-fold predictions of a cross-validation (:mod:`covseg.studies.oof`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from covseg.config import PostProcessing
from covseg.evaluation.metrics import confusion, dice
from covseg.inference.postprocess import component_sizes, near_lungs, scaled

__all__ = ["THRESHOLDS", "Item", "Selection", "select_postprocessing"]

#: Candidate thresholds 0.05, 0.10, ..., 0.95.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass(frozen=True)
class Item:
    """Probabilities and truth of one case at one resolution, ``(N, H, W)`` each.

    ``lung`` is ``None`` for a model without a lung head (no restriction then).
    """

    lung: np.ndarray | None
    infection: np.ndarray
    truth: np.ndarray


@dataclass(frozen=True)
class Selection:
    """The chosen post-processing and the grid behind it.

    Attributes:
        postprocessing: the best candidate.
        dice: its per-slice-mean Dice.
        n_slices: slices scored.
        scores: per-slice-mean Dice of every candidate, keyed ``"threshold/min_component/margin"``
            (margin ``none`` = no restriction).
    """

    postprocessing: PostProcessing
    dice: float
    n_slices: int
    scores: dict[str, float] = field(default_factory=dict)


def key(post: PostProcessing) -> str:
    """``"0.55/5/2"``: the grid key of a candidate."""
    m = "none" if post.lung_margin_px is None else str(post.lung_margin_px)
    return f"{post.threshold:.2f}/{post.min_component}/{m}"


def select_postprocessing(
    items: Sequence[Item],
    model_size: int,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    min_components: Sequence[int] = (0,),
    lung_margins: Sequence[int | None] = (2,),
    base: PostProcessing | None = None,
) -> Selection:
    """The candidate that maximises the per-slice-mean Dice over all slices of ``items``.

    Ties go to the threshold nearest 0.5, then the smallest component size, then the margin
    listed first.

    Args:
        items: probabilities (at any resolution, e.g. the originals') with their truth.
        model_size: the network's input side ``S`` (candidates are in pixels at ``S``).
        thresholds: infection thresholds to try.
        min_components: component sizes to try.
        lung_margins: lung margins to try (``None``: no restriction).
        base: the other fields (``lung_threshold``; default :class:`PostProcessing`'s).

    Returns:
        :class:`Selection`; with no slices, ``base`` at threshold 0.5 and Dice ``nan``.
    """
    base = PostProcessing() if base is None else base
    n_slices = sum(len(it.truth) for it in items)
    if n_slices == 0:
        return Selection(base, float("nan"), 0)
    scores: dict[str, float] = {}
    best: tuple | None = None
    # each candidate component size in pixels of each item's resolution
    min_px_of = [
        [
            scaled(base.replace(min_component=mc), it.infection.shape[1:], model_size)[0]
            for mc in min_components
        ]
        for it in items
    ]
    for m_rank, margin in enumerate(lung_margins):
        post_m = base.replace(lung_margin_px=margin)
        near = [_near(it, post_m, model_size, min(thresholds)) for it in items]
        for t in thresholds:
            sums = np.zeros(len(min_components))
            for it, nr, px in zip(items, near, min_px_of, strict=True):
                inf = it.infection >= t
                if nr is not None:
                    inf &= nr
                labels, sizes = component_sizes(inf)
                for j, min_px in enumerate(px):
                    if min_px <= 1:
                        pred = inf
                    else:
                        keep = sizes >= min_px
                        keep[0] = False
                        pred = keep[labels]
                    sums[j] += float(dice(*confusion(pred, it.truth, axes=(1, 2))).sum())
            for j, mc in enumerate(min_components):
                post = post_m.replace(threshold=float(t), min_component=int(mc))
                score = sums[j] / n_slices
                scores[key(post)] = score
                rank = (score, -abs(t - 0.5), -mc, -m_rank)
                if best is None or rank > best[0]:
                    best = (rank, post)
    assert best is not None
    return Selection(best[1], best[0][0], n_slices, scores)


def _near(it: Item, post: PostProcessing, model_size: int, t_min: float) -> np.ndarray | None:
    """The lung region of ``post``'s margin (``None``: no restriction), computed where any
    candidate threshold could mark infection."""
    if it.lung is None or post.lung_margin_px is None:
        return None
    _, margin = scaled(post, it.infection.shape[1:], model_size)
    return near_lungs(it.lung >= post.lung_threshold, margin, where=it.infection >= t_min)
