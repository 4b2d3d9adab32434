"""Readers and writers that keep geometry: NIfTI, DICOM series, PNG/JPG.

Every problem with an input (a FIFO or device instead of a file, an unreadable or truncated file,
a header that claims more voxels than the file or the memory budget holds, wrong number of
dimensions, degenerate geometry, NaN/inf values, an empty folder) is raised as
:class:`~covseg.errors.DataError` naming the file, so the CLI can report it as one line. Sizes are
checked against the header before any voxel is read, and the readers' own warnings and log lines
(numpy, nibabel, Pillow, pydicom) are silenced: a problem is an error, never a printed warning.

Voxel order: a volume's ``array`` is ``(X, Y, Z)`` in the file's own voxel order (what nibabel
returns), and ``affine`` maps voxel indices to world RAS millimetres. A DICOM series is returned in
the same convention (``X`` = column index, ``Y`` = row index, ``Z`` = slice, sorted along the slice
normal) with its LPS geometry converted to RAS. A 2-D image is ``(H, W)`` with ``affine=None``.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from covseg.errors import DataError

__all__ = [
    "MAX_SIDE",
    "MAX_VOXELS",
    "Image",
    "check_affine",
    "find_inputs",
    "nifti_shape",
    "read_image",
    "write_mask",
]

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Largest slice side accepted (pixels). Larger pictures are refused with a clear message rather
#: than costing gigabytes: chest CT is 512-1024 px; downsample anything larger first.
MAX_SIDE = 4096
#: Memory budget: the most voxels one image may hold (2**30: 2 GiB as int16, 4 GiB as float32,
#: e.g. 2048 slices of 512x1024). Checked against the header before any voxel is read.
MAX_VOXELS = 2**30
#: Deflate cannot expand data more than ~1032:1, so a ``.nii.gz`` whose header claims more than
#: this many times the compressed size is truncated or forged (checked before decompressing).
GZIP_MAX_RATIO = 1032
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Image:
    """An image array with its geometry.

    Attributes:
        array: volumes ``(X, Y, Z)`` in the file's voxel order; 2-D pictures ``(H, W)``.
        affine: 4x4 voxel -> world (RAS mm) for volumes; ``None`` for 2-D pictures.
        kind: ``"nifti"``, ``"dicom"`` or ``"png"`` (any 2-D picture, JPG included).
        path: the file or DICOM folder read.
        header: the nibabel header for NIfTI (used to write masks back), ``None`` otherwise.
        disk_shape: the shape stored in a NIfTI file (``(X, Y, Z, 1)`` where the reader dropped a
            trailing singleton axis), so masks are written with the input's own dims; ``None``
            otherwise.
    """

    array: np.ndarray
    affine: np.ndarray | None
    kind: str
    path: Path
    header: Any = None
    disk_shape: tuple[int, ...] | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Millimetres per voxel axis (column norms of the affine); ``(1.0, 1.0)`` for 2-D."""
        if self.affine is None:
            return (1.0, 1.0)
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_picture(path: Path) -> bool:
    return path.suffix.lower() in PICTURE_SUFFIXES


def strip_suffix(name: str) -> str:
    """``"a.nii.gz"`` -> ``"a"``, ``"b.png"`` -> ``"b"`` (only known image suffixes)."""
    low = name.lower()
    for suf in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".npy", ".dcm"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


# ------------------------------------------------------------------------ shared checks
@contextmanager
def quiet_reading(*loggers: str) -> Iterator[None]:
    """Silence warnings and numpy floating-point warnings, and mute the named loggers, for the
    duration (their levels are restored): the readers report problems as DataError, and a
    third-party note on stderr would break the CLI's one-line error."""
    muted = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    for lg, _ in muted:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in muted:
            lg.setLevel(level)


def stat_input(path: Path) -> os.stat_result:
    """``os.stat(path)``, refusing anything but a regular file or a folder *before* it is opened
    (a FIFO or a device would block or stream for ever).

    Raises:
        DataError: the path does not exist, cannot be read, or is a FIFO, socket or device.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or folder") from None
    except OSError as err:
        raise DataError(f"{path}: cannot access ({err.strerror or err})") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise DataError(f"{path}: not a regular file ({_special_kind(st.st_mode)})")
    return st


def _special_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file or folder"


class Listing(NamedTuple):
    """A folder's entries: what covseg may read, and how many it skipped."""

    files: list[Path]
    folders: list[Path]
    hidden: int  # dot files: ``.DS_Store``, macOS AppleDouble ``._scan.nii.gz``, ...
    special: int  # FIFOs, sockets, devices, broken links


def list_folder(folder: Path) -> Listing:
    """The regular files and sub-folders of ``folder``, in natural sort order, without hidden
    entries (dot files, AppleDouble ``._*``) and without FIFOs, sockets or devices.

    Raises:
        DataError: the folder cannot be listed.
    """
    files, folders, hidden, special = [], [], 0, 0
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: natural_key(e.name))
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror or err})") from None
    for entry in entries:
        if entry.name.startswith("."):
            hidden += 1
            continue
        try:
            mode = entry.stat().st_mode  # follows links, never opens
        except OSError:
            special += 1
            continue
        if stat.S_ISREG(mode):
            files.append(Path(entry.path))
        elif stat.S_ISDIR(mode):
            folders.append(Path(entry.path))
        else:
            special += 1
    return Listing(files, folders, hidden, special)


def log_skipped(folder: Path, listing: Listing) -> None:
    """One ``log.info`` line saying what :func:`list_folder` left out of ``folder``."""
    parts = []
    if listing.hidden:
        parts.append(f"{listing.hidden} hidden/AppleDouble file(s)")
    if listing.special:
        parts.append(f"{listing.special} FIFO/socket/device/broken-link entr(ies)")
    if parts:
        log.info("skipped %s in %s", " and ".join(parts), folder)


def check_size(path: Path, shape: tuple[int, ...], plane: tuple[int, int]) -> None:
    """Refuse an image too large for covseg, from its claimed shape alone (before allocating).

    Args:
        path: named in the error.
        shape: the full shape the file claims.
        plane: ``(rows, columns)`` of one slice (or picture).

    Raises:
        DataError: a slice side above :data:`MAX_SIDE`, or more than :data:`MAX_VOXELS` voxels.
    """
    if max(plane) > MAX_SIDE:
        raise DataError(
            f"{path}: {plane[0]}x{plane[1]} px slices are larger than covseg's {MAX_SIDE} px "
            "limit; downsample the image first"
        )
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        dims = "x".join(str(n) for n in shape)
        raise DataError(
            f"{path}: {dims} = {voxels} voxels exceed covseg's memory budget of {MAX_VOXELS} voxels"
        )


def check_values(array: np.ndarray, path: Path, cause: str = "") -> None:
    """Refuse empty arrays, NaN/inf, and float values that float32 (covseg's compute type)
    cannot hold; ``cause`` (e.g. the scaling applied) is added to the message."""
    if array.size == 0:
        raise DataError(f"{path}: empty image (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.floating):
        return
    with np.errstate(all="ignore"):
        lo, hi = float(np.min(array)), float(np.max(array))  # NaN propagates; no full temporary
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DataError(f"{path}: {bad} NaN/inf voxel(s){cause}")
    if max(-lo, hi) > _FLOAT32_MAX:
        raise DataError(f"{path}: values up to {max(-lo, hi):.3g} exceed the float32 range{cause}")


# ----------------------------------------------------------------------------- reading
def read_image(path: str | Path, *, labels: bool = False) -> Image:
    """Read a NIfTI file, a DICOM series folder, or a PNG/JPG picture.

    Args:
        path: ``.nii``/``.nii.gz`` file, a folder of one DICOM series, or ``.png``/``.jpg``/
            ``.jpeg``.
        labels: the picture is a label mask: palette PNGs keep their indices. Otherwise palette
            and colour pictures are converted to grey through their palette/colours.

    Returns:
        The :class:`Image`; volumes ``(X, Y, Z)`` (trailing singleton axes are dropped and
        recorded in ``disk_shape``), pictures ``(H, W)``.

    Raises:
        DataError: missing/unreadable/truncated file, a FIFO/device/socket, an empty folder, a
            claimed size beyond the file or :data:`MAX_SIDE`/:data:`MAX_VOXELS`, an array that
            is not 2-D (pictures) or 3-D (volumes), degenerate geometry, or NaN/inf values.
    """
    path = Path(path)
    st = stat_input(path)
    if stat.S_ISDIR(st.st_mode):
        from covseg.data.dicom import read_dicom_series

        image = read_dicom_series(path)
    elif is_nifti(path):
        image = _read_nifti(path, st.st_size)
    elif is_picture(path):
        image = _read_picture(path, labels=labels)
    elif _looks_like_dicom(path):
        raise DataError(f"{path}: a single DICOM file; pass the folder of the whole series")
    else:
        raise DataError(f"{path}: unsupported file type (expected NIfTI, DICOM folder, PNG/JPG)")
    check_values(image.array, path)
    return image


def nifti_shape(path: str | Path) -> tuple[int, ...]:
    """The 3-D shape of a NIfTI file from its header alone, with every check of
    :func:`read_image` that needs no voxel (file type, dimensions, geometry, claimed size).

    Raises:
        DataError: as :func:`read_image`.
    """
    path = Path(path)
    st = stat_input(path)
    if not stat.S_ISREG(st.st_mode) or not is_nifti(path):
        raise DataError(f"{path}: not a NIfTI file")
    return _open_nifti(path, st.st_size)[2]


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


def _read_nifti(path: Path, file_size: int) -> Image:
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
    affine = check_affine(path, img.affine)
    _check_pixdim(path, raw)
    check_size(path, shape, _in_plane(shape, affine))
    data_end = int(proxy.offset) + math.prod(shape) * proxy.dtype.itemsize
    _check_claimed_bytes(path, data_end, file_size)
    return shape, affine


def _raw_header(img: Any, path: Path) -> Any:
    """The header as stored: nibabel's ``img.header`` has the scaling moved into the proxy."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        return img.header_class.from_fileobj(f, check=False)


def _drop_trailing_singletons(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def check_affine(path: Path, affine: np.ndarray) -> np.ndarray:
    """A finite affine with non-zero, non-parallel voxel axes; the test is scale-free, so 1 µm
    voxels pass while a zero or repeated column does not.

    Raises:
        DataError: non-finite entries, a zero-length voxel axis (pixdim 0), or axes that are
            (nearly) linearly dependent.
    """
    a = np.asarray(affine, dtype=np.float64)
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(a[:3, :3], axis=0)
        if not np.isfinite(a).all() or not np.isfinite(norms).all():
            raise DataError(f"{path}: invalid affine (non-finite values)")
        if not (norms > 0).all():
            axis = int(np.argmin(norms))
            raise DataError(f"{path}: invalid affine (voxel axis {axis} has zero length)")
        if abs(np.linalg.det(a[:3, :3] / norms)) < 1e-6:
            raise DataError(f"{path}: invalid affine (singular: voxel axes are parallel)")
    return a


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


def _read_picture(path: Path, *, labels: bool = False) -> Image:
    with quiet_reading("PIL"):
        try:
            with _open_picture(path) as pic:
                width, height = pic.size  # lazy: only the header is read so far
                check_size(path, (height, width), (height, width))
                pic.load()
                array = _picture_array(pic, labels)
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{path}: unreadable picture ({type(err).__name__}: {err})") from None
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D picture, got shape {tuple(array.shape)}")
    return Image(array, None, "png", path)


def _open_picture(path: Path) -> Any:
    """The PNG/JPEG plugin opened on ``path`` (header only). ``PIL.Image.open`` is not used: its
    decompression-bomb check warns or raises before covseg's own size limit could apply."""
    from PIL import JpegImagePlugin, PngImagePlugin

    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile(str(path))
    if magic.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile(str(path))
    raise DataError(f"{path}: unreadable picture (neither PNG nor JPEG data)")


def _picture_array(pic: Any, labels: bool) -> np.ndarray:
    """Grey values of a loaded picture; palette indices instead when ``labels``."""
    mode = pic.mode
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        return np.array(pic)
    if mode == "1":
        return np.array(pic).astype(np.uint8)
    if labels and mode in ("P", "PA"):
        return np.array(pic.getchannel("P"))
    if labels and mode == "LA":
        return np.array(pic.getchannel("L"))
    return np.array(pic.convert("L"))  # palette via its colours, RGB(A), LA, CMYK, ...


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# ----------------------------------------------------------------------------- writing
def write_mask(mask: np.ndarray, ref: Image, path: str | Path) -> Path:
    """Write a label mask aligned with ``ref``, atomically (temp name + ``os.replace``).

    NIfTI (``.nii``/``.nii.gz``): uint8 labels, ``ref``'s affine (and header and stored shape,
    e.g. ``(X, Y, Z, 1)``, for NIfTI refs). PNG: uint8 with foreground scaled to 255
    (``{0, 255}`` for a binary mask) so it is visible in an image viewer; readers of covseg masks
    treat any value > 0 as foreground.

    Args:
        mask: labels with ``ref.array``'s shape (``(X, Y, Z)`` or ``(H, W)``).
        ref: the image the mask belongs to.
        path: output file; the suffix picks the format.

    Returns:
        The written path.

    Raises:
        DataError: shape mismatch, or a suffix that is neither NIfTI nor PNG.
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.shape != ref.array.shape:
        raise DataError(f"{path}: mask shape {mask.shape} != image shape {ref.array.shape}")
    labels = np.asarray(mask, dtype=np.uint8)  # no copy of uint8 masks, any memory order
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if is_nifti(path):
            _write_nifti_labels(labels, ref, tmp)
        elif path.suffix.lower() == ".png":
            from PIL import Image as PILImage

            top = max(int(labels.max()), 1)
            scaled = labels if top > 1 else labels * 255
            PILImage.fromarray(np.ascontiguousarray(scaled), mode="L").save(tmp, format="PNG")
        else:
            raise DataError(f"{path}: unsupported mask format (use .nii.gz or .png)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_nifti_labels(labels: np.ndarray, ref: Image, tmp: Path) -> None:
    import nibabel as nib

    if labels.ndim != 3:
        raise DataError(f"{ref.path}: NIfTI masks need a 3-D reference, got {labels.shape}")
    if ref.kind == "nifti" and ref.disk_shape is not None:
        labels = labels.reshape(ref.disk_shape)  # (X, Y, Z) -> the input's (X, Y, Z, 1)
    affine = ref.affine if ref.affine is not None else np.eye(4)
    header = ref.header.copy() if ref.header is not None else None
    img = nib.Nifti1Image(labels, affine, header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    nib.save(img, str(tmp))


# ----------------------------------------------------------------------------- finding
def find_inputs(path: str | Path) -> list[Path]:
    """The image inputs under ``path``, in natural sort order.

    Hidden files (``.DS_Store``, macOS AppleDouble ``._scan.nii.gz``) and FIFOs, sockets or
    devices in a folder are skipped, with one ``log.info`` line saying so.

    Args:
        path: a NIfTI/PNG/JPG file, a DICOM series folder, or a folder holding NIfTI/PNG/JPG
            files and/or DICOM series sub-folders.

    Returns:
        Files and DICOM folders that :func:`read_image` accepts.

    Raises:
        DataError: the path does not exist, is a FIFO/socket/device, or holds no image input.
    """
    path = Path(path)
    if stat.S_ISREG(stat_input(path).st_mode):
        return [path]
    listing = list_folder(path)
    log_skipped(path, listing)
    found = [p for p in listing.files if is_nifti(p) or is_picture(p)]
    found += [p for p in listing.folders if _has_dicom(p)]
    if not found and _has_dicom(path):
        return [path]
    if not found:
        raise DataError(f"{path}: no NIfTI, PNG/JPG or DICOM input found")
    return sorted(found, key=lambda p: natural_key(p.name))


def _has_dicom(folder: Path) -> bool:
    return any(
        p.suffix.lower() == ".dcm" or _looks_like_dicom(p) for p in list_folder(folder).files
    )


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``"a_2"`` before ``"a_10"``."""
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]
