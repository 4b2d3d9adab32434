"""``covseg evaluate``: a checkpoint against a labelled dataset, scored on what ``segment`` writes.

The cases (:mod:`covseg.evaluation.cases`) are read at their original resolution where the
source files exist, segmented exactly as ``covseg segment`` does
(:func:`~covseg.evaluation.cases.segment_case`), and the masks compared with the original masks:
:func:`score_cases` as read, :func:`score_variants` also re-framed and re-windowed
(:mod:`covseg.evaluation.robustness`).

:class:`~covseg.evaluation.scores.Scores` is the one schema of per-slice counts: ``evaluate``
summarises it, ``cv`` writes it as a run's ``test_metrics.json``, ``report`` reads it back.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.checkpoint import load_checkpoint
from covseg.config import to_dict
from covseg.data.dataset import PreparedDataset
from covseg.data.layouts import Case
from covseg.errors import CovsegError
from covseg.evaluation.agreement import format_agreement
from covseg.evaluation.cases import LabelledCase, labelled_cases, open_labelled, segment_case
from covseg.evaluation.metrics import METRICS, format_lesion_size_table
from covseg.evaluation.robustness import VARIANTS, check_variants, variant_case
from covseg.evaluation.scores import Scores
from covseg.files import write_json
from covseg.inference.segmenter import Segmenter

__all__ = [
    "evaluate",
    "format_robustness",
    "format_table",
    "robustness_summary",
    "score_cases",
    "score_variants",
]


def score_cases(
    seg: Segmenter,
    prepared: PreparedDataset,
    case_ids: list[str],
    originals: dict[str, Case],
    *,
    on_case: Any = None,
) -> Scores:
    """Segment and score cases (the core of :func:`evaluate` and of ``cv``'s test folds).

    Args:
        seg: the model with its pre- and post-processing.
        prepared: the prepared dataset.
        case_ids: cases to score.
        originals: original cases by id (:func:`~covseg.evaluation.cases.open_labelled`).
        on_case: optional ``callable(case, rule, pred)`` after each case, with the intensity rule
            applied to ``case.raw`` (``None`` for prepared slices) and the predicted infection
            (e.g. to collect figure panels).
    """
    scores = Scores(postprocessing=to_dict(seg.post))
    for case in labelled_cases(prepared, case_ids, originals):
        done = segment_case(seg, case)
        scores.add(case, done.infection, done.lung, done.estimate)
        if on_case is not None:
            on_case(case, done.rule, done.infection)
    return scores


def score_variants(
    seg: Segmenter,
    prepared: PreparedDataset,
    case_ids: list[str],
    originals: dict[str, Case],
    variants: Sequence[str] = tuple(VARIANTS),
    *,
    on_case: Callable[[str, LabelledCase, str | None, np.ndarray], Any] | None = None,
) -> dict[str, Scores]:
    """Segment and score every case under every variant (one read of each case).

    ``result["plain"]`` equals :func:`score_cases` on the same arguments;
    ``{name: s.to_record() for name, s in result.items()}`` is the JSON record of a fold (what
    ``cv`` can write as ``test_robustness.json``).

    Args:
        seg: the model with its pre- and post-processing.
        prepared: the prepared dataset.
        case_ids: cases to score.
        originals: original cases by id (:func:`~covseg.evaluation.cases.open_labelled`).
        variants: names of :data:`~covseg.evaluation.robustness.VARIANTS` (``plain`` is
            always scored).
        on_case: optional ``callable(variant, case, rule, pred)`` after each case and variant,
            as ``score_cases``' ``on_case`` with the variant's name first.

    Returns:
        :class:`Scores` by variant name, ``plain`` first.

    Raises:
        CovsegError: an unknown variant name (before any work).
        DataError: slices that fit no intensity rule.
    """
    names = check_variants(variants)
    scores = {name: Scores(postprocessing=to_dict(seg.post)) for name in names}
    for case in labelled_cases(prepared, case_ids, originals):
        rule = "unit" if case.raw is None else seg.intensity_rule(case.raw, case.source)
        for name in names:
            vcase = variant_case(case, name, rule)
            done = segment_case(seg, vcase)
            scores[name].add(vcase, done.infection, done.lung, done.estimate)
            if on_case is not None:
                on_case(name, vcase, done.rule, done.infection)
    return scores


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    json_out: str | Path | None = None,
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    device: str = "auto",
    tta: bool = False,
    backend: str = "torch",
    robustness: Sequence[str] | None = None,
    framing: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a labelled dataset (see the module docstring).

    Args:
        checkpoint: ``RUN/best.safetensors`` (or ``.json``), or ``"pretrained"``.
        data: a prepared dataset or a raw dataset folder.
        json_out: where to write the result as JSON (optional).
        threshold: probability threshold; default: the checkpoint's chosen one.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        tta: add left-right flip test-time augmentation.
        backend: how the network runs (:data:`~covseg.inference.predict.BACKENDS`).
        robustness: also score these variants of every case
            (:data:`~covseg.evaluation.robustness.VARIANTS`); ``None``: none.
        framing: ``"full"`` or ``"lungs"`` (:mod:`covseg.inference.framing`); ``None``: the
            checkpoint's.

    Returns:
        :meth:`Scores.summary`; with ``robustness``, plus ``"robustness"``:
        :func:`robustness_summary` (``plain`` is the summary
        itself, from the same masks).

    Raises:
        CheckpointError: a missing or damaged checkpoint.
        CovsegError: an unknown variant name, or a ``json_out`` that cannot be written
            (both before any work).
        DataError: unusable data.
    """
    variants = None if robustness is None else check_variants(robustness)
    if json_out is not None:
        _check_writable(Path(json_out))
    model, meta = load_checkpoint(checkpoint)
    if threshold is not None:
        try:
            post = meta.postprocessing.replace(threshold=threshold)
        except ValueError as err:
            raise CovsegError(f"--threshold: {err}") from None
        meta = meta.replace(postprocessing=post)
    seg = Segmenter(
        model,
        meta,
        device=device,
        batch_size=batch_size,
        tta=tta,
        backend=backend,
        framing=framing,
    )
    with tempfile.TemporaryDirectory(prefix="covseg-eval-") as tmp:
        prepared, originals = open_labelled(Path(data), meta.preprocessing, Path(tmp))
        if variants is None:
            result = score_cases(seg, prepared, prepared.case_ids, originals).summary()
        else:
            by_variant = score_variants(seg, prepared, prepared.case_ids, originals, variants)
            result = by_variant["plain"].summary()
            result["robustness"] = robustness_summary(by_variant)
    if json_out is not None:
        write_json(json_out, result)
    return result


def _check_writable(path: Path) -> None:
    """Refuse, before any work, a ``--json`` that could not be written after it."""
    if path.is_dir():
        raise CovsegError(f"{path}: --json is a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # what write_json would create
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CovsegError(f"{path}: --json cannot be written ({parent} is not a writable folder)")


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`evaluate`'s result (rows metrics, columns modes)."""
    modes = [m for m in ("per_slice_mean", "per_volume_mean", "pooled") if m in result]
    lines = [
        f"{result['n_items']} slices, threshold {result['threshold']:.2f}",
        "",
        "| Metric | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(f"{result[k][m]:.4f}" for k in modes) + " |")
    for key in ("hd95_mm", "nsd_3mm"):
        if key in result:
            lines.append(f"| {key} | {result[key]:.4f} |" + " |" * (len(modes) - 1))
    if result.get("by_lesion_size"):
        lines += ["", format_lesion_size_table(result["by_lesion_size"], "By lesion size").rstrip()]
    burden = {"mask volume": result["burden"]} if "burden" in result else {}
    if "burden_expected" in result:
        burden["expected volume"] = result["burden_expected"]
    if burden:
        lines += ["", format_agreement(burden)]
    return "\n".join(lines)


def robustness_summary(scores: Mapping[str, Scores]) -> dict[str, dict[str, Any]]:
    """:meth:`Scores.summary` per variant plus ``ratio_to_plain``: its per-slice-mean Dice over
    that of ``plain`` (NaN where ``plain``'s is 0 or NaN, or ``plain`` is missing).

    Args:
        scores: what :func:`score_variants` returns.

    Returns:
        ``{variant: summary}`` in ``scores``' order.
    """
    out = {name: s.summary() for name, s in scores.items()}
    base = out["plain"]["per_slice_mean"]["dice"] if "plain" in out else float("nan")
    for summary in out.values():
        dice = summary["per_slice_mean"]["dice"]
        ok = base > 0 and not math.isnan(base)
        summary["ratio_to_plain"] = dice / base if ok else float("nan")
    return out


def format_robustness(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`robustness_summary` (one row per variant).

    Args:
        summary: :func:`robustness_summary`'s result.

    Returns:
        The table, without a trailing newline.
    """
    lines = [
        "| Variant | Dice (per slice) | Dice (pooled) | Ratio to plain |",
        "|---|---|---|---|",
    ]
    for name, s in summary.items():
        dice, pooled = s["per_slice_mean"]["dice"], s["pooled"]["dice"]
        lines.append(f"| {name} | {dice:.4f} | {pooled:.4f} | {s['ratio_to_plain']:.3f} |")
    return "\n".join(lines)
