"""``covseg segment``: a resumable, shardable batch of cases into one output folder.

Before any work: the inputs and their case names (:func:`~covseg.cohort.plan.plan_cases`), the
formats, the checkpoint (loaded and checked once here), and ``--out``
(:func:`~covseg.inference.outputs.check_output_dir`, which also removes what killed runs left).
Then this shard's cases that are not finished with the same model and settings run on an engine
(:mod:`covseg.cohort.engine`); a failed case is listed and the others go on. Each case's files
are renamed into place as one set under the folder's lock, so a batch killed at any moment and
run again loses nothing and does nothing twice. The cohort table is rewritten at the end
(:mod:`covseg.cohort.table`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covseg.cohort.engine import (
    Engine,
    Outcome,
    chunk_tasks,
    process_engine,
    segmenter_for,
    serial_engine,
)
from covseg.cohort.plan import Settings, Task, parse_shard, plan_cases, select_shard
from covseg.cohort.status import FAILED_DIR, clear_failure, is_done, settings_record
from covseg.cohort.table import write_cohort
from covseg.errors import DataError
from covseg.inference.outputs import check_formats, check_output_dir

__all__ = ["CohortRun", "segment_cohort"]

log = logging.getLogger(__name__)


@dataclass
class CohortRun:
    """What a batch did.

    Attributes:
        outcomes: one per case of this shard, in input order.
        rows: the cohort table written (every case of ``--out``).
        table: the path of ``cohort.csv``; ``None`` when the run created ``--out`` and no case
            succeeded: the folder is then removed (the failures were reported one line each).
    """

    outcomes: list[Outcome]
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: Path | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def segment_cohort(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    checkpoint: str | Path = "pretrained",
    tta: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    backend: str = "torch",
    intensity: str | None = None,
    framing: str | None = None,
    formats: Sequence[str] | None = None,
    overlay: str = "auto",
    redo: bool = False,
    shard: str | tuple[int, int] | None = None,
    jobs: int = 1,
    engine: Engine | None = None,
    progress: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
    labels: Mapping[str, str] | None = None,
    probability: bool = False,
) -> CohortRun:
    """Segment every input (files, DICOM folders, folders of them) into ``out_dir``.

    Args:
        inputs: paths given on the command line.
        out_dir: the output folder.
        checkpoint: a checkpoint path, or ``"pretrained"``.
        tta: flip test-time augmentation.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        backend: how the network runs.
        intensity: the intensity rule for every input (``"auto"``: told per scan); ``None``:
            the checkpoint's.
        framing: ``"full"`` or ``"lungs"``; ``None``: the checkpoint's.
        formats: mask formats (``nifti``, ``dicom-seg``); ``None``: the default per input.
        overlay: ``"auto"`` (volumes only; none above
            :data:`~covseg.cohort.plan.OVERLAY_AUTO_MAX` cases), ``"none"`` or ``"all"``.
        redo: segment again cases already finished with the same model and settings.
        shard: ``"i/n"`` or ``(i, n)``: this run's share of the cases
            (:func:`~covseg.cohort.plan.select_shard`); ``None``: all.
        jobs: worker processes (1: this process).
        engine: how the cases run (:data:`~covseg.cohort.engine.Engine`); ``None``: from
            ``jobs``.
        progress: a tqdm bar per volume on stderr (in this process only).
        on_outcome: called with each outcome as it comes (e.g. to print failures at once).
        labels: folders that stand for other inputs, and those inputs' names (zip files
            extracted by :func:`~covseg.data.io.archive.unzipped_inputs`): reports, the table
            and messages name the zip and its entries (:func:`~covseg.cohort.plan.plan_cases`).
        probability: also write each case's ``<case>_infection_prob`` (the calibrated infection
            probability, :mod:`covseg.inference.probability`).

    Returns:
        :class:`CohortRun`: the outcomes and the cohort table.

    Raises:
        DataError: before any work: a missing input, a folder with nothing readable, two inputs
            with one case name, a bad ``--shard``, ``--jobs`` or ``--format``, an unusable
            ``--out``.
        CheckpointError: the checkpoint fails its checks or has no lung head.
    """
    inputs = list(inputs)
    part = parse_shard(shard) if isinstance(shard, str) else shard
    if jobs < 1:
        raise DataError(f"--jobs {jobs}: expected at least 1")
    tasks = plan_cases(inputs, labels)
    if formats is not None:
        formats = check_formats(formats, [Path(t.input) for t in tasks])
    settings = Settings(
        out_dir=str(out_dir),
        checkpoint=str(checkpoint),
        tta=tta,
        batch_size=batch_size,
        device=device,
        backend=backend,
        intensity=intensity,
        framing=framing,
        formats=None if formats is None else tuple(formats),
        overlay=Settings.resolve_overlay(overlay, len(tasks)),
        redo=redo,
        progress=progress and jobs == 1 and engine is None,
        probability=probability,
    )
    seg = segmenter_for(settings)
    seg.require_lung_head()
    mine = select_shard(tasks, part)
    created = not Path(out_dir).exists()
    check_output_dir(out_dir, [Path(p) for p in inputs], len(mine))
    if engine is None:
        engine = serial_engine if jobs == 1 else functools.partial(process_engine, jobs=jobs)
    outcomes = _run(mine, settings, settings_record(seg, settings), engine, on_outcome)
    if created and all(o.status == "failed" for o in outcomes):
        _remove_created(Path(out_dir))  # nothing segmented: no folder of failure records
        return CohortRun(outcomes)
    rows = write_cohort(out_dir, {o.task.case: o.status for o in outcomes})
    run = CohortRun(outcomes, rows, Path(out_dir) / "cohort.csv")
    log.debug(
        "%s: %d done, %d skipped, %d failed",
        out_dir,
        run.count("done"),
        run.count("skipped"),
        run.count("failed"),
    )
    return run


def _run(
    tasks: list[Task],
    settings: Settings,
    record: dict[str, Any],
    engine: Engine,
    on_outcome: Callable[[Outcome], None] | None,
) -> list[Outcome]:
    """The outcomes of ``tasks`` in their order: the finished ones skipped here, the others
    from ``engine``."""
    by_case: dict[str, Outcome] = {}
    todo = []
    for task in tasks:
        if not settings.redo and is_done(task, record, settings):
            clear_failure(settings.out_dir, task.case)
            by_case[task.case] = Outcome(task, "skipped")
        else:
            todo.append(task)
    if by_case:
        log.debug("%d case(s) already done with this model and settings: skipped", len(by_case))
    for outcome in engine(chunk_tasks(todo, _jobs(engine)), settings):
        by_case[outcome.task.case] = outcome
        if on_outcome is not None:
            on_outcome(outcome)
    return [by_case[t.case] for t in tasks if t.case in by_case]


def _remove_created(out: Path) -> None:
    """Remove the failure records of a run that created ``out`` and segmented nothing, and
    ``out`` itself when nothing else was put there meanwhile (another run's cases stay)."""
    shutil.rmtree(out / FAILED_DIR, ignore_errors=True)
    with contextlib.suppress(OSError):
        out.rmdir()


def _jobs(engine: Engine) -> int:
    """The workers of an engine made by :func:`functools.partial` with ``jobs=``; else 1."""
    return int(getattr(engine, "keywords", {}).get("jobs", 1))
