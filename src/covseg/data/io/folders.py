"""Folders of inputs: what covseg may read in a folder (no hidden files, FIFOs or devices), in
natural sort order, and the inputs found under a path given on the command line."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, NamedTuple

from covseg.data.io.common import is_nifti, is_picture, looks_like_dicom, stat_input
from covseg.errors import DataError

__all__ = ["Listing", "find_inputs", "list_folder", "log_skipped", "natural_key"]

log = logging.getLogger(__name__)


class Listing(NamedTuple):
    """A folder's entries: what covseg may read, and how many it skipped."""

    files: list[Path]
    folders: list[Path]
    hidden: int  # dot files: ``.DS_Store``, macOS AppleDouble ``._scan.nii.gz``, ...
    special: int  # FIFOs, sockets, devices, broken links


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``"a_2"`` before ``"a_10"``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


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


def find_inputs(path: str | Path) -> list[Path]:
    """The image inputs under ``path``, in natural sort order.

    Every kind of input in a folder is found, none hides another: its NIfTI and PNG/JPG files,
    its sub-folders that hold DICOM files, and the folder itself when DICOM files sit directly in
    it -- then it is one more input (a DICOM series case named after the folder) beside the
    others, so a 4-slice series next to a ``preview.png`` gives two cases, ``<folder>`` and
    ``preview``, with one ``log.info`` line saying so. A file counts as DICOM by its content
    (:func:`~covseg.data.io.common.looks_like_dicom`); a folder holding only ``.dcm`` files of
    other content is still handed to the DICOM reader, which names them. Zip files in a folder
    are not opened (give them by name: ``covseg segment x.zip``); one ``log.info`` line names
    them.

    Hidden files (``.DS_Store``, macOS AppleDouble ``._scan.nii.gz``) and FIFOs, sockets or
    devices in a folder are skipped, with one ``log.info`` line saying so.

    Args:
        path: a NIfTI/PNG/JPG file, a DICOM series folder, or a folder holding NIfTI/PNG/JPG
            files, DICOM series sub-folders and/or the DICOM files of one series.

    Returns:
        Files and DICOM folders that :func:`~covseg.data.io.read_image` accepts.

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
    zips = [p.name for p in listing.files if p.suffix.lower() == ".zip"]
    if zips:
        log.info(
            "%s: %d zip file(s) not opened (e.g. %s); give them by name", path, len(zips), zips[0]
        )
    series = [
        p for p in listing.files if not (is_nifti(p) or is_picture(p)) and looks_like_dicom(p)
    ]
    if series and found:
        log.info(
            "%s: %d DICOM file(s) beside %d other input(s): the folder is a case of its own",
            path,
            len(series),
            len(found),
        )
    if series or (not found and _has_dicom(path)):
        return [path, *sorted(found, key=lambda p: natural_key(p.name))]
    if not found:
        raise DataError(f"{path}: no NIfTI, PNG/JPG or DICOM input found")
    return sorted(found, key=lambda p: natural_key(p.name))


def _has_dicom(folder: Path) -> bool:
    return any(p.suffix.lower() == ".dcm" or looks_like_dicom(p) for p in list_folder(folder).files)
