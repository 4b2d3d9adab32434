"""A DICOM series uploaded as its files (a folder dropped on the page): open the series, send
each file as a request of its own, close it; the closed series is queued like a zipped one.

=======================================  ==================================================
``POST /api/series?name=N&files=K``      open a series of ``K`` files named ``N`` (the
                                         folder's name) -> ``{"id"}`` (201)
``POST /api/series/{id}/files?name=P``   one file (the body), ``P`` its path in the folder
                                         (for messages only) -> ``{"received"}``
``POST /api/series/{id}/done``           all files sent -> the queued job (202)
=======================================  ==================================================

The zip's limits hold: at most ``max_zip_files`` files and ``max_unzipped_bytes`` in all, each
file at most ``max_upload_bytes``. Files are stored under generated names
(``dicom/000000.dcm``...), never under the names sent. A refused file drops the whole series
(nothing partial is kept), and a series left open for :data:`IDLE_S` seconds is dropped when the
next one opens; the page then gets "no such series".
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from covseg.errors import CovsegError
from covseg.serve.jobs import Job, JobQueue
from covseg.serve.uploads import UploadError, case_for, display_name, receive

__all__ = ["IDLE_S", "ROUTES", "SeriesUploads"]

log = logging.getLogger(__name__)

#: Seconds an open series may wait for its next file.
IDLE_S = 600.0


@dataclass
class _Open:
    """A series being received."""

    name: str
    case: str
    folder: Path
    expected: int
    next_index: int = 0
    received: int = 0
    size: int = 0
    entries: dict[Path, str] = field(default_factory=dict)
    touched: float = field(default_factory=time.monotonic)


class SeriesUploads:
    """The series being uploaded, by id (the id their job will have).

    Args:
        jobs: the queue that closed series join (and that makes their folders).
    """

    def __init__(self, jobs: JobQueue) -> None:
        self.jobs = jobs
        self._open: dict[str, _Open] = {}

    def start(self, given: str, count: int) -> str:
        """Open a series of ``count`` files; its id.

        Raises:
            UploadError: no files, more than ``max_zip_files``, or a name too long for a case.
        """
        self.drop_idle()
        limit = self.jobs.config.max_zip_files
        if count < 1:
            raise UploadError("the folder holds no files")
        if count > limit:
            raise UploadError(f"the folder holds {count} files, more than {limit}")
        case = case_for(given)
        series_id, folder = self.jobs.new_folder()
        (folder / "dicom").mkdir(mode=0o700)
        self._open[series_id] = _Open(display_name(given), case, folder, count)
        return series_id

    async def add(self, series_id: str, entry: str, request: Request) -> int:
        """Store one file of an open series; the number of files received so far.

        Raises:
            KeyError: no such open series.
            UploadError: a file too large, more files or bytes than allowed; the series is
                dropped.
        """
        series = self._open[series_id]
        config = self.jobs.config
        if series.next_index >= series.expected:
            self.drop(series_id)
            raise UploadError(f"more files than the {series.expected} announced")
        index, series.next_index = series.next_index, series.next_index + 1
        path = series.folder / "dicom" / f"{index:06d}.dcm"
        left = config.max_unzipped_bytes - series.size
        try:
            size = await receive(request.stream(), path, max(min(config.max_upload_bytes, left), 0))
        except UploadError as err:
            self.drop(series_id)
            if err.status == 413 and left < config.max_upload_bytes:
                total = f"{config.max_unzipped_bytes / 2**20:.0f} MiB"
                raise UploadError(f"the files add up to more than {total}", 413) from None
            raise
        except BaseException:
            self.drop(series_id)
            raise
        series.size += size
        series.received += 1
        series.entries[path] = display_name(entry)
        series.touched = time.monotonic()
        return series.received

    def finish(self, series_id: str) -> Job:
        """Queue the series as a job.

        Raises:
            KeyError: no such open series.
            UploadError: fewer files arrived than announced; the series is dropped.
        """
        series = self._open.pop(series_id)
        if series.received != series.expected:
            shutil.rmtree(series.folder, ignore_errors=True)
            raise UploadError(f"{series.received} of the {series.expected} files arrived")
        source = series.folder / "dicom"
        job = Job(series_id, series.name, series.case, series.folder, source, series.entries)
        return self.jobs.submit(job)

    def name(self, series_id: str) -> str | None:
        """The shown name of an open series; ``None`` if there is no such open series."""
        series = self._open.get(series_id)
        return None if series is None else series.name

    def drop(self, series_id: str) -> None:
        series = self._open.pop(series_id, None)
        if series is not None:
            shutil.rmtree(series.folder, ignore_errors=True)

    def drop_idle(self) -> None:
        now = time.monotonic()
        for series_id in [k for k, s in self._open.items() if now - s.touched > IDLE_S]:
            log.warning("%s: dropped an upload left unfinished", self._open[series_id].name)
            self.drop(series_id)

    def drop_all(self) -> None:
        for series_id in list(self._open):
            self.drop(series_id)


# ------------------------------------------------------------------------------ routes
async def _start(request: Request) -> Response:
    given = request.query_params.get("name", "")
    try:
        count = int(request.query_params.get("files", "0"))
        series_id = request.app.state.series.start(given, count)
    except ValueError:
        return _refused(given, UploadError("the number of files is not a number"))
    except CovsegError as err:
        return _refused(given, err)
    return JSONResponse({"id": series_id}, status_code=201)


async def _add(request: Request) -> Response:
    uploads: SeriesUploads = request.app.state.series
    series_id = request.path_params["series_id"]
    entry = request.query_params.get("name", "")
    name = uploads.name(series_id)
    if name is None:
        return _no_such_series()
    try:
        received = await uploads.add(series_id, entry, request)
    except ClientDisconnect:
        log.warning("%s: the upload was interrupted", name)
        return Response(status_code=400)
    except CovsegError as err:
        return _refused(f"{name}: {display_name(entry)}", err)
    except OSError as err:  # a full disk, ...
        problem = f"the server cannot store the upload ({err.strerror or err})"
        return _refused(name, UploadError(problem, status=507))
    return JSONResponse({"received": received})


async def _finish(request: Request) -> Response:
    uploads: SeriesUploads = request.app.state.series
    series_id = request.path_params["series_id"]
    name = uploads.name(series_id)
    if name is None:
        return _no_such_series()
    try:
        job = uploads.finish(series_id)
    except CovsegError as err:
        return _refused(name, err)
    return JSONResponse(job.to_json(), status_code=202)


def _no_such_series() -> Response:
    return JSONResponse({"error": "no such series (refused, or left unfinished)"}, 404)


def _refused(name: str, err: CovsegError) -> Response:
    message = f"{display_name(name)}: {' '.join(str(err).split())}"
    log.warning("upload refused: %s", message)
    return JSONResponse({"error": message}, status_code=getattr(err, "status", 400))


ROUTES = [
    Route("/api/series", _start, methods=["POST"]),
    Route("/api/series/{series_id}/files", _add, methods=["POST"]),
    Route("/api/series/{series_id}/done", _finish, methods=["POST"]),
]
