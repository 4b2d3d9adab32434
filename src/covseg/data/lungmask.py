"""Classical lung-mask derivation for datasets that come without lung masks.

Works on normalised ``[0, 1]`` slices, whatever window produced them (HU clipped to
``[-1250, 250]``, or 8-bit pictures windowed for the lungs such as the MedSeg PNGs): thresholds are
chosen per slice by Otsu's method, never fixed grey values.

Per slice:
1. dark = below Otsu's threshold (air and lung) -- the body and soft tissue are above it;
2. dark regions touching the image border are outside air (unless that leaves nothing: a picture
   cropped to the lungs, as in the zenodo20-pseudo slices, has lungs touching the border);
3. small gas pockets are dropped: regions below 1 % of the slice that are much darker than lung
   parenchyma, i.e. close to the darkest air level (trachea, main bronchi, bowel gas) -- lung has
   vessels and partial volume; large ones are kept (a narrow window makes whole lungs black);
4. regions below 0.1 % of the slice are dropped, and of the rest the two largest are kept (both
   lungs, or one region when they touch), plus any region at least half as large as the largest
   (a lung split in two by a fissure or consolidation);
5. holes (vessels, nodules) are filled, the mask is closed to take back juxta-pleural vessels and
   dense infection at the lung edge, and united with the infection mask when given.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_holes

__all__ = ["derive_lung_mask"]


def derive_lung_mask(image01: np.ndarray, infection: np.ndarray | None = None) -> np.ndarray:
    """Derive a binary lung mask from a normalised CT slice or stack of slices.

    Args:
        image01: ``(H, W)`` slice or ``(N, H, W)`` axial slices, float in ``[0, 1]`` (air dark).
        infection: optional infection mask of the same shape; it is added to the lung mask.

    Returns:
        uint8 ``{0, 1}`` mask of ``image01``'s shape.

    Raises:
        ValueError: not 2-D/3-D, or ``infection`` of another shape.
    """
    x = np.asarray(image01, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (N, H, W), got shape {x.shape}")
    if infection is not None and np.shape(infection) != x.shape:
        raise ValueError(f"infection shape {np.shape(infection)} != image shape {x.shape}")
    lung = _lung_slice(x) if x.ndim == 2 else np.stack([_lung_slice(s) for s in x])
    if infection is not None:
        lung |= np.asarray(infection) > 0
    return lung.astype(np.uint8)


def _lung_slice(x: np.ndarray) -> np.ndarray:
    if float(x.max() - x.min()) < 1e-3:
        return np.zeros(x.shape, dtype=bool)
    thr = float(threshold_otsu(x))
    dark = ndi.binary_opening(x < thr, structure=np.ones((3, 3)))
    labels, n = ndi.label(dark)
    if n == 0:
        return np.zeros(x.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = np.setdiff1d(np.arange(1, n + 1), border)
    area = x.size
    sizes = ndi.sum_labels(np.ones_like(x), labels, index=np.arange(1, n + 1))
    if sizes[inside - 1].sum() < 0.005 * area:  # nothing enclosed: a picture cropped to the lungs
        inside = np.arange(1, n + 1)
    air = float(np.percentile(x[dark], 2))  # the darkest air level on this slice
    keep = []
    for lab in inside:
        if sizes[lab - 1] < 0.0005 * area:
            continue
        med = float(np.median(x[labels == lab]))
        # Nearly pure gas: trachea, bronchi, bowel. Only small regions: with a narrow lung window
        # (some MedSeg slices) the whole lung is as dark as air and must not be dropped.
        if med - air < 0.2 * (thr - air) and sizes[lab - 1] < 0.01 * area:
            continue
        keep.append(lab)
    if not keep:
        return np.zeros(x.shape, dtype=bool)
    largest = max(sizes[lab - 1] for lab in keep)
    chosen = [lab for lab in keep if sizes[lab - 1] >= 0.05 * largest]
    lung = np.isin(labels, chosen)
    radius = max(1, round(min(x.shape) / 100))
    pad = radius + 1
    padded = ndi.binary_closing(np.pad(lung, pad), structure=disk(radius))[pad:-pad, pad:-pad]
    # Fill vessels and nodules, not large islands (the heart or liver dome seen through a lung).
    lung = remove_small_holes(padded, max_size=int(0.002 * area))
    return lung
