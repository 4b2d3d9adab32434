"""What ``--out`` says about each case: finished with the same model and settings, or failed.

A case is finished when its ``<case>_report.json`` (renamed into place last, under the folder's
lock, :func:`~covseg.inference.outputs.write_case`) names the same input and holds a
``"settings"`` record equal to this run's (:func:`settings_record`: the weights' sha256, TTA,
intensity rule, framing, backend, formats, probability output), its input is unchanged since
(:func:`input_stamp`: size and modification time, taken before the input was read), and every
file that record lists is there. A failed case leaves a small JSON record in the hidden folder :data:`FAILED_DIR`
of ``--out``, removed when the case later succeeds; with the reports these make the cohort table
complete across reruns, shards and machines sharing the folder (:mod:`covseg.cohort.table`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from covseg.cohort.plan import Settings, Task
from covseg.files import folder_lock, write_json
from covseg.inference.segmenter import Segmenter

__all__ = [
    "FAILED_DIR",
    "clear_failure",
    "input_stamp",
    "is_done",
    "read_failures",
    "settings_record",
    "write_failure",
]

#: The hidden folder of ``--out`` holding one ``<case>.json`` per failed case.
FAILED_DIR = ".covseg-failed"
#: What a settings record written before one of its keys existed means by its absence: outputs
#: of an earlier covseg (no probability output) still count as done for a run without one.
_ABSENT = {"probability": False}


def settings_record(seg: Segmenter, settings: Settings) -> dict[str, Any]:
    """What makes a case's outputs what they are, as stored in its report's ``"settings"``
    (besides ``"overlay"`` and ``"files"``, added per case). The device and batch size are left
    out: they change the run, not the result."""
    return {
        "model_id": seg.model_id,
        "tta": seg.tta,
        "intensity": seg.intensity,
        "framing": seg.framing,
        "backend": settings.backend,
        "formats": None if settings.formats is None else list(settings.formats),
        "probability": settings.probability,
    }


def input_stamp(task: Task) -> dict[str, int] | None:
    """The number of files, bytes and newest modification time (ns) of what ``task`` reads:
    its file, every file of its DICOM folder, or the zip file it came from (``task.source``).
    Another scan copied over the same name changes it (``cp -p`` too: size or time differ).

    Returns:
        The stamp, or ``None`` where the input cannot be listed (never equal to a stored one).
    """
    path = Path(task.source or task.input)
    try:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stats = [p.stat() for p in files]
    except OSError:
        return None
    return {
        "files": len(stats),
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


def is_done(task: Task, record: dict[str, Any], settings: Settings) -> bool:
    """Whether ``task``'s outputs in ``settings.out_dir`` are complete and made by the same
    input, unchanged since (:func:`input_stamp`), model and settings (``record``:
    :func:`settings_record`), with an overlay where ``settings`` asks for one. Outputs of a
    covseg that stored no stamp are made again."""
    out = Path(settings.out_dir)
    try:
        report = json.loads((out / f"{task.case}_report.json").read_text())
    except (OSError, ValueError):
        return False
    stored = report.get("settings") if isinstance(report, dict) else None
    if not isinstance(stored, dict) or report.get("input") != task.name:
        return False
    if any(stored.get(key, _ABSENT.get(key)) != value for key, value in record.items()):
        return False
    stamp = stored.get("input_stamp")
    if stamp is None or stamp != input_stamp(task):
        return False
    shape = report.get("shape")
    if settings.wants_overlay(len(shape) if isinstance(shape, list) else 0) and not stored.get(
        "overlay"
    ):
        return False
    files = stored.get("files")
    return isinstance(files, list) and all((out / str(name)).is_file() for name in files)


def write_failure(out_dir: str | Path, task: Task, reason: str) -> None:
    """Record that ``task`` failed, with its one-line reason (replacing an earlier record)."""
    out = Path(out_dir)
    with folder_lock(out):
        write_json(
            out / FAILED_DIR / f"{task.case}.json",
            {"case": task.case, "input": task.name, "reason": reason},
        )


def clear_failure(out_dir: str | Path, case: str) -> None:
    """Remove ``case``'s failure record, and the folder once empty."""
    out = Path(out_dir)
    record = out / FAILED_DIR / f"{case}.json"
    if not record.exists():
        return
    with folder_lock(out):
        record.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: other failures stay listed
            record.parent.rmdir()


def read_failures(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The failure records in ``out_dir``, by case name (unreadable ones are skipped)."""
    folder = Path(out_dir) / FAILED_DIR
    found: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError):
        for path in sorted(folder.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                if isinstance(data, dict) and isinstance(data.get("case"), str):
                    found[data["case"]] = data
    return found
