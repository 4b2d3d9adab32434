"""What a file holds, judged from its first bytes alone: NIfTI (plain or gzip), PNG, JPEG, zip
and DICOM. Used before anything is parsed or expanded, so that junk (a 40 MB file of zeros named
``x.dcm``, a zip entry that inflates to 60 MB of zeros) is refused in milliseconds instead of
being handed to a forgiving parser (pydicom's ``force=True``) or decompressed in full.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

__all__ = ["HEAD_BYTES", "dicom_start", "gunzip_start", "nifti_magic", "stream_kind"]

#: Bytes of a file (or of a zip entry) read to judge its content: a NIfTI-2 header (540 bytes),
#: DICOM's 128-byte preamble and ``DICM``, and the first element after them.
HEAD_BYTES = 544
#: Most bytes of a gzip stream inflated to find a NIfTI header in it.
_GZIP_PEEK = 64 << 10
#: DICOM value representations (PS3.5 6.2); those with a 4-byte length in explicit VR.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
#: The lowest and highest group a dataset's first element may have: 0x0002 (file meta written
#: without its preamble) up to 0x0028 (image pixel module: a minimal image holds nothing before
#: it). Group 0 (command group, and every all-zero file) is never first in a stored file.
_FIRST_GROUPS = (0x0002, 0x0028)


def nifti_magic(head: bytes) -> str | None:
    """``"single"`` (``n+1``/``n+2``: header and voxels in one file), ``"pair"`` (``ni1``/
    ``ni2``: a ``.hdr`` needing its ``.img``), or ``None`` when ``head`` (the first bytes of the
    uncompressed file) is no NIfTI header."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return {b"n+1\0": "single", b"ni1\0": "pair"}.get(head[344:348])
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return {b"n+2\0": "single", b"ni2\0": "pair"}.get(head[4:8])
    return None


def dicom_start(head: bytes, size: int) -> bool:
    """Whether ``head`` (the first bytes of a ``size``-byte file) starts like DICOM: the 128-byte
    preamble and ``DICM`` (a Part 10 file), or, for raw datasets without a preamble (which
    pydicom reads only with ``force=True``), a first element with a plausible tag (an even group
    in 0x0002..0x0028) and either an explicit VR with a length that fits the file, or an
    implicit-VR length that does.

    Args:
        head: at least the first 12 bytes (:data:`HEAD_BYTES` to see a preamble).
        size: the whole file's size in bytes.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 12:
        return False
    group, _ = struct.unpack("<HH", head[:4])
    if group % 2 or not _FIRST_GROUPS[0] <= group <= _FIRST_GROUPS[1]:
        return False
    vr = head[4:6]
    if vr in _VRS:  # explicit VR little endian
        if vr in _LONG_VRS:
            length = struct.unpack("<I", head[8:12])[0]
            return head[6:8] == b"\0\0" and (length == _UNDEFINED or 12 + length <= size)
        return 8 + struct.unpack("<H", head[6:8])[0] <= size
    length = struct.unpack("<I", head[4:8])[0]  # implicit VR little endian
    return length == _UNDEFINED or 8 + length <= size


def stream_kind(stream: BinaryIO, size: int) -> str | None:
    """The kind of a file from its first bytes, read from ``stream`` (a file or a zip entry
    opened at its start): at most :data:`HEAD_BYTES`, or 64 KiB of a gzip stream.

    Args:
        stream: readable binary stream, at the start of the content.
        size: the content's whole size in bytes (uncompressed).

    Returns:
        ``"png"``, ``"jpeg"``, ``"zip"``, ``"nifti"``, ``"nifti-gz"`` (a gzip stream whose start
        inflates to a single-file NIfTI header), ``"dicom"`` (:func:`dicom_start`), or ``None``.
    """
    head = stream.read(HEAD_BYTES)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        head += stream.read(_GZIP_PEEK - len(head))
        return "nifti-gz" if nifti_magic(gunzip_start(head)) == "single" else None
    if nifti_magic(head) == "single":
        return "nifti"
    return "dicom" if dicom_start(head, size) else None


def gunzip_start(data: bytes) -> bytes:
    """The first :data:`HEAD_BYTES` inflated bytes of the gzip stream starting ``data`` (fewer
    when ``data`` ends sooner or is damaged)."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        return inflater.decompress(data[:_GZIP_PEEK], HEAD_BYTES)
    except zlib.error:
        return b""
