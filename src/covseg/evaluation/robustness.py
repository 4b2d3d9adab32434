"""Robustness of what ``covseg segment`` writes to other framings and windows of the same scans.

Each labelled test case is re-framed or re-windowed by a named, deterministic variant and
segmented through the normal :class:`~covseg.inference.segmenter.Segmenter` path
(:func:`~covseg.evaluation.cases.segment_case`: the checkpoint's intensity rule told from the
transformed values, resizing, network, post-processing); the masks are scored against the truth
carried through the same transform, at the original resolution
(:func:`~covseg.evaluation.evaluate.score_variants`). This module holds the variants.

Variants (:data:`VARIANTS`, in table order); ``rule`` is the intensity rule of the input
(:data:`~covseg.config.INTENSITY_RULES`; prepared slices are ``"unit"``):

- ``plain``: the slices as read.
- ``crop_lungs``: the smallest box of the slice's aspect ratio that holds the truth lungs and
  infection of the whole case (a volume; a case of 2-D pictures: of each picture) plus 8 % of
  the side on each border, resized back to the slice size (a tighter field of view; pixels
  stay square). Without lung truth the lungs are
  :func:`~covseg.data.lungmask.derive_lung_mask`'s estimate (what ``prepare`` uses for such
  datasets) united with the infection truth.
- ``zoom_out``: the slice shrunk to 0.6x and padded back with air (-1024 HU, 0 for ``hu1024``,
  the slice's minimum for 8-bit and unit input); truth padded with 0.
- ``window``: HU input becomes an 8-bit picture in the lung window W1500/L-600 (the model then
  reads it with its 8-bit rule; clipping HU to another window would change nothing, as the HU
  rule clips to [-1250, 250] itself); 8-bit input gets a narrower window, the values in
  [32, 223] stretched to the full range.
- ``gamma_0.7``, ``gamma_1.4``: a display gamma; HU input becomes the 8-bit picture in the
  model's own window (:data:`~covseg.data.preprocess.HU_WINDOW`) with that gamma.
- ``clahe``: contrast-limited adaptive histogram equalisation per slice
  (``skimage.exposure.equalize_adapthist``), on that 8-bit picture for HU input.

Geometric variants resize images with :func:`~covseg.data.preprocess.resize_back` (bilinear,
anti-aliased when shrinking) and masks by nearest neighbour, as ``prepare`` does. Images keep
their dtype and value range (integers rounded), except that the 8-bit pictures of HU input are
``uint8``. Surface metrics use the pixel spacing of the transformed slices.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from covseg.config import ROBUSTNESS_VARIANTS
from covseg.data.lungmask import derive_lung_mask
from covseg.data.preprocess import HU_WINDOW, normalize_intensity, resize_back
from covseg.errors import CovsegError, DataError
from covseg.evaluation.cases import LabelledCase
from covseg.inference.framing import crop_box

__all__ = [
    "VARIANTS",
    "Reframed",
    "check_variants",
    "clahe",
    "crop_box",
    "crop_lungs",
    "gamma",
    "plain",
    "variant_case",
    "window",
    "zoom_out",
]

log = logging.getLogger(__name__)

#: The lung window (W1500/L-600) of the ``window`` variant of HU input, in HU.
LUNG_WINDOW = (-1350.0, 150.0)
#: The narrower window of the ``window`` variant of 8-bit input, in 8-bit values.
NARROW_WINDOW = (32.0, 223.0)
#: Slices resampled per call (bounds the float32 copies of large scans).
_CHUNK = 32


@dataclass(frozen=True)
class Reframed:
    """Slices and truth after a variant, in one grid.

    Attributes:
        raw: ``(N, H, W)`` intensities, the input's dtype and value convention (``uint8`` for the
            8-bit pictures of HU input).
        truth: ``(N, H, W)`` boolean infection truth.
        lung: ``(N, H, W)`` boolean lung truth, or ``None`` when the input had none.
        pixel_scale: ``(row, col)`` factors from the input's to the output's mm per pixel.
    """

    raw: np.ndarray
    truth: np.ndarray
    lung: np.ndarray | None
    pixel_scale: tuple[float, float] = (1.0, 1.0)


# ------------------------------------------------------------------------------ geometry
def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values back to ``dtype``; integers rounded and clipped to the dtype's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _resample(
    x: np.ndarray, box: tuple[int, int, int, int], shape_hw: tuple[int, int], *, mask: bool
) -> np.ndarray:
    """``x[:, r0:r1, c0:c1]`` resized to ``shape_hw`` (masks by nearest neighbour), chunked."""
    r0, r1, c0, c1 = box
    out = np.empty((len(x), *shape_hw), dtype=bool if mask else x.dtype)
    for i in range(0, len(x), _CHUNK):
        part = x[i : i + _CHUNK, r0:r1, c0:c1]
        if mask:
            out[i : i + _CHUNK] = resize_back(part.astype(np.uint8), shape_hw, mask=True) > 0
        else:
            part = part.astype(np.float32)
            out[i : i + _CHUNK] = _cast(resize_back(part, shape_hw, mask=False), x.dtype)
    return out


# ----------------------------------------------------------------------------- variants
def plain(raw: np.ndarray, truth: np.ndarray, lung: np.ndarray | None, rule: str) -> Reframed:
    """The slices as read.

    Args:
        raw: ``(N, H, W)`` intensities as read (HU, 8-bit, or prepared ``[0, 1]``).
        truth: ``(N, H, W)`` boolean infection truth.
        lung: ``(N, H, W)`` boolean lung truth or ``None``.
        rule: the intensity rule of ``raw``.

    Returns:
        The same arrays (no copy).
    """
    return Reframed(raw, truth, lung)


def crop_lungs(
    raw: np.ndarray,
    truth: np.ndarray,
    lung: np.ndarray | None,
    rule: str,
    *,
    margin: float = 0.08,
) -> Reframed:
    """The slices cropped to the lungs (:func:`crop_box`) and resized back to ``(H, W)``.

    Args:
        raw: ``(N, H, W)`` intensities as read.
        truth: ``(N, H, W)`` boolean infection truth.
        lung: ``(N, H, W)`` boolean lung truth; ``None``: derived from ``raw``
            (:func:`~covseg.data.lungmask.derive_lung_mask`), united with ``truth``.
        rule: the intensity rule of ``raw``.
        margin: fraction of the side added on each border.

    Returns:
        :class:`Reframed` of ``raw``'s shape and dtype; ``pixel_scale`` below 1.
    """
    if lung is None:
        log.debug("crop_lungs: no lung truth; box of the derived lungs and the infection")
        region = derive_lung_mask(normalize_intensity(raw, rule), truth) > 0
    else:
        region = lung | truth
    r0, r1, c0, c1 = crop_box(region, margin)
    h, w = raw.shape[1:]
    box = (r0, r1, c0, c1)
    return Reframed(
        _resample(raw, box, (h, w), mask=False),
        _resample(truth, box, (h, w), mask=True),
        None if lung is None else _resample(lung, box, (h, w), mask=True),
        ((r1 - r0) / h, (c1 - c0) / w),
    )


def _air(raw: np.ndarray, rule: str) -> np.ndarray:
    """Per slice, the value to pad with: air (-1024 HU), else the slice's minimum."""
    if rule in ("hu", "hu1024"):
        return _cast(np.full(len(raw), 0.0 if rule == "hu1024" else -1024.0), raw.dtype)
    return raw.min(axis=(1, 2))


def zoom_out(
    raw: np.ndarray,
    truth: np.ndarray,
    lung: np.ndarray | None,
    rule: str,
    *,
    factor: float = 0.6,
) -> Reframed:
    """The slices shrunk by ``factor`` and centred in a frame of air of the original size.

    Args:
        raw: ``(N, H, W)`` intensities as read.
        truth: ``(N, H, W)`` boolean infection truth (padded with 0).
        lung: ``(N, H, W)`` boolean lung truth or ``None``.
        rule: the intensity rule of ``raw`` (the air value: -1024 HU, else the slice minimum).
        factor: the scale, in ``(0, 1]``.

    Returns:
        :class:`Reframed` of ``raw``'s shape and dtype; ``pixel_scale`` about ``1 / factor``.

    Raises:
        ValueError: ``factor`` outside ``(0, 1]``.
    """
    if not 0 < factor <= 1:
        raise ValueError(f"zoom_out: factor must be in (0, 1], got {factor}")
    h, w = raw.shape[1:]
    sh, sw = max(1, round(factor * h)), max(1, round(factor * w))
    top, left = (h - sh) // 2, (w - sw) // 2
    whole = (0, h, 0, w)

    def pad(x: np.ndarray, fill: np.ndarray | int, mask: bool) -> np.ndarray:
        out = np.empty_like(x, dtype=bool if mask else x.dtype)
        out[...] = np.asarray(fill).reshape(-1, 1, 1) if not mask else False
        out[:, top : top + sh, left : left + sw] = _resample(x, whole, (sh, sw), mask=mask)
        return out

    return Reframed(
        pad(raw, _air(raw, rule), mask=False),
        pad(truth, 0, mask=True),
        None if lung is None else pad(lung, 0, mask=True),
        (h / sh, w / sw),
    )


def _display(raw: np.ndarray, rule: str, hu_window: tuple[float, float]) -> np.ndarray:
    """Float32 ``[0, 1]`` display values: HU through ``hu_window``, 8-bit and unit as they are."""
    if rule in ("hu", "hu1024"):
        lo, hi = hu_window
        x = raw.astype(np.float32) - (1024.0 if rule == "hu1024" else 0.0)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return normalize_intensity(raw, rule)


def _picture(d: np.ndarray, raw: np.ndarray, rule: str) -> np.ndarray:
    """Display values back to pictures: ``uint8`` for HU input, else ``raw``'s scale and dtype."""
    if rule in ("hu", "hu1024"):
        return _cast(255.0 * d, np.dtype(np.uint8))
    return _cast(d * (1.0 if rule == "unit" else 255.0), raw.dtype)


def window(raw: np.ndarray, truth: np.ndarray, lung: np.ndarray | None, rule: str) -> Reframed:
    """Another window: HU -> 8-bit picture in :data:`LUNG_WINDOW`; 8-bit (and unit) values in
    :data:`NARROW_WINDOW` stretched to the full range.

    Args:
        raw: ``(N, H, W)`` intensities as read.
        truth: ``(N, H, W)`` boolean infection truth (unchanged).
        lung: ``(N, H, W)`` boolean lung truth or ``None`` (unchanged).
        rule: the intensity rule of ``raw``.

    Returns:
        :class:`Reframed`; ``raw`` is ``uint8`` for HU input.
    """
    d = _display(raw, rule, LUNG_WINDOW)
    if rule not in ("hu", "hu1024"):
        lo, hi = (v / 255.0 for v in NARROW_WINDOW)
        d = np.clip((d - lo) / (hi - lo), 0.0, 1.0)
    return Reframed(_picture(d, raw, rule), truth, lung)


def gamma(
    raw: np.ndarray, truth: np.ndarray, lung: np.ndarray | None, rule: str, *, value: float
) -> Reframed:
    """A display gamma ``d ** value`` (HU: on the 8-bit picture in the model's window).

    Args:
        raw: ``(N, H, W)`` intensities as read.
        truth: ``(N, H, W)`` boolean infection truth (unchanged).
        lung: ``(N, H, W)`` boolean lung truth or ``None`` (unchanged).
        rule: the intensity rule of ``raw``.
        value: the exponent (``< 1`` brightens).

    Returns:
        :class:`Reframed`; ``raw`` is ``uint8`` for HU input.
    """
    d = _display(raw, rule, HU_WINDOW) ** np.float32(value)
    return Reframed(_picture(d, raw, rule), truth, lung)


def clahe(raw: np.ndarray, truth: np.ndarray, lung: np.ndarray | None, rule: str) -> Reframed:
    """Adaptive histogram equalisation per slice (skimage defaults; HU: on the 8-bit picture in
    the model's window).

    Args:
        raw: ``(N, H, W)`` intensities as read.
        truth: ``(N, H, W)`` boolean infection truth (unchanged).
        lung: ``(N, H, W)`` boolean lung truth or ``None`` (unchanged).
        rule: the intensity rule of ``raw``.

    Returns:
        :class:`Reframed`; ``raw`` is ``uint8`` for HU input.
    """
    from skimage.exposure import equalize_adapthist

    d = _display(raw, rule, HU_WINDOW)
    # a constant slice has nothing to equalise (and skimage would divide by its zero range)
    eq = [s if np.ptp(s) == 0 else equalize_adapthist(s).astype(np.float32) for s in d]
    return Reframed(_picture(np.stack(eq), raw, rule), truth, lung)


#: ``variant(raw, truth, lung, rule)``, as :func:`plain`.
Variant = Callable[..., Reframed]

#: The variants by name (:data:`~covseg.config.ROBUSTNESS_VARIANTS`, in table order; module
#: docstring).
VARIANTS: dict[str, Variant] = dict(
    zip(
        ROBUSTNESS_VARIANTS,
        (
            plain,
            crop_lungs,
            zoom_out,
            window,
            functools.partial(gamma, value=0.7),
            functools.partial(gamma, value=1.4),
            clahe,
        ),
        strict=True,
    )
)


def check_variants(names: Sequence[str]) -> tuple[str, ...]:
    """Validated variant names, ``plain`` first (the ratios need it), each once.

    Args:
        names: names of :data:`VARIANTS`.

    Returns:
        The names, ``"plain"`` added first where missing.

    Raises:
        CovsegError: an unknown name.
    """
    for name in names:
        if name not in VARIANTS:
            raise CovsegError(
                f"unknown robustness variant {name!r} (choose from {', '.join(VARIANTS)})"
            )
    return tuple(dict.fromkeys(["plain", *names]))


def variant_case(case: LabelledCase, name: str, rule: str) -> LabelledCase:
    """A case through variant ``name``: slices, truth, lungs and pixel spacing transformed.

    Args:
        case: the case as :func:`~covseg.evaluation.cases.labelled_cases` yields it.
        name: a name of :data:`VARIANTS`.
        rule: the intensity rule of ``case.raw`` (``"unit"`` for prepared slices).

    Returns:
        ``case`` itself for ``plain``, else a new case (prepared slices stay prepared slices).

    Raises:
        CovsegError: an unknown name.
    """
    check_variants([name])
    if name == "plain":
        return case
    slices = case.raw if case.raw is not None else case.images01
    if slices is None:
        raise DataError(f"{case.source or case.id}: a case without slices")
    if name == "crop_lungs" and case.kind == "slice" and len(slices) > 1:
        # a set of 2-D pictures (not a volume): each picture cropped to its own lungs, the
        # framing of lung-cropped slice collections
        parts = [
            crop_lungs(
                slices[k : k + 1],
                case.truth[k : k + 1],
                None if case.lung is None else case.lung[k : k + 1],
                rule,
            )
            for k in range(len(slices))
        ]
        out = Reframed(
            np.concatenate([p.raw for p in parts]),
            np.concatenate([p.truth for p in parts]),
            None if case.lung is None else np.concatenate([p.lung for p in parts]),
        )
    else:
        out = VARIANTS[name](slices, case.truth, case.lung, rule)
    spacing = case.spacing
    if spacing is not None:
        spacing = (spacing[0], spacing[1] * out.pixel_scale[0], spacing[2] * out.pixel_scale[1])
    images = {"raw": out.raw} if case.raw is not None else {"images01": out.raw}
    return dataclasses.replace(case, truth=out.truth, lung=out.lung, spacing=spacing, **images)
