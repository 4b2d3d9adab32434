"""The CSV summary of the cases a server has segmented: one row per case, the report's numbers
as the report JSON holds them (empty where the report has ``null``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

__all__ = ["COLUMNS", "summary_csv"]

#: Column -> where its value sits in the report JSON.
COLUMNS: dict[str, tuple[str | int, ...]] = {
    "case": ("case",),
    "input": ("input",),
    "lung_ml": ("lung_volume_ml",),
    "infection_ml": ("infection_volume_ml",),
    "infected_percent": ("infection_percent",),
    "left_lung_ml": ("left", "lung_volume_ml"),
    "left_infected_percent": ("left", "infection_percent"),
    "right_lung_ml": ("right", "lung_volume_ml"),
    "right_infected_percent": ("right", "infection_percent"),
    "expected_infected_percent": ("infection_estimate", "expected_percent"),
    "interval_low_percent": ("infection_estimate", "interval_percent", 0),
    "interval_high_percent": ("infection_estimate", "interval_percent", 1),
}


def summary_csv(reports: Iterable[dict[str, Any]]) -> str:
    """The CSV text (header + one row per report JSON)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for report in reports:
        writer.writerow(_cell(_get(report, keys)) for keys in COLUMNS.values())
    return out.getvalue()


def _get(report: dict[str, Any], keys: tuple[str | int, ...]) -> Any:
    value: Any = report
    for key in keys:
        if isinstance(key, int):
            value = value[key] if isinstance(value, list) and len(value) > key else None
        else:
            value = value.get(key) if isinstance(value, dict) else None
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)  # floats as repr: the report's exact value
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text  # a spreadsheet must not run a case name as a formula
    return text
