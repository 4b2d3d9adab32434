"""A case's files on disk, as ``covseg segment`` left them, and the change between two cases.

:func:`find_case` finds a case's report and infection mask (and the scan, for a registration)
from what a user names (``covseg compare-scans``, the viewer); :func:`compare_cases` reads them
and runs both levels of :mod:`covseg.followup.change` on two cases. This is the file edge: the
change itself works on report dicts and arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from covseg.errors import DataError
from covseg.followup.change import (
    FollowUp,
    check_report,
    compare_reports,
    rigid_transform,
    voxel_change,
)

__all__ = ["Case", "compare_cases", "find_case", "read_report"]


def read_report(path: str | Path) -> dict[str, Any]:
    """A ``covseg segment`` report JSON.

    Args:
        path: the ``*_report.json`` file.

    Returns:
        The report as a dict (``BurdenReport.to_dict()``'s fields).

    Raises:
        DataError: a missing or unreadable file, or not a JSON object.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable report JSON ({err})") from None
    if not isinstance(report, dict):
        raise DataError(f"{path}: not a report (expected a JSON object)")
    return report


@dataclass(frozen=True)
class Case:
    """One scan as ``covseg segment`` left it.

    Attributes:
        report: its report (``*_report.json``).
        path: the report file (or what names the case in messages).
        infection: its infection mask (a volume), ``None`` where there is none.
        scan: the scan itself (for a registration), ``None`` where unknown.
    """

    report: Mapping[str, Any]
    path: Path
    infection: Path | None = None
    scan: Path | None = None


def find_case(path: str | Path, scan: str | Path | None = None) -> Case:
    """A case from what a user names: its report, its output prefix (``out/case``) or a folder
    holding one report; the infection mask beside the report when it was written (NIfTI).

    Args:
        path: the report, prefix or folder.
        scan: the scan that was segmented; default: the report's ``input`` where that file
            exists.

    Returns:
        The :class:`Case`: its report, and the infection mask and scan where they are found.

    Raises:
        DataError: no report there, a folder with several, or an unreadable report, or one
            without the numbers :func:`~covseg.followup.change.compare_reports` reads.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*_report.json"))
        if len(found) != 1:
            which = ": name one" if found else ""
            raise DataError(f"{path}: {len(found)} *_report.json files in the folder{which}")
        path = found[0]
    elif not path.exists() and not path.name.endswith(".json"):
        path = path.with_name(f"{path.name}_report.json")
    report = read_report(path)
    case = report.get("case")
    check_report(report, f"{path}: {case}" if isinstance(case, str) and case else str(path))
    mask = path.with_name(path.name.removesuffix("_report.json") + "_infection.nii.gz")
    given = report.get("input")
    if scan is None and isinstance(given, str) and given and Path(given).exists():
        scan = given
    return Case(
        report, path, mask if mask.is_file() else None, None if scan is None else Path(scan)
    )


def compare_cases(before: Case, after: Case, *, register: bool = False) -> FollowUp:
    """The change between two cases: their reports, and their infection masks voxel by voxel
    where both have one (brought together by world coordinates, after a rigid registration of
    the scans when ``register``).

    Args:
        before: the first scan's case (:func:`find_case`).
        after: the second scan's case.
        register: rigidly register the second scan onto the first before comparing masks.

    Returns:
        :func:`compare_reports`' change, with :attr:`FollowUp.voxels` filled where both cases
        have an infection mask.

    Raises:
        DataError: reports :func:`compare_reports` refuses, an unreadable mask or scan, a scan
            whose shape is not its mask's, or ``register`` without masks or scans.
        CovsegError: ``register`` without SimpleITK.
    """
    from covseg.data.io import read_image

    change = compare_reports(before.report, after.report)
    if before.infection is None or after.infection is None:
        if register:
            missing = before if before.infection is None else after
            raise DataError(f"{missing.path}: no infection mask beside it to register")
        return change
    a, b = (read_image(c.infection, labels=True) for c in (before, after))
    if a.affine is None or b.affine is None:
        raise DataError(f"{before.path}: the masks are pictures; no voxel-level change")
    transform = None
    if register:
        fixed, moving = (_scan(c, m.array.shape) for c, m in ((before, a), (after, b)))
        transform = rigid_transform(fixed.array, fixed.affine, moving.array, moving.affine)
    voxels = voxel_change(a.array, a.affine, b.array, b.affine, transform)
    return replace(change, voxels=voxels)


def _scan(case: Case, shape: tuple[int, ...]) -> Any:
    """The scan of ``case`` (an :class:`~covseg.data.io.Image`), checked against its mask."""
    from covseg.data.io import read_image

    if case.scan is None:
        raise DataError(f"{case.path}: registration needs the scan that was segmented")
    image = read_image(case.scan)
    if image.array.shape != tuple(shape):
        raise DataError(
            f"{case.scan}: shape {image.array.shape} is not its mask's {tuple(shape)} "
            "(not the scan that was segmented)"
        )
    return image
