"""Intensity rules and resizing of canonical slices (orientation: :mod:`covseg.data.geometry`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from covseg.config import INTENSITY_RULES
from covseg.errors import DataError

__all__ = [
    "HU_WINDOW",
    "INTENSITY_RULES",
    "detect_intensity_rule",
    "normalize_intensity",
    "resize_back",
    "resize_slices",
]

HU_WINDOW = (-1250.0, 250.0)
"""The window that maps HU to [0, 1]; the Zenodo Radiopaedia volumes are stored in this window."""

#: Stored CT values below this are air or lung; a HU scan without any is not a chest CT in HU.
_NO_AIR_HU = -100.0
#: Air or lung in HU (air -1000, lung about -850): a chest CT always shows some, outside the body
#: or in the lungs. A volume beyond the 8-bit range without any (an MR series, a float map in
#: [0, 800]) is refused rather than read as HU. (Soft tissue is not required: a scan of air, or
#: of a phantom, is still CT; without air, the values are not HU.)
_AIR_HU = -400.0


def detect_intensity_rule(array: np.ndarray) -> str:
    """Tell Hounsfield units from 8-bit windowed intensities and from floats in ``[0, 1]``.

    ``"hu"``: any value below -200 or above 300 (air is about -1000 HU, so every CT slice that
    shows air outside the body is caught; bone is above 300), provided the values look like a
    chest CT: some air or lung (a value at or below -400). ``"uint8"``: all values in
    ``[0, 255]`` otherwise (8-bit pictures, windowed volumes such as the Zenodo Radiopaedia ones).
    ``"unit"`` (floats already in ``[0, 1]``) is never guessed: the window they were scaled by
    is unknown.

    Args:
        array: an image of any shape.

    Returns:
        ``"hu"`` or ``"uint8"``.

    Raises:
        DataError: values in no range (e.g. small negative floats), floats in ``[0, 1]``, a
            range above 300 without anything below -100 (no air or lung: DICOM stored values
            without the rescale intercept, ``HU + 1024``, look so), or values beyond the 8-bit
            range without air or lung (not a CT in HU: MR, a float map); the message names
            ``--intensity``, which forces a rule.
    """
    lo, hi = float(np.min(array)), float(np.max(array))
    if lo < -200 or hi > 300:
        if lo >= _NO_AIR_HU and hi > 1000:
            raise DataError(
                f"values in [{lo:g}, {hi:g}] hold no air or lung (nothing below "
                f"{_NO_AIR_HU:g} HU): stored values without the rescale intercept (HU + 1024)? "
                "pass --intensity hu1024 if so, or --intensity hu if they are HU"
            )
        if lo > _AIR_HU:
            raise DataError(
                f"values in [{lo:g}, {hi:g}] do not look like a chest CT in HU: no air or lung "
                f"(nothing at or below {_AIR_HU:g}); pass --intensity hu to segment them as HU "
                "anyway (or another --intensity rule)"
            )
        return "hu"
    if lo >= 0 and hi <= 1 and hi > 0 and np.issubdtype(np.asarray(array).dtype, np.floating):
        raise DataError(
            f"float values in [{lo:g}, {hi:g}]: a scan already scaled, by an unknown window; "
            "give the HU volume, or pass --intensity unit if 0..1 spans the 8-bit pictures' "
            "window (HU -1250..250)"
        )
    if lo >= 0 and hi <= 255:
        return "uint8"
    raise DataError(
        f"cannot tell the intensity rule from the value range [{lo:g}, {hi:g}]; "
        f"pass --intensity with one of {', '.join(INTENSITY_RULES)}"
    )


def normalize_intensity(array: np.ndarray, rule: str) -> np.ndarray:
    """Map an image to float32 in ``[0, 1]``.

    Args:
        array: any shape.
        rule: ``"hu"``: clip to :data:`HU_WINDOW` ``[-1250, 250]`` then scale linearly;
            ``"hu1024"``: the same after subtracting 1024; ``"uint8"``: divide by 255
            (clipped); ``"unit"``: clip to ``[0, 1]``.

    Returns:
        float32 array of the same shape, values in ``[0, 1]``.

    Raises:
        ValueError: unknown rule.
    """
    x = np.asarray(array, dtype=np.float32)
    if rule in ("hu", "hu1024"):
        lo, hi = HU_WINDOW
        if rule == "hu1024":
            lo, hi = lo + 1024.0, hi + 1024.0
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if rule == "uint8":
        return np.clip(x / 255.0, 0.0, 1.0).astype(np.float32)
    if rule == "unit":
        return np.clip(x, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown intensity rule {rule!r} (expected one of {INTENSITY_RULES})")


def _interpolate(x: np.ndarray, size: tuple[int, int], mask: bool) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected (N, H, W), got shape {x.shape}")
    if x.shape[1:] == tuple(size):
        return x.copy()
    if mask:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
        out = F.interpolate(t, size=size, mode="nearest-exact")
        return out[:, 0].numpy().astype(x.dtype)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy()


def resize_slices(x: np.ndarray, size: int, *, mask: bool) -> np.ndarray:
    """Resize slices to a square side.

    Args:
        x: ``(N, H, W)``.
        size: output side length.
        mask: ``True`` for label masks (nearest neighbour, labels kept), ``False`` for images
            (bilinear with anti-aliasing when shrinking).

    Returns:
        ``(N, size, size)``; float32 for images, ``x``'s dtype for masks.
    """
    return _interpolate(x, (size, size), mask)


def resize_back(x: np.ndarray, shape_hw: tuple[int, int], *, mask: bool) -> np.ndarray:
    """Inverse of :func:`resize_slices`: ``(N, S, S)`` -> ``(N, H, W)``.

    Args:
        x: ``(N, S, S)`` images (probabilities) or masks.
        shape_hw: the original ``(H, W)``.
        mask: nearest neighbour for masks, bilinear for images/probabilities.

    Returns:
        ``(N, H, W)``.
    """
    return _interpolate(x, (int(shape_hw[0]), int(shape_hw[1])), mask)
