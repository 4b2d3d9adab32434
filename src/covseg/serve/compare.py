"""The follow-up comparison of two done cases of ``covseg serve`` (the page's "Compare").

======================================================  ========================================
``GET /api/compare?before=ID&after=ID[&register=1]``    the change (:func:`covseg.followup.
                                                        compare_cases`: the reports, and the
                                                        infection masks voxel by voxel) and what
                                                        the page needs to show both scans side
                                                        by side at the same physical position
======================================================  ========================================

The page keeps both scans' slices in step through world coordinates: each case's ``display``
carries its canonical voxel -> world RAS affine, and ``transform`` maps a world point of the
first scan to the same anatomy in the second (the identity, or the rigid registration's map
with ``register=1``). Both cases are compared as ``covseg compare-scans`` compares their files.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from covseg.errors import CovsegError
from covseg.serve.jobs import Job

__all__ = ["ROUTES", "compare_jobs"]


def compare_jobs(before: Job, after: Job, *, register: bool = False) -> dict[str, Any]:
    """The comparison of two done jobs, as the page reads it.

    Args:
        before: the earlier case (done).
        after: the later case (done).
        register: align the scans rigidly first (SimpleITK).

    Returns:
        ``change`` (:meth:`~covseg.followup.FollowUp.to_dict`), ``transform`` (4 x 4 world ->
        world, first scan to second) and, per case, ``id``, ``name`` and ``display``.

    Raises:
        CovsegError: pictures (no volumes), unreadable files, registration without SimpleITK.
    """
    from covseg.followup import compare_cases

    cases = [_case(job) for job in (before, after)]
    change = compare_cases(*cases, register=register)
    voxels = change.voxels or {}
    identity = [[float(i == j) for j in range(4)] for i in range(4)]
    return {
        "change": change.to_dict(),
        "transform": voxels.get("transform", identity),
        "registered": bool(voxels.get("registered")),
        **{
            key: {"id": job.id, "name": job.name, "display": job.to_json()["display"]}
            for key, job in (("before", before), ("after", after))
        },
    }


def _case(job: Job) -> Any:
    from covseg.followup import Case

    mask = job.downloads.get("infection")
    volume = mask is not None and mask.name.endswith(".nii.gz")
    return Case(job.report or {}, mask or job.folder, mask if volume else None, job.source)


async def _compare(request: Request) -> Response:
    jobs = request.app.state.jobs
    params = request.query_params
    found = [jobs.get(params.get(key, "")) for key in ("before", "after")]
    if any(job is None or job.state != "done" for job in found):
        return JSONResponse({"error": "compare two done cases"}, status_code=404)
    before, after = found
    if before.id == after.id:
        return JSONResponse({"error": "compare two different cases"}, status_code=400)
    register = params.get("register", "") in ("1", "true")
    try:
        body = await run_in_threadpool(compare_jobs, before, after, register=register)
    except CovsegError as err:
        message = " ".join(str(err).split())
        for job in found:  # the user's names, never the server's paths
            message = message.replace(str(job.folder / "out") + "/", "").replace(
                str(job.folder), job.name
            )
        return JSONResponse({"error": message}, status_code=400)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


ROUTES = [Route("/api/compare", _compare, methods=["GET"])]
