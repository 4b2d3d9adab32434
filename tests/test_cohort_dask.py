"""``covseg segment --scheduler``: the cases on a Dask cluster give the serial outputs, survive a
worker killed mid-case (every case written exactly once, a complete cohort table), and the
missing extra or a bad value is one line and exit 2 before any work."""

from __future__ import annotations

import csv
import functools
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from covseg.cli import main
from covseg.data.synthetic import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")

MISSING = (
    "covseg segment: error: --scheduler needs the cluster extra: pip install 'covseg[cluster]'"
)


def _cohort(tmp_path: Path, pictures: int, volumes: int) -> Path:
    """A folder of small synthetic PNG pictures and NIfTI volumes."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(pictures):
        hu = make_phantom(i, (24, 24, 1))[0][:, :, 0].T
        grey = (np.clip((hu + 1250) / 1500, 0, 1) * 255).astype(np.uint8)
        PILImage.fromarray(grey).save(src / f"p{i:02d}.png")
    for i in range(volumes):
        affine = np.diag([-0.8, 0.8, 2.5, 1.0])
        nib.save(nib.Nifti1Image(make_phantom(50 + i, (24, 24, 3))[0], affine),
                 src / f"v{i:02d}.nii.gz")  # fmt: skip
    return src


def _segment(src: Path, out: Path, checkpoint: Path, *flags: str) -> int:
    return main(["segment", str(src), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--device", "cpu", *flags])  # fmt: skip


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "cohort.csv", newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_missing_extra_is_one_line_and_exit_2_before_any_work(checkpoint, tmp_path, capsys,
                                                              monkeypatch):  # fmt: skip
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    src = _cohort(tmp_path, pictures=1, volumes=0)
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint, "--scheduler", "local:2") == 2
    assert capsys.readouterr().err == MISSING + "\n"
    assert not out.exists()


@pytest.mark.parametrize("value", ["local:0", "local:x", "host:8786", "http://host:8786"])
def test_bad_scheduler_is_one_line_and_exit_2(value, checkpoint, tmp_path, capsys):
    src = _cohort(tmp_path, pictures=1, volumes=0)
    assert _segment(src, tmp_path / "out", checkpoint, "--scheduler", value) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--scheduler {value!r}: expected local:N" in err
    assert not (tmp_path / "out").exists()


def test_scheduler_with_jobs_is_refused(checkpoint, tmp_path, capsys):
    src = _cohort(tmp_path, pictures=1, volumes=0)
    assert _segment(src, tmp_path / "o", checkpoint, "--scheduler", "local:2", "--jobs", "2") == 2
    assert "--scheduler and --jobs" in capsys.readouterr().err


def test_unreachable_scheduler_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from covseg.cohort import dask_engine

    monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT", 2)
    src = _cohort(tmp_path, pictures=1, volumes=0)
    address = "tcp://127.0.0.1:9"  # the discard port: nothing listens there
    assert _segment(src, tmp_path / "out", checkpoint, "--scheduler", address) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the scheduler" in err
    assert not list((tmp_path / "out").glob("*_report.json"))


@pytest.mark.slow
def test_local_cluster_gives_the_outputs_of_the_serial_engine(checkpoint, tmp_path):
    pytest.importorskip("distributed")
    src = _cohort(tmp_path, pictures=3, volumes=2)
    outs = {"serial": tmp_path / "serial", "dask": tmp_path / "dask"}
    assert _segment(src, outs["serial"], checkpoint) == 0
    assert _segment(src, outs["dask"], checkpoint, "--scheduler", "local:2") == 0
    names = sorted(p.name for p in outs["serial"].iterdir())
    assert (
        names == sorted(p.name for p in outs["dask"].iterdir()) and len(names) == 3 * 3 + 2 * 4 + 1
    )
    for name in names:
        if name.endswith((".nii.gz", "_lungs.png", "_infection.png", "_report.json", ".csv")):
            assert (outs["serial"] / name).read_bytes() == (outs["dask"] / name).read_bytes(), name
    assert {row["status"] for row in _rows(outs["dask"]).values()} == {"done"}


def _killer_plugin(marker: Path, log: Path):
    """A worker plugin that records every case a worker writes (one line in ``log``) and, in
    the first worker to reach its second case, SIGKILLs the worker once the case is segmented
    but before its files are written (``marker`` makes it once across all workers)."""
    from distributed import WorkerPlugin

    class KillOnSecondCase(WorkerPlugin):
        def setup(self, worker):
            import signal

            from covseg.cohort import engine

            write, count = engine.write_case, [0]

            def write_case(image, result, out_dir, **kwargs):
                count[0] += 1
                if count[0] == 2:
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                        os.kill(os.getpid(), signal.SIGKILL)
                    except FileExistsError:
                        pass
                write(image, result, out_dir, **kwargs)
                with open(log, "a") as f:
                    f.write(result.report.case + "\n")

            engine.write_case = write_case

    return KillOnSecondCase()


@pytest.mark.slow
def test_worker_killed_mid_case_every_case_written_once(checkpoint, tmp_path):
    distributed = pytest.importorskip("distributed")
    import dask

    from covseg.cohort import segment_cohort
    from covseg.cohort.dask_engine import ALLOWED_FAILURES, dask_engine

    src = _cohort(tmp_path, pictures=0, volumes=6)
    out, marker, log = tmp_path / "out", tmp_path / "killed", tmp_path / "written.txt"
    config = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}
    with (
        dask.config.set(config),
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        client.register_plugin(_killer_plugin(marker, log), name="killer")
        pids = set(client.run(os.getpid).values())
        engine = functools.partial(dask_engine, scheduler=cluster.scheduler_address, jobs=2)
        run = segment_cohort([src], out, checkpoint=checkpoint, device="cpu", engine=engine)
        assert marker.exists() and pids - set(client.run(os.getpid).values())  # one was killed
    cases = [f"v{i:02d}" for i in range(6)]
    assert sorted(log.read_text().split()) == cases  # each case's files written exactly once
    assert {o.task.case: o.status for o in run.outcomes} == dict.fromkeys(cases, "done")
    assert len(list(out.glob("*_report.json"))) == 6
    assert {case: row["status"] for case, row in _rows(out).items()} == dict.fromkeys(cases, "done")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no leftovers
