"""Follow-up of one patient: what changed between two scans.

:mod:`.change` compares two reports region by region and two infection masks voxel by voxel
(arrays in, no files); :mod:`.cases` finds a case's report, mask and scan on disk and compares
two cases (``covseg compare-scans``, the viewer's comparison).
"""

from __future__ import annotations

from covseg.followup.cases import Case, compare_cases, find_case, read_report
from covseg.followup.change import (
    FollowUp,
    RegionChange,
    compare_reports,
    mask_change,
    resample_onto,
    rigid_transform,
    voxel_change,
)

__all__ = [
    "Case",
    "FollowUp",
    "RegionChange",
    "compare_cases",
    "compare_reports",
    "find_case",
    "mask_change",
    "read_report",
    "resample_onto",
    "rigid_transform",
    "voxel_change",
]
