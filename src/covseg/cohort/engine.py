"""How a batch's cases run: the per-case work, and the engines that call it.

The work is :func:`run_cases` (and :func:`run_case` for one): top-level functions of picklable
arguments (:class:`~covseg.cohort.plan.Task`, :class:`~covseg.cohort.plan.Settings`) returning
picklable :class:`Outcome` s, with the model loaded once per process (:func:`segmenter_for`).
An engine takes the cases in chunks (:func:`chunk_tasks`) and yields their outcomes as they
finish::

    Engine = Callable[[Sequence[Sequence[Task]], Settings], Iterator[Outcome]]

:func:`serial_engine` runs them in this process; :func:`process_engine` in ``jobs`` worker
processes (``forkserver``, or ``spawn`` where that is missing: never ``fork`` under torch's
threads), each loading the model once in its initializer and running ``torch threads // jobs``
threads. A cluster engine plugs in the same way (submit ``run_cases`` per chunk, yield the
outcomes). A case that fails is an outcome, never an exception: the batch goes on; only
``KeyboardInterrupt`` (SIGTERM included) stops it.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from covseg.cohort.batch import segment_pictures
from covseg.cohort.plan import Settings, Task
from covseg.cohort.status import (
    clear_failure,
    input_stamp,
    is_done,
    settings_record,
    write_failure,
)
from covseg.data.io import Image, read_image
from covseg.data.io.common import is_picture
from covseg.errors import CovsegError
from covseg.inference.burden import BurdenReport
from covseg.inference.outputs import case_formats, output_names, write_case
from covseg.inference.segmenter import Segmenter, SegmentResult

__all__ = [
    "Engine",
    "Outcome",
    "chunk_tasks",
    "failed_outcome",
    "init_worker",
    "process_engine",
    "run_case",
    "run_cases",
    "segmenter_for",
    "serial_engine",
]

log = logging.getLogger(__name__)

#: Most pictures segmented together in one chunk (and read into memory at once).
MAX_CHUNK = 32
#: Pictures up to this many pixels are batched with others; larger ones run alone.
SMALL_PICTURE = 512 * 512
#: A chunk in flight when this many worker processes died fails its cases.
MAX_STRIKES = 2

_SEGMENTERS: dict[tuple, Segmenter] = {}


@dataclass(frozen=True)
class Outcome:
    """What became of one case.

    Attributes:
        task: the case.
        status: ``"done"``, ``"skipped"`` (complete outputs of the same model and settings were
            there) or ``"failed"``.
        reason: the one-line problem of a failed case (naming its input), else ``None``.
        report: the burden report of a ``"done"`` case, else ``None``.
        seconds: wall time spent on the case (a batched picture: its share of the batch).
    """

    task: Task
    status: str
    reason: str | None = None
    report: BurdenReport | None = None
    seconds: float = 0.0


Engine = Callable[[Sequence[Sequence[Task]], Settings], Iterator[Outcome]]


def segmenter_for(settings: Settings) -> Segmenter:
    """The model of ``settings``, loaded once per process and kept.

    Raises:
        CheckpointError: the checkpoint fails its checks.
    """
    key = (
        settings.checkpoint,
        settings.device,
        settings.batch_size,
        settings.tta,
        settings.backend,
        settings.intensity,
        settings.framing,
    )
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = Segmenter.from_checkpoint(
            settings.checkpoint,
            device=settings.device,
            batch_size=settings.batch_size,
            tta=settings.tta,
            backend=settings.backend,
            intensity=settings.intensity,
            framing=settings.framing,
        )
    return _SEGMENTERS[key]


def run_case(task: Task, settings: Settings) -> Outcome:
    """Segment one case and write its outputs (:func:`run_cases` of one task)."""
    return run_cases([task], settings)[0]


def run_cases(tasks: Sequence[Task], settings: Settings) -> list[Outcome]:
    """Segment cases into ``settings.out_dir``, small pictures several per forward pass
    (:func:`~covseg.cohort.batch.segment_pictures`); a case whose outputs are complete with the
    same model and settings is skipped (unless ``settings.redo``).

    Returns:
        One :class:`Outcome` per task, in order; a failed case's failure is recorded in
        ``out_dir`` (:mod:`covseg.cohort.status`) and a done or skipped case's cleared.
    """
    seg = segmenter_for(settings)
    record = settings_record(seg, settings)
    outcomes: list[Outcome | None] = [None] * len(tasks)
    pictures: list[tuple[int, Image, dict]] = []
    for i, task in enumerate(tasks):
        start = time.perf_counter()
        if not settings.redo and is_done(task, record, settings):
            clear_failure(settings.out_dir, task.case)
            outcomes[i] = Outcome(task, "skipped")
            continue
        try:
            # Stamped before it is read: a scan replaced while it runs is redone next time.
            stamped = record | {"input_stamp": input_stamp(task)}
            image = read_image(Path(task.input))
            if image.array.ndim == 2 and image.array.size <= SMALL_PICTURE:
                pictures.append((i, image, stamped))
                continue
            result = seg.predict_image(image, settings.progress, probability=settings.probability)
            outcomes[i] = _write(task, image, result, stamped, settings, start)
        except Exception as err:  # one case's problem never stops the batch
            outcomes[i] = failed_outcome(task, err, settings, time.perf_counter() - start)
    if pictures:
        start = time.perf_counter()
        try:
            results = segment_pictures(
                seg, [image for _, image, _ in pictures], probability=settings.probability
            )
        except Exception as err:
            results = [err] * len(pictures)  # type: ignore[list-item]
        share = (time.perf_counter() - start) / len(pictures)
        for (i, image, stamped), result in zip(pictures, results, strict=True):
            t0 = time.perf_counter() - share
            try:
                if isinstance(result, Exception):
                    raise result
                outcomes[i] = _write(tasks[i], image, result, stamped, settings, t0)
            except Exception as err:
                outcomes[i] = failed_outcome(tasks[i], err, settings, share)
    return [o for o in outcomes if o is not None]


def _write(
    task: Task,
    image: Image,
    result: SegmentResult,
    record: dict,
    settings: Settings,
    start: float,
) -> Outcome:
    """Write a segmented case (:func:`~covseg.inference.outputs.write_case`) with its settings
    record; the ``"done"`` outcome."""
    result.report = result.report.replace(case=task.case, input=task.name)
    formats = case_formats(settings.formats, image)
    overlay = settings.wants_overlay(image.array.ndim)
    names = output_names(task.case, image, formats, probability=settings.probability)
    if not overlay:
        del names["overlay"]
    stored = record | {"overlay": overlay, "files": sorted(names.values())}
    write_case(image, result, settings.out_dir, formats=formats, overlay=overlay, settings=stored)
    clear_failure(settings.out_dir, task.case)
    return Outcome(task, "done", report=result.report, seconds=time.perf_counter() - start)


def failed_outcome(
    task: Task, err: BaseException, settings: Settings, seconds: float = 0.0
) -> Outcome:
    """The ``"failed"`` outcome of ``task`` for ``err``, its reason recorded in ``out_dir``:
    one line naming the input (covseg's errors name it already; anything else is an
    unexpected error, logged with its traceback at debug level)."""
    text = " ".join(str(err).split())
    if not isinstance(err, CovsegError):
        log.debug("%s: unexpected error", task.input, exc_info=err)
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    if task.label:  # name the zip's entry, not where it was extracted
        text = text.replace(task.input, task.label)
    reason = text if task.name in text else f"{task.name}: {text}"
    try:
        write_failure(settings.out_dir, task, reason)
    except OSError as os_err:
        log.warning("%s: cannot record the failure (%s)", task.input, os_err.strerror or os_err)
    return Outcome(task, "failed", reason=reason, seconds=seconds)


def chunk_tasks(tasks: Sequence[Task], jobs: int = 1) -> list[list[Task]]:
    """The tasks in run order, in chunks: consecutive picture inputs together (up to
    :data:`MAX_CHUNK`, fewer when that spreads them over all ``jobs``), every other input alone.
    """
    n_pictures = sum(is_picture(Path(t.input)) for t in tasks)
    size = max(1, min(MAX_CHUNK, math.ceil(n_pictures / (4 * jobs)) if jobs > 1 else MAX_CHUNK))
    chunks: list[list[Task]] = []
    for task in tasks:
        picture = is_picture(Path(task.input))
        last = chunks[-1] if chunks else None
        if picture and last and len(last) < size and is_picture(Path(last[-1].input)):
            last.append(task)
        else:
            chunks.append([task])
    return chunks


def serial_engine(chunks: Sequence[Sequence[Task]], settings: Settings) -> Iterator[Outcome]:
    """Run the chunks one after the other in this process."""
    for chunk in chunks:
        yield from run_cases(chunk, settings)


def process_engine(
    chunks: Sequence[Sequence[Task]], settings: Settings, *, jobs: int
) -> Iterator[Outcome]:
    """Run the chunks in ``jobs`` worker processes (see the module docstring).

    At most ``jobs`` chunks are handed out at a time, so when a worker dies (killed, out of
    memory) the chunks it may have held are known: they are tried again in a fresh pool, and
    one that was in flight at :data:`MAX_STRIKES` deaths fails its cases; the others go on.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; the workers are stopped (what they leave behind
            is removed by the next run, :func:`covseg.files.remove_stale`).
    """
    import torch

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    initargs = (settings, max(1, torch.get_num_threads() // jobs), logging.getLogger().level)
    queue = [list(chunk) for chunk in reversed(chunks)]  # popped from the end: in order
    strikes: dict[int, int] = {}
    while queue:
        pool = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context(method),
            initializer=init_worker,
            initargs=initargs,
        )
        flying: dict[Future, list[Task]] = {}
        try:
            while queue or flying:
                while queue and len(flying) < jobs:
                    chunk = queue.pop()
                    flying[pool.submit(run_cases, chunk, settings)] = chunk
                done, _ = wait(flying, return_when=FIRST_COMPLETED)
                for future in done:
                    chunk = flying.pop(future)
                    if future.exception() is None:
                        yield from future.result()
                        continue
                    key = id(chunk)  # a worker died: retry what was in flight, or give up
                    strikes[key] = strikes.get(key, 0) + 1
                    if strikes[key] < MAX_STRIKES:
                        queue.append(chunk)
                        continue
                    lost = RuntimeError(f"worker process lost ({future.exception()})")
                    yield from (failed_outcome(task, lost, settings) for task in chunk)
                if any(f.done() and f.exception() is not None for f in done):
                    break  # the pool is broken: a fresh one for the rest
        except BaseException:
            # Stop at once rather than finish the cases in flight (no public way to do it).
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            raise
        finally:
            queue.extend(flying.values())
            pool.shutdown(wait=True, cancel_futures=True)


def init_worker(settings: Settings, threads: int, level: int) -> None:
    """A worker's start: its share of the threads, quiet library warnings (as the CLI), and the
    model loaded once."""
    import torch

    logging.basicConfig(level=level, format="%(message)s")
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.ERROR
    )
    torch.set_num_threads(threads)
    segmenter_for(settings)
