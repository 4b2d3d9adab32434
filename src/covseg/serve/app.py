"""The web app of ``covseg serve`` (Starlette, run by uvicorn) and the function that runs it.

Starlette rather than FastAPI: a dozen routes, raw-body uploads and file responses need no
validation layer. Uploads are the request body itself (``POST /api/jobs?name=<file name>``,
``Content-Type: application/octet-stream``), streamed into the job's private folder with the
size limit enforced while it arrives; a multipart form would be spooled by the form parser into
the system's temporary folder first, with no limit on file parts.

Routes (all JSON but the page, the files and the CSV):

=======================================  ==================================================
``GET /``                                the page (``static/index.html``)
``GET /static/...``                      our scripts and style
``GET /api/status``                      version, model state, limits
``GET /api/jobs``                        every job since the server started
``POST /api/jobs?name=N``                an upload -> a queued job (202), or ``{"error"}``
``POST /api/demo``                       the demo phantom -> a queued job (202)
``POST /api/series...``                  a DICOM series sent file by file
                                         (:mod:`covseg.serve.series`)
``GET /api/jobs/{id}``                   one job (state, stage, report, URLs)
``GET /api/jobs/{id}/view/{file}``       ``ct.raw``/``labels.raw``/``prob.raw``: the
                                         viewer's arrays (:mod:`covseg.serve.display`)
``GET /api/jobs/{id}/download/{file}``   ``segment``'s ``lungs``/``infection``/``overlay``/
                                         ``report`` file, unchanged
``GET /api/summary.csv``                 one row per done case
``GET /api/compare?before=A&after=B``    two done cases compared (:mod:`covseg.serve.compare`)
=======================================  ==================================================

Safety: a loopback server answers only requests whose ``Host`` is a loopback name (a web page
cannot reach it by DNS rebinding), state-changing requests from another origin are refused,
every response forbids framing and sniffing, and the page's Content-Security-Policy lets it load
nothing that this server does not serve.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from covseg._version import __version__
from covseg.data.io.archive import extract_zip, inspect_zip
from covseg.errors import CovsegError
from covseg.serve.compare import ROUTES as COMPARE_ROUTES
from covseg.serve.config import ServeConfig, is_loopback
from covseg.serve.jobs import DEMO_NAME, VIEW_FILES, Job, JobQueue
from covseg.serve.series import ROUTES as SERIES_ROUTES
from covseg.serve.series import SeriesUploads
from covseg.serve.summary import summary_csv
from covseg.serve.uploads import (
    INPUT_NAMES,
    UploadError,
    case_for,
    display_name,
    receive,
    sniff,
    too_large,
)

__all__ = ["STATIC", "create_app", "serve"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", _CSP.encode()),
]
_NO_CACHE = {"Cache-Control": "no-store"}


def create_app(config: ServeConfig, root: Path) -> Starlette:
    """The app, its jobs kept under ``root`` (which must exist); the worker runs while the app's
    lifespan does (uvicorn's, or a ``TestClient`` used as a context manager)."""
    jobs = JobQueue(config, root)
    series = SeriesUploads(jobs)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        jobs.start()
        try:
            yield
        finally:
            series.drop_all()
            await run_in_threadpool(jobs.stop)

    routes = [
        Route("/", _page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/status", _status, methods=["GET"]),
        Route("/api/jobs", _list, methods=["GET"]),
        Route("/api/jobs", _upload, methods=["POST"]),
        Route("/api/demo", _demo, methods=["POST"]),
        Route("/api/jobs/{job_id}", _job, methods=["GET"]),
        Route("/api/jobs/{job_id}/view/{name}", _view, methods=["GET"]),
        Route("/api/jobs/{job_id}/download/{key}", _download, methods=["GET"]),
        Route("/api/summary.csv", _summary, methods=["GET"]),
        *SERIES_ROUTES,
        *COMPARE_ROUTES,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.jobs = jobs
    app.state.series = series
    app.state.config = config
    app.add_middleware(_Guard, private=config.private)
    return app


# ------------------------------------------------------------------------------ routes
async def _page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=_NO_CACHE)


async def _status(request: Request) -> Response:
    jobs: JobQueue = request.app.state.jobs
    config: ServeConfig = request.app.state.config
    return JSONResponse(
        {
            "version": __version__,
            "model": {"state": jobs.model_state, "error": jobs.model_error},
            "max_upload_bytes": config.max_upload_bytes,
            "private": config.private,
        },
        headers=_NO_CACHE,
    )


async def _list(request: Request) -> Response:
    return JSONResponse({"jobs": request.app.state.jobs.snapshot()}, headers=_NO_CACHE)


async def _job(request: Request) -> Response:
    found = request.app.state.jobs.snapshot(request.path_params["job_id"])
    if not found:
        return _error("no such job", 404)
    return JSONResponse(found[0], headers=_NO_CACHE)


async def _upload(request: Request) -> Response:
    jobs: JobQueue = request.app.state.jobs
    config: ServeConfig = request.app.state.config
    given = request.query_params.get("name", "")
    name = display_name(given)
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        declared = 0
    if declared > config.max_upload_bytes:  # refused before a byte is read
        return _refused(name, too_large(config.max_upload_bytes))
    job_id, folder = jobs.new_folder()
    try:
        raw = folder / "upload"
        await receive(request.stream(), raw, config.max_upload_bytes)
        job = await run_in_threadpool(_accept, jobs, job_id, folder, given, raw)
    except ClientDisconnect:
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("%s: the upload was interrupted", name)
        return Response(status_code=400)
    except CovsegError as err:
        shutil.rmtree(folder, ignore_errors=True)
        return _refused(name, err)
    except OSError as err:  # a full disk, ...
        shutil.rmtree(folder, ignore_errors=True)
        problem = f"the server cannot store the upload ({err.strerror or err})"
        return _refused(name, UploadError(problem, status=507))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return JSONResponse(job.to_json(), status_code=202)


def _accept(jobs: JobQueue, job_id: str, folder: Path, given: str, raw: Path) -> Job:
    """Type the stored upload by its content, extract a zipped series, queue the job (its
    case named from the name ``given`` for the upload, as ``segment`` names cases)."""
    kind = sniff(raw)
    case = case_for(given)
    entries: dict[Path, str] = {}
    if kind == "zip":
        source = folder / "dicom"
        config = jobs.config
        plan = inspect_zip(raw, max_bytes=config.max_unzipped_bytes, max_files=config.max_zip_files)
        if plan.images:
            raise UploadError(
                f"the zip holds {len(plan.images)} NIfTI/PNG/JPEG file(s); the viewer takes a "
                "zip of one DICOM series (upload those files one by one)"
            )
        entries = extract_zip(plan, source)
        raw.unlink()
    else:
        source = folder / INPUT_NAMES[kind]
        raw.rename(source)
    return jobs.submit(Job(job_id, display_name(given), case, folder, source, entries))


async def _demo(request: Request) -> Response:
    jobs: JobQueue = request.app.state.jobs
    job_id, folder = jobs.new_folder()
    job = jobs.submit(Job(job_id, DEMO_NAME, "demo_phantom", folder, None))
    return JSONResponse(job.to_json(), status_code=202)


def _done_job(request: Request) -> Job | None:
    job = request.app.state.jobs.get(request.path_params["job_id"])
    return job if job is not None and job.state == "done" else None


async def _view(request: Request) -> Response:
    job = _done_job(request)
    name = request.path_params["name"]
    if job is None or job.display is None or name not in VIEW_FILES:
        return _error("no such volume", 404)
    path = getattr(job.display, VIEW_FILES[name])
    if path is None:  # prob.raw of a server run with --no-probabilities
        return _error("no such volume", 404)
    return FileResponse(path, media_type="application/octet-stream")


async def _download(request: Request) -> Response:
    job = _done_job(request)
    key = request.path_params["key"]
    if job is None or key not in job.downloads:
        return _error("no such file", 404)
    path = job.downloads[key]
    return FileResponse(path, filename=path.name, media_type=_media_type(path))


def _media_type(path: Path) -> str:
    if path.name.endswith(".gz"):
        return "application/gzip"
    return {".png": "image/png", ".json": "application/json"}.get(
        path.suffix, "application/octet-stream"
    )


async def _summary(request: Request) -> Response:
    text = summary_csv(job.report for job in request.app.state.jobs.done() if job.report)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="covseg_summary.csv"', **_NO_CACHE},
    )


def _error(message: str, status: int) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _refused(name: str, err: CovsegError) -> Response:
    message = f"{name}: {' '.join(str(err).split())}"
    log.warning("upload refused: %s", message)
    return _error(message, getattr(err, "status", 400))


# -------------------------------------------------------------------------- the guard
class _Guard:
    """Pure ASGI middleware (see the module docstring: Host, Origin, security headers)."""

    def __init__(self, app: ASGIApp, private: bool) -> None:
        self.app = app
        self.private = private

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        problem = None
        if self.private and not is_loopback(urlsplit(f"//{host}").hostname or ""):
            problem = (400, f"this server answers only on a loopback address, not {host!r}")
        elif _cross_origin(scope["method"], headers):
            problem = (403, "requests from another web site are refused")
        if problem is not None:
            log.warning("refused %s %s: %s", scope["method"], scope["path"], problem[1])
            await _error(problem[1], problem[0])(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _cross_origin(method: str, headers: Headers) -> bool:
    """A state-changing request sent by a page of another origin (browsers send ``Origin``)."""
    if method in ("GET", "HEAD") or "origin" not in headers:
        return False
    return urlsplit(headers["origin"]).netloc != headers.get("host", "")


# ------------------------------------------------------------------------------ serve
def serve(config: ServeConfig) -> None:
    """Run the viewer until Ctrl-C / SIGTERM; the temporary folder is removed however it ends.

    Raises:
        CovsegError: a checkpoint file that does not exist, or an address that cannot be bound.
    """
    import uvicorn

    class _SignalledServer(uvicorn.Server):
        """uvicorn's server, remembering the signals that stopped it."""

        def __init__(self, cfg: uvicorn.Config) -> None:
            super().__init__(cfg)
            self.signals: list[int] = []

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.signals.append(sig)
            super().handle_exit(sig, frame)

    if config.checkpoint != "pretrained" and not Path(config.checkpoint).is_file():
        raise CovsegError(f"{config.checkpoint}: no such checkpoint file")
    sock = _listen(config.host, config.port)
    root, owned = _workspace(config.data_dir)
    try:
        app = create_app(config, root)
        url = _url(sock)
        if not config.private:
            log.warning(
                "WARNING: covseg serve listens on %s, not on a loopback address: anyone who can "
                "reach this machine can upload scans and read every result, with no password. "
                "Use it only on a network you trust.",
                config.host,
            )
        log.info("covseg serve: %s  (Ctrl-C stops it)", url)
        log.info(
            "covseg serve: uploads and results in %s (%s)",
            root,
            "removed on exit" if owned else "kept",
        )
        uv = uvicorn.Config(app, log_config=None, log_level="warning", timeout_graceful_shutdown=5)
        server = _SignalledServer(uv)
        server.run(sockets=[sock])
        if server.signals and server.signals[0] == signal.SIGINT:
            # uvicorn re-raises the signal after its shutdown, but asyncio's runner can swallow
            # a re-raised SIGINT when the server's task ends at that moment (seen under load):
            # Ctrl-C must still end the command as interrupted (exit 130).
            raise KeyboardInterrupt
    finally:
        sock.close()
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise CovsegError(f"{host}:{port}: cannot listen ({err.strerror or err})") from None
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _workspace(data_dir: Path | None) -> tuple[Path, bool]:
    """``(folder for the jobs, whether it is ours to remove)``."""
    if data_dir is None:
        return Path(tempfile.mkdtemp(prefix="covseg-serve-")), True
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CovsegError(f"{data_dir}: cannot create --data-dir ({err.strerror})") from None
    return Path(data_dir), False
