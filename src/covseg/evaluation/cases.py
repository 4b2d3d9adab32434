"""Labelled cases: the slices of a scan with their truth, read as ``covseg segment`` reads them.

The data may be a prepared dataset or a raw folder (``slices``, ``zenodo20``, ... — prepared on
the fly into a temporary folder with the checkpoint's preprocessing). Each case's ORIGINAL images
are read from the source files (for a prepared dataset: the source recorded in its manifest), so
that the masks can be compared with the original masks at the original resolution. Where the
source files are gone, or a case comes from a stacked volume (medseg ``tr_im``), the prepared
slices stand in (scored at the prepared resolution, with a warning).

:func:`segment_case` segments a case exactly as ``covseg segment`` does (same intensity rule,
resizing, network, post-processing with the lung restriction). :mod:`covseg.evaluation.evaluate`
scores the cases, :mod:`covseg.evaluation.robustness` re-frames them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from covseg.config import Preprocessing
from covseg.data.dataset import SOURCE_SEP, CombinedDataset, PreparedDataset
from covseg.data.geometry import canonical_spacing, volume_to_slices
from covseg.data.io import Image, read_image
from covseg.data.layouts import Case, discover
from covseg.data.prepare import decode_masks, prepare
from covseg.errors import DataError
from covseg.inference.segmenter import Segmenter

__all__ = [
    "LabelledCase",
    "SegmentedCase",
    "labelled_cases",
    "open_labelled",
    "original_cases",
    "segment_case",
]

log = logging.getLogger(__name__)


@dataclass
class LabelledCase:
    """One case to score, in canonical ``(N, H, W)`` slices.

    Attributes:
        id: case id.
        kind: ``"slice"`` or ``"volume"``.
        truth: boolean infection truth.
        spacing: ``(slice_mm, row_mm, col_mm)`` or ``None``.
        raw: original intensities (HU or 8-bit) at the original resolution, or ``None`` where
            only the prepared slices are available.
        images01: the prepared ``(N, S, S)`` slices when ``raw`` is ``None``.
        source: where the slices came from (messages).
        lung: boolean lung truth in the grid of ``truth``, or ``None`` where the mask files have
            no lung labels (prepared slices: the prepared lung mask, expert or derived).
    """

    id: str
    kind: str
    truth: np.ndarray
    spacing: tuple[float, float, float] | None
    raw: np.ndarray | None = None
    images01: np.ndarray | None = None
    source: str = ""
    lung: np.ndarray | None = None

    @property
    def resolution(self) -> str:
        return "prepared" if self.raw is None else "original"


def open_labelled(
    data: Path, pre: Preprocessing, tmp: Path
) -> tuple[PreparedDataset, dict[str, Case]]:
    """The prepared dataset of ``data`` (preparing a raw folder into ``tmp`` with ``pre``'s size
    and intensity rule) and, where its source files exist, its original cases by id."""
    if (data / "manifest.json").exists():
        prepared = PreparedDataset(data)
        params = prepared.manifest.get("params", {})
        size = int(params.get("size", 0))
        if size != pre.size:
            log.warning("%s: prepared at %d px, the model at %d px", data, size, pre.size)
        try:
            _, cases = discover(
                Path(prepared.manifest.get("source", "")),
                prepared.manifest.get("layout", "auto"),
                masks_dir=params.get("masks_dir", "masks"),
                pseudo=params.get("pseudo", False),
                group=params.get("group"),
                include_effusion=params.get("include_effusion", False),
            )
        except DataError as err:
            log.warning("%s: original files unavailable (%s); scoring at %d px", data, err, size)
            cases = []
        return prepared, {c.id: c for c in cases}
    out = prepare(data, tmp / "prepared", size=pre.size, intensity=pre.intensity)
    prepared = PreparedDataset(out)
    _, cases = discover(data, prepared.manifest.get("layout", "auto"))
    return prepared, {c.id: c for c in cases}


def original_cases(
    data: PreparedDataset | CombinedDataset, pre: Preprocessing, tmp: Path
) -> dict[str, Case]:
    """The original cases of a prepared dataset by id (:func:`open_labelled`); of a
    :class:`~covseg.data.dataset.CombinedDataset`, those of every part under the combined ids."""
    if isinstance(data, PreparedDataset):
        return open_labelled(data.root, pre, tmp)[1]
    out: dict[str, Case] = {}
    for name, part in data.parts.items():
        _, cases = open_labelled(part.root, pre, tmp / name)
        out.update({f"{name}{SOURCE_SEP}{k}": v for k, v in cases.items()})
    return out


def _original(
    case: Case, rotate: int
) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray | None] | None:
    """``(raw slices, infection truth, (slice, row, col) mm or None, lung truth or None)`` at
    the original resolution, or ``None`` (stacked volumes, slices of different sizes). The lung
    truth is ``None`` unless every source has lung labels (as ``prepare`` tells expert lungs)."""
    raws, truths, lungs, spacing = [], [], [], None
    for src in case.sources:
        if src.index is not None:
            return None
        img = read_image(src.image)
        lung, inf = decode_masks(src, img, read_image)
        raw, truth = (
            volume_to_slices(img),
            volume_to_slices(Image(inf, img.affine, img.kind, img.path)),
        )
        lung = (
            None if lung is None else volume_to_slices(Image(lung, img.affine, img.kind, img.path))
        )
        if rotate:
            raw, truth = np.rot90(raw, rotate, (1, 2)), np.rot90(truth, rotate, (1, 2))
            lung = None if lung is None else np.rot90(lung, rotate, (1, 2))
        raws.append(np.ascontiguousarray(raw))
        truths.append(np.ascontiguousarray(truth))
        lungs.append(None if lung is None else np.ascontiguousarray(lung))
        sp = canonical_spacing(img)
        if sp is not None:
            row, col = (sp[1], sp[0]) if rotate % 2 else (sp[0], sp[1])
            spacing = (sp[2], row, col)
    if len({r.shape[1:] for r in raws}) != 1:
        return None
    lung_all = None if any(lg is None for lg in lungs) else np.concatenate(lungs)
    return np.concatenate(raws), np.concatenate(truths), spacing, lung_all


def labelled_cases(
    prepared: PreparedDataset | CombinedDataset, case_ids: list[str], originals: dict[str, Case]
) -> Iterator[LabelledCase]:
    """The cases of ``case_ids`` at their original resolution where possible (module
    docstring), one at a time (those of a combined dataset read from their own part, ids kept
    combined)."""
    if isinstance(prepared, CombinedDataset):
        for cid in case_ids:
            prefix, part, local = prepared.resolve(cid)
            own = {local: originals[cid]} if cid in originals else {}
            for case in labelled_cases(part, [local], own):
                yield replace(case, id=prefix + case.id)
        return
    rotate = int(prepared.manifest.get("params", {}).get("rotate", 0) or 0) % 4
    for cid in case_ids:
        rec = prepared.case(cid)
        kind = rec.get("kind", "slice")
        orig = _original(originals[cid], rotate) if cid in originals else None
        if orig is not None and len(orig[0]) == rec["n_slices"]:
            raw, truth, spacing, lung = orig
            yield LabelledCase(
                cid, kind, truth, spacing, raw=raw, source=rec.get("source", ""), lung=lung
            )
            continue
        arrays = prepared.load(cid)
        spacing = None
        if rec.get("spacing_mm") and rec.get("slice_thickness_mm"):
            spacing = (float(rec["slice_thickness_mm"]), *map(float, rec["spacing_mm"]))
        yield LabelledCase(
            cid,
            kind,
            arrays["infection"].astype(bool),
            spacing,  # type: ignore[arg-type]
            images01=arrays["image"].astype(np.float32),
            source=str(prepared.root / rec["file"]),
            lung=arrays["lung"].astype(bool),
        )


class SegmentedCase(NamedTuple):
    """What ``covseg segment`` makes of a case's slices (:func:`segment_case`)."""

    rule: str | None
    infection: np.ndarray
    lung: np.ndarray | None
    estimate: Any


def segment_case(seg: Segmenter, case: LabelledCase) -> SegmentedCase:
    """The masks that ``covseg segment`` writes for a case's slices.

    Args:
        seg: the model with its pre- and post-processing.
        case: the case; ``case.raw`` goes through :meth:`Segmenter.intensity_rule` and
            :meth:`Segmenter.segment_slices`, ``case.images01`` (prepared slices) through
            :meth:`Segmenter.segment_prepared`.

    Returns:
        :class:`SegmentedCase`: the intensity rule applied to ``case.raw`` (``None`` for
        prepared slices), boolean ``(N, H, W)`` infection and lungs in the grid of
        ``case.truth``, and a calibrated model's
        :class:`~covseg.inference.burden.BurdenEstimate` (``None`` otherwise, and for prepared
        slices).

    Raises:
        DataError: slices that fit no intensity rule, or a case with neither ``raw`` nor
            ``images01``.
    """
    if case.raw is not None:
        rule = seg.intensity_rule(case.raw, case.source)
        lung = np.zeros(case.raw.shape, dtype=np.uint8)
        pred = np.zeros(case.raw.shape, dtype=np.uint8)
        estimate = seg.segment_slices(case.raw, lung, pred, rule=rule)
        return SegmentedCase(rule, pred.astype(bool), lung.astype(bool), estimate)
    if case.images01 is None:
        raise DataError(f"{case.source or case.id}: a case without slices")
    masks = seg.segment_prepared(case.images01)
    return SegmentedCase(None, masks.infection, masks.lung, None)
