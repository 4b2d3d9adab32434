"""The cohort table: ``cohort.csv`` (and ``cohort.parquet`` where ``pyarrow`` is installed), one
row per case of ``--out``.

It is built from what the folder holds, not from one run's memory: every complete case's report
(:func:`~covseg.inference.outputs.write_case`) and every failure record
(:mod:`covseg.cohort.status`). Each batch rewrites it under the folder's lock when it ends, so the
last rerun or shard to finish leaves the table of the whole cohort. A case this run reused from an
earlier one is ``skipped``; one it could not segment is ``failed`` with its one-line reason;
every other complete case is ``done``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covseg._version import __version__
from covseg.cohort.status import read_failures
from covseg.files import atomic_path, folder_lock, write_text

__all__ = ["COLUMNS", "cohort_rows", "write_cohort"]

log = logging.getLogger(__name__)

#: The table's columns, in order (percentages are of the predicted lungs).
COLUMNS = (
    "input",
    "case",
    "status",
    "reason",
    "lung_ml",
    "infection_ml",
    "infected_percent",
    "left_infected_percent",
    "right_infected_percent",
    "expected_percent",
    "interval_low_percent",
    "interval_high_percent",
    "slices",
    "spacing_mm",
    "intensity_rule",
    "framing",
    "tta",
    "model_id",
    "covseg_version",
)


def _report_row(report: Mapping[str, Any]) -> dict[str, Any]:
    """The table's values of one ``<case>_report.json``."""
    est = report.get("infection_estimate") or {}
    interval = est.get("interval_percent") or [None, None]
    spacing = report.get("spacing_mm")
    return {
        "input": report.get("input"),
        "case": report.get("case"),
        "lung_ml": report.get("lung_volume_ml"),
        "infection_ml": report.get("infection_volume_ml"),
        "infected_percent": report.get("infection_percent"),
        "left_infected_percent": (report.get("left") or {}).get("infection_percent"),
        "right_infected_percent": (report.get("right") or {}).get("infection_percent"),
        "expected_percent": est.get("expected_percent"),
        "interval_low_percent": interval[0],
        "interval_high_percent": interval[1],
        "slices": len(report.get("infection_area_per_slice") or ()),
        "spacing_mm": None if not spacing else "x".join(f"{s:g}" for s in spacing),
        "intensity_rule": report.get("intensity_rule"),
        "framing": report.get("framing"),
        "tta": report.get("tta"),
        "model_id": report.get("model_id"),
        "covseg_version": report.get("covseg_version"),
    }


def cohort_rows(out_dir: str | Path, statuses: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per case of ``out_dir`` (complete reports and failure records), by case name.

    Args:
        out_dir: the output folder.
        statuses: this run's status by case (``"skipped"`` for reused cases); other complete
            cases are ``"done"``.

    Returns:
        Dicts with the keys of :data:`COLUMNS`.
    """
    out = Path(out_dir)
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*_report.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict) or not isinstance(report.get("case"), str):
            continue
        case = report["case"]
        rows[case] = {**_report_row(report), "status": statuses.get(case, "done"), "reason": None}
    for case, failure in read_failures(out).items():
        rows[case] = {
            **dict.fromkeys(COLUMNS),
            "input": failure.get("input"),
            "case": case,
            "status": "failed",
            "reason": failure.get("reason"),
            "covseg_version": __version__,
        }
    return [{key: rows[case].get(key) for key in COLUMNS} for case in sorted(rows)]


def write_cohort(out_dir: str | Path, statuses: Mapping[str, str]) -> list[dict[str, Any]]:
    """Write ``cohort.csv`` (and ``cohort.parquet`` where ``pyarrow`` imports) into ``out_dir``,
    atomically, under its lock.

    Returns:
        The rows written (:func:`cohort_rows`).
    """
    out = Path(out_dir)
    with folder_lock(out):
        rows = cohort_rows(out, statuses)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(out / "cohort.csv", text.getvalue())
        _write_parquet(out / "cohort.parquet", rows)
    return rows


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as Parquet at ``path`` when ``pyarrow`` is installed (an optional extra)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        log.debug("pyarrow not installed: no %s", path.name)
        return
    table = pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in COLUMNS})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, str(tmp))
