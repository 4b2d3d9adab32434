"""Synthetic chest-CT phantoms with lung and infection labels, and datasets written from them.

A phantom is learnable but not trivial: lungs (about -850 HU) with bright vessel-like branches in a
soft-tissue body (+40 HU) in air (-1000 HU), a mediastinum between the lungs, ground-glass
infection (-500..-300 HU, textured) and consolidation (about 0 HU) of varied size, and noise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from covseg.data.preprocess import HU_WINDOW
from covseg.errors import DataError

__all__ = ["make_phantom", "write_synthetic_dataset"]

log = logging.getLogger(__name__)


def make_phantom(
    seed: int, shape: tuple[int, int, int] = (128, 128, 24)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A deterministic CT phantom.

    Args:
        seed: random seed; the same seed gives the same phantom.
        shape: ``(X, Y, Z)``; X runs patient right -> left... in voxel order of an LPS-like
            display: axis 0 = columns (patient right -> left), axis 1 = rows (anterior ->
            posterior), axis 2 = slices (inferior -> superior).

    Returns:
        ``(hu, lung, infection)``: int16 HU ``(X, Y, Z)``; uint8 lung labels (1 left, 2 right);
        uint8 infection ``{0, 1}`` (always inside the lungs).
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x = (np.arange(nx) + 0.5) / nx * 2 - 1  # -1 (patient right) .. 1 (patient left)
    y = (np.arange(ny) + 0.5) / ny * 2 - 1  # -1 anterior .. 1 posterior
    z = (np.arange(nz) + 0.5) / nz  # 0 inferior .. 1 superior
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    ax, ay = 0.85 + 0.05 * rng.uniform(-1, 1), 0.62 + 0.05 * rng.uniform(-1, 1)
    body = (X / ax) ** 2 + (Y / ay) ** 2 <= 1
    hu = np.full(shape, -1000.0)
    hu[body] = 40.0
    # Lungs: ellipsoids narrowing to the apex, with a bump of the diaphragm at the bottom.
    taper = np.clip(1.1 - 0.5 * Z, 0.4, 1.0) * np.clip(Z * 5, 0.3, 1.0)
    lung = np.zeros(shape, dtype=np.uint8)
    for label, side in ((2, -1), (1, 1)):  # 2 = right lung (patient right), 1 = left
        cx = side * (0.38 + 0.04 * rng.uniform(-1, 1))
        rx, ry = 0.28 * taper, 0.42 * taper
        inside = ((X - cx) / np.maximum(rx, 1e-3)) ** 2 + ((Y - 0.05) / np.maximum(ry, 1e-3)) ** 2
        lung[(inside <= 1) & body] = label
    hu[lung > 0] = -850.0
    # Vessels: thin bright tubes from the hilum, smoothed random walks.
    vessels = np.zeros(shape, dtype=bool)
    for _ in range(10):
        p = np.array([rng.uniform(0.3, 0.7) * nx, rng.uniform(0.35, 0.65) * ny, rng.uniform(0, nz)])
        d = rng.normal(size=3)
        d[2] *= 0.2
        for _ in range(nx):
            d = d / np.linalg.norm(d) + 0.3 * rng.normal(size=3)
            d[2] *= 0.3
            p = p + d / np.linalg.norm(d)
            i, j, k = int(p[0]), int(p[1]), int(p[2])
            if not (0 <= i < nx and 0 <= j < ny and 0 <= k < nz):
                break
            vessels[i, j, k] = True
    vessels = ndi.binary_dilation(vessels, iterations=1) & (lung > 0)
    hu[vessels] = 30.0 + rng.normal(0, 20, size=int(vessels.sum()))
    # Infection: blobs inside the lungs; ground glass (textured) or consolidation.
    infection = np.zeros(shape, dtype=np.uint8)
    lung_idx = np.argwhere(lung > 0)
    n_blobs = int(rng.integers(1, 5)) if len(lung_idx) else 0
    for _ in range(n_blobs):
        c = lung_idx[rng.integers(len(lung_idx))]
        r = rng.uniform(0.04, 0.14) * nx
        dist = (np.indices(shape).T - c).T.astype(np.float32) * [
            [[[1]]],
            [[[1]]],
            [[[nx / nz / 3]]],
        ]
        blob = (np.sqrt((dist**2).sum(0)) <= r * (1 + 0.3 * rng.uniform(-1, 1))) & (lung > 0)
        if rng.uniform() < 0.7:  # ground glass
            base = rng.uniform(-500, -300)
            texture = ndi.gaussian_filter(rng.normal(0, 60, size=shape), 1.0)
            hu[blob] = base + texture[blob]
        else:  # consolidation
            hu[blob] = rng.uniform(-40, 30)
        infection[blob] = 1
    hu = ndi.gaussian_filter(hu, sigma=(0.6, 0.6, 0.3))
    hu += rng.normal(0, 25, size=shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), lung, infection


# Voxel axes of a phantom are (right->left, anterior->posterior, inferior->superior): in RAS that
# is (-x, -y, +z). A real, non-identity affine: 0.8 x 0.8 x 5 mm with an offset.
def _phantom_affine(shape: tuple[int, int, int], spacing=(0.8, 0.8, 5.0)) -> np.ndarray:
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [spacing[0] * shape[0] / 2, spacing[1] * shape[1] / 2, -spacing[2] * shape[2] / 2]
    return aff


def write_synthetic_dataset(
    out: str | Path,
    layout: str = "zenodo20",
    cases: int = 6,
    seed: int = 0,
    *,
    slices: int = 16,
    size: int = 128,
) -> Path:
    """Write phantoms in a dataset layout that ``covseg prepare`` reads.

    ``zenodo20``: ``COVID-19-CT-Seg_20cases/coronacases_NNN.nii.gz`` (int16 HU) and, as the last
    case when ``cases >= 2``, one ``radiopaedia_org_covid-19-pneumonia-...-dcm.nii.gz`` stored
    windowed to [-1250, 250] and scaled to 0..255 uint8 (like the real Radiopaedia volumes), with
    ``Lung_Mask/``, ``Infection_Mask/`` and ``Lung_and_Infection_Mask/``.
    ``slices``: ``images/case<NN>_<k>.png`` 8-bit pictures (HU window) and ``masks/`` {0, 255}.

    Args:
        out: output folder (created).
        layout: ``"zenodo20"`` or ``"slices"``.
        cases: number of phantoms (patients).
        seed: base seed; case ``i`` uses ``seed * 1000 + i``.
        slices: slices per phantom.
        size: in-plane side of each phantom.

    Returns:
        ``out``.

    Raises:
        DataError: unknown layout or non-positive counts.
    """
    out = Path(out)
    if cases < 1 or slices < 1 or size < 16:
        raise DataError(f"{out}: need cases >= 1, slices >= 1, size >= 16")
    if layout == "zenodo20":
        _write_zenodo20(out, cases, seed, slices, size)
    elif layout == "slices":
        _write_slices(out, cases, seed, slices, size)
    else:
        raise DataError(f"{out}: synthetic layout must be zenodo20 or slices, got {layout!r}")
    log.info("%s: %d synthetic %s cases of %dx%dx%d", out, cases, layout, size, size, slices)
    return out


def _write_zenodo20(out: Path, cases: int, seed: int, slices: int, size: int) -> None:
    import nibabel as nib

    dirs = {
        k: out / k
        for k in (
            "COVID-19-CT-Seg_20cases",
            "Lung_Mask",
            "Infection_Mask",
            "Lung_and_Infection_Mask",
        )
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    shape = (size, size, slices)
    aff = _phantom_affine(shape)
    for i in range(cases):
        hu, lung, inf = make_phantom(seed * 1000 + i, shape)
        radiopaedia = cases >= 2 and i == cases - 1
        if radiopaedia:
            img_name, mask_name = (
                f"radiopaedia_org_covid-19-pneumonia-{i}_8{i:04d}_0-dcm.nii.gz",
                f"radiopaedia_{i}_8{i:04d}_0.nii.gz",
            )
            lo, hi = HU_WINDOW
            data = np.round((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
        else:
            img_name = mask_name = f"coronacases_{i + 1:03d}.nii.gz"
            data = hu
        nib.save(nib.Nifti1Image(data, aff), str(dirs["COVID-19-CT-Seg_20cases"] / img_name))
        both = np.where(inf > 0, 3, lung).astype(np.uint8)
        for key, arr in (
            ("Lung_Mask", lung),
            ("Infection_Mask", inf),
            ("Lung_and_Infection_Mask", both),
        ):
            nib.save(nib.Nifti1Image(arr.astype(np.uint8), aff), str(dirs[key] / mask_name))


def _write_slices(out: Path, cases: int, seed: int, slices: int, size: int) -> None:
    from PIL import Image as PILImage

    from covseg.data.preprocess import normalize_intensity

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        hu, _, inf = make_phantom(seed * 1000 + i, (size, size, slices))
        # Display orientation: rows = axis 1 (anterior->posterior), cols = axis 0.
        img = np.round(normalize_intensity(hu, "hu") * 255).astype(np.uint8).transpose(2, 1, 0)
        msk = (inf.transpose(2, 1, 0) > 0).astype(np.uint8) * 255
        for k in range(slices):
            name = f"case{i:02d}_{k:03d}.png"
            PILImage.fromarray(img[k]).save(out / "images" / name)
            PILImage.fromarray(msk[k]).save(out / "masks" / name)
