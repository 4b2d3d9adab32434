"""NIfTI volumes (``.nii``, ``.nii.gz``) through nibabel: read with every check that needs no
voxel done on the header first (voxel type, dimensions, affine and voxel size, the memory budget,
the claimed data size against the file), and label masks written back with the input's own
header and stored shape.

Voxel order: ``(X, Y, Z)`` as nibabel returns it, the affine mapping voxel indices to world RAS
millimetres; trailing singleton axes (``(X, Y, Z, 1)``) are dropped and recorded in
:attr:`~covseg.data.io.common.Image.disk_shape`.

Units: the header's spatial unit (``xyzt_units``) is honoured: metres and micrometres are
converted to millimetres in :attr:`~covseg.data.io.common.Image.affine` (so volumes in mL are
right), and refused when the converted voxel size is no CT's (then the unit code is wrong, and
converting would be unsafe); unit code 0 ("unknown", what nibabel writes by default) keeps the
common assumption of millimetres. Masks are written back with the input's own header and
affine, in its own units.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.io.common import (
    Image,
    check_affine,
    check_size,
    check_values,
    is_nifti,
    quiet_reading,
    stat_input,
)
from covseg.errors import DataError

__all__ = [
    "GZIP_MAX_RATIO",
    "PLAUSIBLE_VOXEL_MM",
    "nifti_shape",
    "read_nifti",
    "write_nifti_labels",
]

#: Deflate cannot expand data more than ~1032:1, so a ``.nii.gz`` whose header claims more than
#: this many times the compressed size is truncated or forged (checked before decompressing).
GZIP_MAX_RATIO = 1032
#: ``xyzt_units`` spatial code -> (name, millimetres per unit); 0 is "unknown", taken as mm.
_MM_PER_UNIT = {0: ("unknown", 1.0), 1: ("m", 1000.0), 2: ("mm", 1.0), 3: ("µm", 0.001)}
#: Voxel sides (mm) a CT may have once a metre or micrometre header is converted; outside, the
#: unit code is taken to be wrong and the file is refused rather than measured 10**9 times off.
PLAUSIBLE_VOXEL_MM = (0.01, 100.0)


def nifti_shape(path: str | Path) -> tuple[int, ...]:
    """The 3-D shape of a NIfTI file from its header alone, with every check of
    :func:`~covseg.data.io.read_image` that needs no voxel (file type, dimensions, geometry,
    claimed size).

    Raises:
        DataError: as :func:`~covseg.data.io.read_image`.
    """
    path = Path(path)
    st = stat_input(path)
    if not stat.S_ISREG(st.st_mode) or not is_nifti(path):
        raise DataError(f"{path}: not a NIfTI file")
    return _open_nifti(path, st.st_size)[2]


def read_nifti(path: Path, file_size: int) -> Image:
    """Read a NIfTI volume of ``file_size`` bytes (``os.stat``'s, taken by the caller).

    Raises:
        DataError: unreadable or truncated, not a 3-D grey-level volume, degenerate geometry, a
            claimed size beyond the file or the memory budget, invalid scaling.
    """
    img, raw, shape, affine = _open_nifti(path, file_size)
    scaling = _scaling(path, raw)
    with quiet_reading("nibabel.global"):
        try:
            array = np.asarray(img.dataobj.get_unscaled()).reshape(shape)
            if scaling is not None:
                array = rescale(array, *scaling)
        except Exception as err:
            raise DataError(f"{path}: unreadable NIfTI ({type(err).__name__}: {err})") from None
    if scaling is not None:
        check_values(
            array, path, " after scaling by scl_slope={:g}, scl_inter={:g}".format(*scaling)
        )
    disk_shape = tuple(int(n) for n in img.dataobj.shape)
    return Image(array, affine, "nifti", path, img.header, disk_shape)


def _open_nifti(path: Path, file_size: int) -> tuple[Any, Any, tuple[int, ...], np.ndarray]:
    """``(nibabel image, stored header, checked 3-D shape, checked affine)``; no voxel read."""
    import nibabel as nib

    with quiet_reading("nibabel.global"):  # nibabel prints header problems itself
        try:
            img = nib.load(str(path))  # lazy: the header only
            raw = _raw_header(img, path)
        except Exception as err:  # nibabel raises many types for truncated/corrupt files
            raise DataError(f"{path}: unreadable NIfTI ({type(err).__name__}: {err})") from None
    shape, affine = _check_nifti_header(path, img, raw, file_size)
    return img, raw, shape, affine


def _check_nifti_header(
    path: Path, img: Any, raw: Any, file_size: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """Everything that can be refused before a voxel is read: voxel type, dimensions, affine and
    voxel size, the memory budget, and the claimed data size against the file.

    Returns:
        The 3-D shape (trailing singleton axes dropped) and the checked affine.
    """
    proxy = img.dataobj
    disk_shape = tuple(int(n) for n in proxy.shape)
    shape = _drop_trailing_singletons(disk_shape)
    if proxy.dtype.kind not in "iuf":  # RGB24 (structured), complex, ...: not a CT intensity
        raise DataError(f"{path}: unsupported voxel type {proxy.dtype} (expected a grey-level CT)")
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {disk_shape}")
    affine = _in_mm(path, raw, check_affine(path, img.affine))
    _check_pixdim(path, raw)
    # While read: the stored voxels, and the rescaled copy (at most float32) where scaled.
    held = proxy.dtype.itemsize + (4 if _scaling(path, raw) is not None else 0)
    check_size(path, shape, _in_plane(shape, affine), itemsize=held)
    data_end = int(proxy.offset) + math.prod(shape) * proxy.dtype.itemsize
    _check_claimed_bytes(path, data_end, file_size)
    return shape, affine


def _in_mm(path: Path, raw: Any, affine: np.ndarray) -> np.ndarray:
    """``affine`` in millimetres, from the spatial unit of ``xyzt_units`` (see the module
    docstring).

    Raises:
        DataError: an undefined unit code, or a converted voxel side outside
            :data:`PLAUSIBLE_VOXEL_MM`.
    """
    code = int(raw["xyzt_units"]) & 0x07
    if code not in _MM_PER_UNIT:
        raise DataError(
            f"{path}: undefined spatial unit code {code} in xyzt_units (NIfTI: 1 = m, 2 = mm, "
            "3 = µm)"
        )
    name, scale = _MM_PER_UNIT[code]
    if scale == 1.0:
        return affine
    out = affine.copy()
    out[:3, :] *= scale  # voxel axes and origin
    sides = np.linalg.norm(out[:3, :3], axis=0)
    lo, hi = PLAUSIBLE_VOXEL_MM
    if sides.min() < lo or sides.max() > hi:
        shown = " x ".join(f"{v:.3g}" for v in sides)
        raise DataError(
            f"{path}: voxels of {shown} mm once the header's unit ({name}, xyzt_units) is "
            f"applied, outside a CT's {lo:g}..{hi:g} mm: is the unit wrong? (set it to mm)"
        )
    return out


def _raw_header(img: Any, path: Path) -> Any:
    """The header as stored: nibabel's ``img.header`` has the scaling moved into the proxy."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        return img.header_class.from_fileobj(f, check=False)


def _drop_trailing_singletons(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _in_plane(shape: tuple[int, ...], affine: np.ndarray) -> tuple[int, int]:
    """The two sides of an axial slice: the voxel axes that do not run superior-inferior."""
    from nibabel.orientations import io_orientation

    axial = int(np.nonzero(io_orientation(affine)[:, 0] == 2)[0][0])
    rows, cols = (n for i, n in enumerate(shape) if i != axial)
    return rows, cols


def _check_claimed_bytes(path: Path, claimed: int, file_size: int) -> None:
    """The header's data end (offset + voxel bytes) must fit the file: its size for ``.nii``,
    :data:`GZIP_MAX_RATIO` times it for gzip (deflate's most), before anything is decompressed."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    limit = GZIP_MAX_RATIO * file_size if gz else file_size
    if claimed > limit:
        what = f"a {file_size} B gzip file can expand to" if gz else f"the {file_size} B file holds"
        raise DataError(
            f"{path}: header claims {_human(claimed)} of data, more than {what} "
            "(truncated or corrupt header)"
        )


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _check_pixdim(path: Path, raw: Any) -> None:
    """Without an sform the affine comes from ``pixdim``: nibabel would turn a zero voxel size
    into 1 mm and a NaN into a NaN affine, so both are refused (negative sizes are taken as
    their absolute value, as nibabel does)."""
    if int(raw["sform_code"]) > 0:
        return
    zooms = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not (np.isfinite(zooms).all() and (zooms != 0).all()):
        raise DataError(f"{path}: invalid voxel size pixdim {zooms.tolist()} (zero or non-finite)")


def _scaling(path: Path, raw: Any) -> tuple[float, float] | None:
    """``(scl_slope, scl_inter)`` to apply, ``None`` when the file is unscaled (slope 0 or NaN,
    the NIfTI standard's and nibabel's "no scaling", or the identity).

    Raises:
        DataError: an infinite slope (nibabel would silently drop it) or a non-finite intercept.
    """
    slope, inter = float(raw["scl_slope"]), float(raw["scl_inter"])
    if math.isinf(slope):
        raise DataError(f"{path}: invalid scaling scl_slope={slope:g}, scl_inter={inter:g}")
    if slope == 0 or math.isnan(slope):
        return None
    if not math.isfinite(inter):
        raise DataError(f"{path}: invalid scaling scl_slope={slope:g}, scl_inter={inter:g}")
    return None if (slope, inter) == (1.0, 0.0) else (slope, inter)


def rescale(stored: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``stored * slope + inter`` computed slice by slice (last axis) into one array: int16 when
    integer data and an integral rescale stay in the int16 range (CT stored as uint16 with
    intercept -1024), else float32. Values beyond float32 become inf (the caller refuses them).
    """
    out_type: type = np.float32
    if stored.dtype.kind in "iu" and float(slope).is_integer() and float(inter).is_integer():
        ends = [float(stored.min()) * slope + inter, float(stored.max()) * slope + inter]
        if min(ends) >= -32768 and max(ends) <= 32767:
            out_type = np.int16
    out = np.empty(stored.shape, out_type)
    with np.errstate(all="ignore"):
        for k in range(stored.shape[-1]):
            out[..., k] = stored[..., k].astype(np.float64) * slope + inter
    return out


def write_nifti_labels(labels: np.ndarray, ref: Image, path: Path) -> None:
    """Write uint8 ``labels`` to ``path`` with ``ref``'s affine (and, for a NIfTI ``ref``, its
    header and stored shape, e.g. ``(X, Y, Z, 1)``).

    Raises:
        DataError: ``labels`` is not 3-D.
    """
    import nibabel as nib

    if labels.ndim != 3:
        raise DataError(f"{ref.path}: NIfTI masks need a 3-D reference, got {labels.shape}")
    if ref.kind == "nifti" and ref.disk_shape is not None:
        labels = labels.reshape(ref.disk_shape)  # (X, Y, Z) -> the input's (X, Y, Z, 1)
    affine = ref.affine if ref.affine is not None else np.eye(4)
    header = ref.header.copy() if ref.header is not None else None
    if ref.kind == "nifti" and header is not None:
        affine = header.get_best_affine()  # the file's own units (ref.affine is in mm)
    # A NIfTI-2 input gets NIfTI-2 masks: its header in a NIfTI-1 image is "fixed" with log
    # lines on stderr.
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(labels, affine, header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    # The CT's display window (cal_min/cal_max, e.g. -1000..400) and intent are not the mask's:
    # viewers that honour the window would draw 0 and 1 alike.
    img.header["cal_min"] = img.header["cal_max"] = 0
    img.header.set_intent("none")
    nib.save(img, str(path))
