"""The job queue of ``covseg serve``: one worker thread runs the cases one after the other
through the path ``covseg segment`` takes.

Why one thread: torch already spreads one case over the cores; two cases at once would only
fight over them and double the peak memory. The model is loaded once, by the worker, when the
server has started (so the port answers within a second or two while torch imports), and every
case then runs :func:`covseg.data.io.read_image` -> :meth:`Segmenter.predict_image
<covseg.inference.segmenter.Segmenter.predict_image>` -> :func:`covseg.inference.outputs.write_case`,
the three steps of :func:`covseg.inference.outputs.segment_file`, with the case named after the upload (its stored
name is generated) and the upload's name as the report's ``input``.

A job's folder (``<root>/<job id>/``) holds its stored upload, ``out/`` (``segment``'s files) and
``view/`` (the viewer's arrays, :mod:`covseg.serve.display`). A failed job's folder is removed whole:
nothing partial is kept, and the failure stays listed with its one-line message.

Stopping: a job is stopped between two batches of slices (the check that
:meth:`Segmenter.predict_image <covseg.inference.segmenter.Segmenter.predict_image>` calls
before each batch, and between the job's stages) when the server shuts down or when it has run
longer than ``job_timeout``; it then fails like any other job. The worker is not a daemon
thread: Python 3.11 ends a daemon thread that is inside torch at interpreter exit by unwinding
it through C++ code, which aborts the process ("terminate called without an active exception",
SIGABRT); so the exit waits for the worker, which stops within one batch.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covseg.errors import CovsegError
from covseg.serve.config import ServeConfig

if TYPE_CHECKING:  # the worker imports it (with numpy and nibabel) once the server answers
    from covseg.serve.display import DisplayVolumes

__all__ = ["DEMO_NAME", "VIEW_FILES", "Job", "JobQueue", "JobStopped"]

log = logging.getLogger(__name__)

#: The demo phantom: the fresh phantom that ``make demo`` segments (seed 7, 12 slices of 128 px).
DEMO_NAME = "demo_phantom.nii.gz"
_DEMO = {"seed": 7, "slices": 12, "size": 128}
#: The viewer's files of a done job: URL name -> :class:`DisplayVolumes` attribute.
VIEW_FILES = {"ct.raw": "ct", "labels.raw": "labels", "prob.raw": "probability"}


class JobStopped(CovsegError):
    """A job stopped between two batches: the server is shutting down, or the job ran past its
    time budget."""


@dataclass
class Job:
    """One submitted case.

    Attributes:
        id: a random hex id (the job's folder name and its URL).
        name: the upload's name as shown (:func:`covseg.serve.uploads.display_name`).
        case: the output prefix (:func:`covseg.inference.outputs.case_name` of the name).
        folder: the job's private folder.
        source: the stored input (a file, or the folder of an extracted DICOM series); ``None``
            for the demo phantom until the worker makes it.
        entries: for a zipped series, extracted file -> zip entry name (for messages).
        state: ``queued``, ``running``, ``done`` or ``failed``.
        stage: what the job is doing now, for the page.
        error: the one-line message of a failed job.
        report: the report JSON (``BurdenReport.to_dict()``) of a done job.
        downloads: ``segment``'s files of a done job (``lungs``, ``infection``, ``overlay``,
            ``report``, and ``probability`` unless the server runs with ``--no-probabilities``).
        display: the viewer's arrays of a done job.
        submitted: when the job was queued (seconds since the epoch).
        finished: when it ended (seconds since the epoch), ``None`` before.
        seconds: how long it ran.
    """

    id: str
    name: str
    case: str
    folder: Path
    source: Path | None
    entries: dict[Path, str] = field(default_factory=dict)
    state: str = "queued"
    stage: str = "waiting"
    error: str | None = None
    report: dict[str, Any] | None = None
    downloads: dict[str, Path] = field(default_factory=dict)
    display: DisplayVolumes | None = None
    submitted: float = field(default_factory=time.time)
    finished: float | None = None
    seconds: float | None = None

    def to_json(self, position: int | None = None) -> dict[str, Any]:
        """What the page polls (URLs for downloads and viewer volumes, never server paths)."""
        base = f"/api/jobs/{self.id}"
        return {
            "id": self.id,
            "name": self.name,
            "case": self.case,
            "state": self.state,
            "stage": self.stage,
            "position": position,
            "error": self.error,
            "submitted": self.submitted,
            "seconds": self.seconds,
            "finished": self.finished,
            "report": self.report,
            "downloads": {
                key: {"url": f"{base}/download/{key}", "filename": path.name}
                for key, path in self.downloads.items()
            },
            "display": None if self.display is None else self.display.to_json(f"{base}/view"),
        }


class JobQueue:
    """Jobs by id, in submission order, and the worker thread that runs them.

    Args:
        config: the server's settings (checkpoint, device, batch size, time budget).
        root: where job folders are made.
        clock: seconds for the time budget (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self, config: ServeConfig, root: Path, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.root = root
        self._clock = clock
        self.model_state = "loading"
        self.model_error: str | None = None
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._segmenter: Any = None
        self._running: Job | None = None
        self._stopping = threading.Event()
        # Not a daemon: see the module docstring (the exit waits for it, one batch at most).
        self._thread = threading.Thread(target=self._work, name="covseg-serve-worker")

    # ---------------------------------------------------------------------- the server side
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Drop the queued cases, stop the running one at its next batch (it fails, its folder
        removed) and wait up to ``timeout`` s for the worker to end.

        Returns:
            Whether the worker has ended (else it ends at its next check; the process's exit
            waits for it).
        """
        self._stopping.set()
        with self._lock:
            dropped = [job for job in self._jobs.values() if job.state == "queued"]
            for job in dropped:
                job.state, job.stage, job.error = "failed", "", "the server stopped"
        for job in dropped:  # their uploads too: nothing partial is kept (--data-dir)
            shutil.rmtree(job.folder, ignore_errors=True)
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its private folder (created, mode 0700)."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(mode=0o700)
        return job_id, folder

    def submit(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        self._queue.put(job)
        log.info("%s: queued as job %s", job.name, job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def snapshot(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The jobs as the page sees them (one job when ``job_id`` is given and known)."""
        with self._lock:
            waiting = [j.id for j in self._jobs.values() if j.state == "queued"]
            jobs = [self._jobs[job_id]] if job_id in self._jobs else []
            if job_id is None:
                jobs = list(self._jobs.values())
            return [j.to_json(waiting.index(j.id) + 1 if j.id in waiting else None) for j in jobs]

    def done(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.state == "done"]

    # ---------------------------------------------------------------------- the worker side
    def _work(self) -> None:
        self._load_model()
        while (job := self._queue.get()) is not None:
            if job.state == "queued" and not self._stopping.is_set():
                self._run(job)

    def _load_model(self) -> None:
        try:
            from covseg.inference.segmenter import Segmenter

            seg = Segmenter.from_checkpoint(
                self.config.checkpoint,
                device=self.config.device,
                batch_size=self.config.batch_size,
            )
            seg.require_lung_head()
        except CovsegError as err:
            self.model_state, self.model_error = "failed", " ".join(str(err).split())
            log.error("covseg serve: the model cannot be loaded: %s", self.model_error)
            return
        self._segmenter = seg
        self.model_state = "ready"
        log.info("covseg serve: model %s ready (%s)", seg.model_id[:12], seg.device)

    def _set(self, job: Job, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(job, key, value)

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        self._running = job
        self._set(job, state="running", stage="starting")
        try:
            if self._segmenter is None:
                raise CovsegError(f"the model cannot be loaded: {self.model_error}")
            fields = self._segment(job)
        except CovsegError as err:
            self._fail(job, _public(str(err), job))
            return
        except Exception as err:  # a bug must not stop the server: the job fails, it goes on
            log.exception("%s: unexpected error", job.name)
            self._fail(job, _public(f"internal error ({type(err).__name__}: {err})", job))
            return
        finally:
            self._running = None
        seconds = round(time.perf_counter() - t0, 3)
        self._set(job, state="done", stage="", seconds=seconds, finished=time.time(), **fields)
        log.info("%s: done in %.1f s (job %s)", job.name, job.seconds, job.id)

    def _segment(self, job: Job) -> dict[str, Any]:
        from covseg.data.geometry import canonical_view
        from covseg.data.io import read_image
        from covseg.inference.outputs import write_case
        from covseg.serve.display import display_volumes

        check = self._check(job)
        if job.source is None:
            self._set(job, stage="making the demo phantom")
            self._set(job, source=_make_demo(job.folder))
        self._set(job, stage="reading")
        image = read_image(job.source)
        check()
        n = canonical_view(image.array, image).shape[0]
        self._set(job, stage=f"segmenting {n} slice{'s' if n > 1 else ''}")
        wants = self.config.probabilities  # the page's threshold slider needs it
        result = self._segmenter.predict_image(image, check=check, probability=wants)
        result.report = result.report.replace(case=job.case, input=job.name)
        self._set(job, stage="writing the outputs")
        written = write_case(image, result, job.folder / "out")
        check()
        self._set(job, stage="preparing the viewer")
        display = display_volumes(
            image,
            result.lungs,
            result.infection,
            job.folder / "view",
            probability=result.probability,
            threshold=self._segmenter.post.threshold,
        )
        return {"report": result.report.to_dict(), "downloads": written, "display": display}

    def _check(self, job: Job) -> Callable[[], None]:
        """What the job calls between batches and stages: raises :class:`JobStopped` once the
        server is stopping or the job's time budget is spent."""
        budget = self.config.job_timeout
        deadline = self._clock() + budget

        def check() -> None:
            if self._stopping.is_set():
                raise JobStopped("stopped: the server is shutting down")
            if self._clock() > deadline:
                raise JobStopped(
                    f"stopped after {budget:g} s, the server's time limit per case "
                    "(covseg serve --job-timeout)"
                )

        return check

    def _fail(self, job: Job, message: str) -> None:
        shutil.rmtree(job.folder, ignore_errors=True)  # nothing partial is kept
        self._set(job, state="failed", stage="", error=message, finished=time.time())
        log.warning("%s: failed: %s", job.name, message)


def _make_demo(folder: Path) -> Path:
    """The demo phantom as ``folder/input.nii.gz``."""
    from covseg.data.synthetic import write_synthetic_dataset

    tmp = folder / "phantom"
    write_synthetic_dataset(tmp, "zenodo20", 1, **_DEMO)
    path = folder / "input.nii.gz"
    (tmp / "COVID-19-CT-Seg_20cases" / "coronacases_001.nii.gz").rename(path)
    shutil.rmtree(tmp)
    return path


def _public(message: str, job: Job) -> str:
    """A message with the server's own paths replaced by the names the user knows."""
    for path, entry in job.entries.items():
        message = message.replace(str(path), f"{job.name}: {entry}")
    if job.source is not None:
        message = message.replace(str(job.source), job.name)
    message = message.replace(str(job.folder), job.name)
    return " ".join(message.split())
