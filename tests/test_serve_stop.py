"""`covseg serve` stops a running case cleanly: on SIGTERM (exit 143, temporaries removed, no
abort) and when the case runs past the server's time budget (the job fails with a message)."""

from __future__ import annotations

import itertools
import json
import signal
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _serve_helpers import start_server, wait_until
from covseg.data.synthetic import make_phantom

pytest.importorskip("starlette", reason="covseg[serve] is not installed")

from covseg.serve import ServeConfig
from covseg.serve.jobs import Job, JobQueue

pytestmark = pytest.mark.usefixtures("one_thread")


def _scan(path: Path, side: int = 32, slices: int = 4) -> Path:
    """A phantom of ``slices`` slices of ``side``² px (upsampled from 128² to stay cheap)."""
    hu = make_phantom(0, (128, 128, slices))[0]
    k = max(1, side // 128)
    hu = np.repeat(np.repeat(hu, k, axis=0), k, axis=1) if side > 128 else hu
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.diag([0.7, 0.7, 2.0, 1.0])), str(path))
    return path


def _upload(url: str, path: Path) -> str:
    request = urllib.request.Request(
        f"{url}api/jobs?name={path.name}",
        data=path.read_bytes(),
        method="POST",
        headers={"content-type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)["id"]


def _job(url: str, job_id: str) -> dict:
    with urllib.request.urlopen(f"{url}api/jobs/{job_id}", timeout=10) as r:
        return json.load(r)


@pytest.mark.slow
def test_sigterm_with_a_job_running_exits_143_and_removes_everything(checkpoint, tmp_path):
    scan = _scan(tmp_path / "long.nii.gz", side=1024, slices=30)  # tens of batches
    server = start_server("--checkpoint", str(checkpoint), cwd=tmp_path)
    job_id = _upload(server.url, scan)
    wait_until(lambda: _job(server.url, job_id)["stage"].startswith("segmenting"), step=0.02)
    rc = server.stop(signal.SIGTERM, timeout=60)
    assert rc == 128 + signal.SIGTERM, server.log
    assert server.workspace is not None and not server.workspace.exists()
    assert not any("terminate called" in line for line in server.log), server.log
    assert "long.nii.gz: failed: stopped: the server is shutting down" in server.log
    assert server.log[-1] == "covseg: terminated"


def test_a_case_past_the_time_budget_fails_and_leaves_nothing(checkpoint, tmp_path):
    ticks = itertools.count()  # one second per look at the clock
    config = ServeConfig(checkpoint=str(checkpoint), device="cpu", job_timeout=3)
    jobs = JobQueue(config, tmp_path, clock=lambda: float(next(ticks)))
    job_id, folder = jobs.new_folder()
    source = _scan(folder / "input.nii.gz", slices=40)
    jobs.submit(Job(job_id, "slow.nii.gz", "slow", folder, source))
    jobs.start()
    try:
        job = wait_until(lambda: (j := jobs.snapshot(job_id)[0])["state"] == "failed" and j)
    finally:
        assert jobs.stop()
    assert job["error"] == (
        "stopped after 3 s, the server's time limit per case (covseg serve --job-timeout)"
    )
    assert not folder.exists()


def test_a_case_within_the_time_budget_is_done(checkpoint, tmp_path):
    config = ServeConfig(checkpoint=str(checkpoint), device="cpu", job_timeout=600)
    jobs = JobQueue(config, tmp_path)
    job_id, folder = jobs.new_folder()
    jobs.submit(Job(job_id, "ok.nii.gz", "ok", folder, _scan(folder / "input.nii.gz")))
    jobs.start()
    try:
        job = wait_until(lambda: (j := jobs.snapshot(job_id)[0])["state"] != "queued" and
                         j["state"] != "running" and j)  # fmt: skip
    finally:
        assert jobs.stop()
    assert job["state"] == "done", job["error"]
