"""Zip archives of inputs, opened safely: what ``covseg segment x.zip`` and the viewer's upload
share.

An archive is judged before anything is written: every entry's name (no absolute path, drive
or ``..``), type (no symbolic link, nothing encrypted), the number of files and the sizes they
claim, then the first bytes of each file (:func:`~covseg.data.io.magic.stream_kind`, a few
hundred bytes inflated) -- so a 59 KB zip of one 60 MB entry of zeros is refused in
milliseconds, never expanded. Entry names are never used as paths: DICOM files are written
under generated names (``000000.dcm``...), NIfTI and pictures under their base name made safe,
with the suffix of what their content is.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from covseg.data.io.common import strip_suffix
from covseg.data.io.magic import stream_kind
from covseg.errors import DataError

__all__ = [
    "MAX_UNZIPPED_BYTES",
    "MAX_ZIP_FILES",
    "ZipPlan",
    "display_name",
    "extract_zip",
    "inspect_zip",
    "is_zip_input",
    "unzipped_inputs",
]

log = logging.getLogger(__name__)

#: The most bytes an archive may extract to, and the most files it may hold.
MAX_UNZIPPED_BYTES = 4 << 30
MAX_ZIP_FILES = 10_000
#: Suffix of the files written for each kind of image entry.
_SUFFIX = {"nifti": ".nii", "nifti-gz": ".nii.gz", "png": ".png", "jpeg": ".jpg"}
#: Longest file name written for an entry (bytes, before its suffix): case names stay in limits.
_NAME_BYTES = 200
#: Longest name shown in messages (the case name has its own limit).
_SHOWN_CHARS = 120


@dataclass
class ZipPlan:
    """What :func:`inspect_zip` found in an archive, nothing written yet.

    Attributes:
        archive: the zip file.
        dicom: entries whose content is DICOM (one series, extracted together).
        images: ``(entry, kind)`` of NIfTI/PNG/JPEG entries (:func:`stream_kind`'s kinds).
        other: names of entries of any other content (skipped).
    """

    archive: Path
    dicom: list[zipfile.ZipInfo] = field(default_factory=list)
    images: list[tuple[zipfile.ZipInfo, str]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


def display_name(name: str) -> str:
    """A name (of a zip entry, an upload) as shown in messages: one line, printable, at most
    :data:`_SHOWN_CHARS` characters."""
    text = "".join(c if c.isprintable() else "?" for c in name) or "(no name)"
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def inspect_zip(
    archive: Path, *, max_bytes: int = MAX_UNZIPPED_BYTES, max_files: int = MAX_ZIP_FILES
) -> ZipPlan:
    """Judge an archive without extracting it (see the module docstring). Hidden entries
    (``.DS_Store``, ``__MACOSX/``) and folders are left out.

    Raises:
        DataError: the problem, without the archive's name (the caller adds it): an unsafe
            entry, a damaged zip, no files, more than ``max_files`` files, more than ``max_bytes``
            to extract, or no entry holding DICOM, NIfTI or PNG/JPEG data.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if _wanted(info)]
            _check_counts(members, max_bytes, max_files)
            plan = ZipPlan(Path(archive))
            for info in members:
                with zf.open(info) as f:
                    kind = stream_kind(f, info.file_size)
                if kind == "dicom":
                    plan.dicom.append(info)
                elif kind in _SUFFIX:
                    plan.images.append((info, kind))
                else:
                    plan.other.append(info.filename)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        raise DataError(f"a damaged or unsupported zip file ({err})") from None
    if not plan.dicom and not plan.images:
        raise DataError(
            f"the zip holds no DICOM, NIfTI or PNG/JPEG data ({len(plan.other)} file(s) of "
            f"other content, e.g. {display_name(plan.other[0])!r})"
        )
    if plan.other:
        log.info("%s: skipped %d zip entr(ies) of other content", archive, len(plan.other))
    return plan


def _check_counts(members: list[zipfile.ZipInfo], max_bytes: int, max_files: int) -> None:
    if not members:
        raise DataError("the zip holds no files")
    if len(members) > max_files:
        raise DataError(f"the zip holds {len(members)} files, more than {max_files}")
    claimed = sum(info.file_size for info in members)
    if claimed > max_bytes:
        raise DataError(f"the zip extracts to {_mib(claimed)}, more than {_mib(max_bytes)}")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def _wanted(info: zipfile.ZipInfo) -> bool:
    """Whether to extract an entry: ``False`` for folders and hidden entries.

    Raises:
        DataError: an unsafe entry (absolute, drive, ``..``, symbolic link, encrypted).
    """
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DataError(f"unsafe entry {display_name(name)!r} in the zip (absolute or '..')")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"the zip entry {display_name(name)!r} is a symbolic link")
    if info.flag_bits & 0x1:
        raise DataError(f"the zip entry {display_name(name)!r} is encrypted")
    if info.is_dir() or not parts:
        return False
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def extract_zip(plan: ZipPlan, dest: Path, *, series: Path | None = None) -> dict[Path, str]:
    """Write the entries of ``plan`` into ``dest`` (created, mode 0700): DICOM files into
    ``series`` (default ``dest``) as ``000000.dcm``..., NIfTI/pictures into ``dest`` under their
    base names made safe, with the suffix of their content (``scan.nii.gz``, ``slice_1.png``).

    Returns:
        ``{extracted path: entry name}``, for messages that name the entry.

    Raises:
        DataError: two entries of one name, a damaged entry; ``dest`` is removed.
    """
    try:
        return _extract(plan, dest, series or dest)
    except DataError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise DataError(f"a damaged or unsupported zip file ({err})") from None


def _extract(plan: ZipPlan, dest: Path, series: Path) -> dict[Path, str]:
    dest.mkdir(mode=0o700)
    targets = [(info, series / f"{k:06d}.dcm") for k, info in enumerate(plan.dicom)]
    names: dict[str, str] = {}
    for info, kind in plan.images:
        name = _safe_name(info.filename) + _SUFFIX[kind]
        if name in names:
            first, second = display_name(names[name]), display_name(info.filename)
            raise DataError(f"the zip entries {first!r} and {second!r} give one case name")
        names[name] = info.filename
        targets.append((info, dest / name))
    if plan.dicom:
        series.mkdir(mode=0o700, exist_ok=True)
    written: dict[Path, str] = {}
    with zipfile.ZipFile(plan.archive) as zf:
        for info, out in targets:
            written[out] = info.filename
            # zipfile yields at most ``file_size`` bytes of an entry (and fails its CRC check
            # if the data holds more), so the sizes summed by inspect_zip bound what is written.
            with zf.open(info) as src, open(out, "xb", opener=_private) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return written


def _safe_name(entry: str) -> str:
    """An entry's base name without its image suffix, as a file name: separators and control
    characters become ``_``; too long a name is refused."""
    base = strip_suffix(PurePosixPath(entry.replace("\\", "/")).name)
    base = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in base) or "case"
    if len(base.encode("utf-8", "surrogateescape")) > _NAME_BYTES:
        raise DataError(
            f"the zip entry {display_name(entry)!r} has a name longer than {_NAME_BYTES} bytes"
        )
    return base


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def is_zip_input(path: str | Path) -> bool:
    """A path given on the command line that names a zip file (``.zip``, any case)."""
    return Path(path).suffix.lower() == ".zip" and Path(path).is_file()


@contextmanager
def unzipped_inputs(
    inputs: Sequence[str | Path],
) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The inputs with each zip file (:func:`is_zip_input`) replaced by the folder it was
    safely extracted to (:func:`inspect_zip`, :func:`extract_zip`), inside a private temporary
    folder removed on exit; and ``{extracted folder: zip path as given}``, so that outputs
    name the zip (``scans.zip``, ``scans.zip/slice_1.png``) rather than a temporary copy. The folder is named after the zip (``scans.zip`` -> ``scans/``) and
    holds its DICOM files directly (one series: a case named ``scans``) and its NIfTI/pictures
    (cases named after their entries), as :func:`~covseg.data.io.find_inputs` sees a folder.

    Raises:
        DataError: ``"<zip>: <problem>"`` for a zip refused by :func:`inspect_zip` or
            :func:`extract_zip`.
    """
    if not any(is_zip_input(p) for p in inputs):
        yield [str(p) for p in inputs], {}
        return
    with tempfile.TemporaryDirectory(prefix="covseg-unzip-") as tmp:
        out: list[str] = []
        labels: dict[str, str] = {}
        for k, given in enumerate(inputs):
            if not is_zip_input(given):
                out.append(str(given))
                continue
            path = Path(given)
            dest = Path(tmp) / str(k) / (strip_suffix(path.name[:-4]) or "case")
            dest.parent.mkdir()
            try:
                extract_zip(inspect_zip(path), dest)
            except DataError as err:
                raise DataError(f"{path}: {err}") from None
            out.append(str(dest))
            labels[str(dest)] = str(given)
        yield out, labels
