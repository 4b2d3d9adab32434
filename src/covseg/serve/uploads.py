"""Uploads: streamed to disk under a size limit, typed by their content, zipped DICOM series
extracted safely.

An upload's file name is never used as a path: the bytes go to a name the server generates
(``input.nii.gz``, ``input.png``, ``dicom/000001.dcm``, ...), picked from what the content *is*
(magic numbers, the NIfTI header inside a gzip stream), whatever the name's suffix says. The name
only becomes the case name, through :func:`covseg.inference.outputs.case_name` (no separators, no
leading dots, no control characters), exactly as ``covseg segment`` names its outputs.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from covseg.errors import DataError

__all__ = [
    "INPUT_NAMES",
    "UploadError",
    "case_for",
    "display_name",
    "extract_dicom_zip",
    "receive",
    "sniff",
    "too_large",
]

#: The name an upload of each kind is stored under inside its job folder.
INPUT_NAMES = {
    "nifti": "input.nii",
    "nifti-gz": "input.nii.gz",
    "png": "input.png",
    "jpeg": "input.jpg",
    "zip": "upload.zip",
}
#: Longest upload name shown in messages (the case name has its own limit).
_SHOWN_CHARS = 120
#: Bytes of a decompressed gzip stream read to find a NIfTI header in it.
_HEAD = 544


class UploadError(DataError):
    """An upload refused before it reaches the queue; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def display_name(name: str) -> str:
    """The upload name as shown in messages: one line, printable, at most
    :data:`_SHOWN_CHARS` characters."""
    shown = "".join(c if c.isprintable() else "?" for c in name) or "(no name)"
    return shown if len(shown) <= _SHOWN_CHARS else shown[: _SHOWN_CHARS - 1] + "…"


def case_for(given: str) -> str:
    """The case name (output prefix) of an upload named ``given``, as ``segment`` names its
    cases (a ``.zip`` suffix dropped as well).

    Raises:
        UploadError: a name too long for a case name.
    """
    from covseg.inference.outputs import MAX_CASE_BYTES, case_name

    try:
        return case_name(given[:-4] if given.lower().endswith(".zip") else given)
    except DataError:
        raise UploadError(f"a name longer than {MAX_CASE_BYTES} bytes (rename the file)") from None


async def receive(chunks: AsyncIterator[bytes], dest: Path, limit: int) -> int:
    """Write a streamed upload to ``dest`` (created, mode 0600), refusing it as soon as it
    passes ``limit`` bytes.

    Returns:
        The number of bytes written.

    Raises:
        UploadError: ``413`` over the limit, ``400`` for an empty upload; ``dest`` is removed.
    """
    size = 0
    try:
        with open(dest, "xb", opener=_private) as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                f.write(chunk)
        if size == 0:
            raise UploadError("empty upload")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return size


def too_large(limit: int) -> UploadError:
    """The refusal of an upload over ``limit`` bytes (HTTP 413)."""
    return UploadError(
        f"larger than the upload limit of {_mib(limit)} (covseg serve --max-upload-mb raises it)",
        status=413,
    )


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def sniff(path: Path) -> str:
    """The kind of an uploaded file from its content: a key of :data:`INPUT_NAMES`.

    Raises:
        UploadError: ``415`` for anything that is not a single NIfTI-1/2 file (plain or gzip),
            a PNG or JPEG picture, or a zip archive.
    """
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(_HEAD)
        except (OSError, EOFError, zlib.error):
            raise UploadError("a damaged gzip file", status=415) from None
        if _nifti_magic(inner) == "single":
            return "nifti-gz"
        raise UploadError(_not_nifti(inner, "a gzip file that holds no NIfTI image"), status=415)
    if _nifti_magic(head) == "single":
        return "nifti"
    if len(head) >= 132 and head[128:132] == b"DICM":
        raise UploadError(
            "a single DICOM file; drop the folder of the whole series (or a zip of it)",
            status=415,
        )
    raise UploadError(
        _not_nifti(head, "not a NIfTI, PNG/JPEG or zip file (judged by its content)"), status=415
    )


def _nifti_magic(head: bytes) -> str | None:
    """``"single"`` (``n+1``/``n+2``: header and voxels in one file), ``"pair"`` (``ni1``/
    ``ni2``: a ``.hdr`` needing its ``.img``), or ``None``."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return {b"n+1\0": "single", b"ni1\0": "pair"}.get(head[344:348])
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return {b"n+2\0": "single", b"ni2\0": "pair"}.get(head[4:8])
    return None


def _not_nifti(head: bytes, otherwise: str) -> str:
    if _nifti_magic(head) == "pair":
        return "a NIfTI header without its voxels (.hdr/.img pair); upload a single .nii/.nii.gz"
    return otherwise


def extract_dicom_zip(
    archive: Path, dest: Path, *, max_bytes: int, max_files: int
) -> dict[Path, str]:
    """Extract the regular files of a zipped DICOM series flat into ``dest`` under generated
    names (``000000.dcm``, ...); entry names are checked, never used as paths.

    Refused: entries with an absolute path, a drive or ``..``; symbolic links; encrypted
    entries; more than ``max_files`` files; more than ``max_bytes`` to extract. Hidden entries
    (``.DS_Store``, ``__MACOSX/``) are skipped.

    Returns:
        ``{extracted path: entry name}``, for messages that name the entry.

    Raises:
        UploadError: naming the problem; ``dest`` is removed.
    """
    try:
        return _extract(archive, dest, max_bytes, max_files)
    except UploadError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise UploadError(f"a damaged or unsupported zip file ({err})") from None


def _extract(archive: Path, dest: Path, max_bytes: int, max_files: int) -> dict[Path, str]:
    with zipfile.ZipFile(archive) as zf:
        members = [info for info in zf.infolist() if _wanted(info)]
        if not members:
            raise UploadError("the zip holds no files")
        if len(members) > max_files:
            raise UploadError(f"the zip holds {len(members)} files, more than {max_files}")
        claimed = sum(info.file_size for info in members)
        if claimed > max_bytes:
            raise UploadError(f"the zip extracts to {_mib(claimed)}, more than {_mib(max_bytes)}")
        dest.mkdir(mode=0o700)
        names: dict[Path, str] = {}
        for k, info in enumerate(members):
            out = dest / f"{k:06d}.dcm"
            names[out] = info.filename
            # zipfile yields at most ``file_size`` bytes of an entry (and fails its CRC check
            # if the data holds more), so the sizes summed above bound what is written.
            with zf.open(info) as src, open(out, "xb", opener=_private) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return names


def _wanted(info: zipfile.ZipInfo) -> bool:
    """Whether to extract an entry: ``False`` for folders and hidden entries.

    Raises:
        UploadError: an unsafe entry (absolute, drive, ``..``, symbolic link, encrypted).
    """
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise UploadError(f"unsafe entry {display_name(name)!r} in the zip (absolute or '..')")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"the zip entry {display_name(name)!r} is a symbolic link")
    if info.flag_bits & 0x1:
        raise UploadError(f"the zip entry {display_name(name)!r} is encrypted")
    if info.is_dir() or not parts:
        return False
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts)
