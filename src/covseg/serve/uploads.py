"""Uploads: streamed to disk under a size limit and typed by their content (a zipped DICOM
series is then judged and extracted by :mod:`covseg.data.io.archive`, as ``covseg segment x.zip``
does).

An upload's file name is never used as a path: the bytes go to a name the server generates
(``input.nii.gz``, ``input.png``, ``dicom/000001.dcm``, ...), picked from what the content *is*
(magic numbers, the NIfTI header inside a gzip stream), whatever the name's suffix says. The name
only becomes the case name, through :func:`covseg.inference.outputs.case_name` (no separators, no
leading dots, no control characters), exactly as ``covseg segment`` names its outputs.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

from covseg.data.io.archive import display_name
from covseg.data.io.magic import nifti_magic, stream_kind
from covseg.errors import DataError

__all__ = [
    "INPUT_NAMES",
    "UploadError",
    "case_for",
    "display_name",
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
#: Bytes of a decompressed gzip stream read to find a NIfTI header in it.
_HEAD = 544


class UploadError(DataError):
    """An upload refused before it reaches the queue; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
        kind = stream_kind(f, path.stat().st_size)  # what covseg reads, judged by content
        f.seek(0)
        head = f.read(_HEAD)
    if kind in INPUT_NAMES:
        return kind
    # Refused: say why, as precisely as the first bytes allow.
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(_HEAD)
        except (OSError, EOFError, zlib.error):
            raise UploadError("a damaged gzip file", status=415) from None
        raise UploadError(_not_nifti(inner, "a gzip file that holds no NIfTI image"), status=415)
    if len(head) >= 132 and head[128:132] == b"DICM":
        raise UploadError(
            "a single DICOM file; drop the folder of the whole series (or a zip of it)",
            status=415,
        )
    raise UploadError(
        _not_nifti(head, "not a NIfTI, PNG/JPEG or zip file (judged by its content)"), status=415
    )


def _not_nifti(head: bytes, otherwise: str) -> str:
    if nifti_magic(head) == "pair":
        return "a NIfTI header without its voxels (.hdr/.img pair); upload a single .nii/.nii.gz"
    return otherwise
