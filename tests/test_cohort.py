"""Batches (``covseg segment`` over many cases): resume, shards, workers, failures that do not
stop the batch, the cohort table, small pictures batched through the network."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from covseg.cli import main
from covseg.cohort.batch import segment_pictures
from covseg.cohort.plan import parse_shard, select_shard, shard_of
from covseg.cohort.status import FAILED_DIR
from covseg.data.io import Image, read_image
from covseg.data.synthetic import make_phantom
from covseg.errors import DataError
from covseg.inference.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, seed: int, side: int = 24) -> Path:
    hu = make_phantom(seed, (side, side, 1))[0][:, :, 0].T
    grey = (np.clip((hu + 1250) / 1500, 0, 1) * 255).astype(np.uint8)
    PILImage.fromarray(grey).save(path)
    return path


def _nifti(path: Path, seed: int, shape=(24, 24, 3)) -> Path:
    nib.save(nib.Nifti1Image(make_phantom(seed, shape)[0], np.diag([-0.8, 0.8, 2.5, 1.0])), path)
    return path


def _cohort(tmp_path: Path, pictures: int = 4, volumes: int = 1) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(pictures):
        _png(src / f"p{i:02d}.png", i)
    for i in range(volumes):
        _nifti(src / f"v{i:02d}.nii.gz", 50 + i)
    return src


def _segment(src: Path, out: Path, checkpoint: Path, *flags: str) -> int:
    return main(["segment", str(src), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--device", "cpu", *flags])  # fmt: skip


def _table(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "cohort.csv", newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def _reports(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*_report.json")}


# ---------------------------------------------------------------------------------- shards
def test_shards_cover_every_case_exactly_once():
    from covseg.cohort.plan import Task

    tasks = [Task(f"/x/case_{i}.png", f"case_{i}") for i in range(200)]
    shards = [select_shard(tasks, (i, 3)) for i in (1, 2, 3)]
    names = sorted(t.case for s in shards for t in s)
    assert names == sorted(t.case for t in tasks)
    assert all(30 < len(s) < 110 for s in shards)  # a share each, not all in one
    assert shard_of("case_7", 3) == shard_of("case_7", 3)  # stable (sha256, not hash())
    assert parse_shard("2/3") == (2, 3)


@pytest.mark.parametrize("value", ["0/3", "4/3", "x", "1/0", "1/2/3", "-1/3"])
def test_bad_shard_is_one_line_exit_2_before_any_work(value, checkpoint, tmp_path, capsys):
    with pytest.raises(DataError):
        parse_shard(value)
    assert _segment(tmp_path, tmp_path / "out", checkpoint, "--shard", value) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--shard" in err[0], err
    assert not (tmp_path / "out").exists()


def test_shards_run_separately_give_every_case_once(checkpoint, tmp_path, capsys):
    src = _cohort(tmp_path, pictures=6, volumes=0)
    out = tmp_path / "out"
    for i in (1, 2, 3):
        assert _segment(src, out, checkpoint, "--shard", f"{i}/3") == 0
    table = _table(out)
    assert sorted(table) == [f"p{i:02d}" for i in range(6)]
    assert all(row["status"] == "done" for row in table.values())


# ---------------------------------------------------------------------- resume, redo
def test_rerun_skips_finished_cases_redo_and_new_settings_do_them_again(
    checkpoint, tmp_path, capsys
):
    src = _cohort(tmp_path, pictures=2, volumes=1)
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 0
    first = _reports(out)
    assert len(first) == 3
    assert _segment(src, out, checkpoint) == 0  # nothing to do
    assert _reports(out) == first
    assert {r["status"] for r in _table(out).values()} == {"skipped"}
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert _segment(src, out, checkpoint, "--redo") == 0
    again = _reports(out)
    assert all(again[k] != first[k] for k in first)
    assert _segment(src, out, checkpoint, "--tta") == 0  # other settings: done again
    tta = _reports(out)
    assert all(tta[k] != again[k] for k in again)
    report = json.loads((out / "v00_report.json").read_text())
    assert report["tta"] is True and report["settings"]["tta"] is True
    assert _segment(src, out, checkpoint, "--tta", "--overlay", "all") == 0  # overlays missing
    assert (out / "p00_overlay.png").exists()
    assert all(_reports(out)[k] != tta[k] for k in ("p00_report.json", "p01_report.json"))
    assert _reports(out)["v00_report.json"] == tta["v00_report.json"]  # had its overlay


def test_a_case_missing_a_file_is_done_again(checkpoint, tmp_path):
    src = _cohort(tmp_path, pictures=2, volumes=0)
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 0
    first = _reports(out)
    (out / "p01_lungs.png").unlink()
    assert _segment(src, out, checkpoint) == 0
    assert (out / "p01_lungs.png").exists()
    assert _reports(out)["p00_report.json"] == first["p00_report.json"]
    assert _table(out)["p01"]["status"] == "done" and _table(out)["p00"]["status"] == "skipped"


def test_an_input_replaced_under_its_name_is_done_again(checkpoint, tmp_path):
    # A rerun once kept a replaced scan's old masks, of another shape, as "skipped".
    src = _cohort(tmp_path, pictures=1, volumes=1)
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 0
    first = _reports(out)
    _nifti(src / "v00.nii.gz", 7, shape=(28, 28, 4))  # another scan, the same name
    assert _segment(src, out, checkpoint) == 0
    assert nib.load(out / "v00_lungs.nii.gz").shape == (28, 28, 4)
    assert json.loads((out / "v00_report.json").read_text())["shape"] == [28, 28, 4]
    assert _reports(out)["p00_report.json"] == first["p00_report.json"]
    table = _table(out)
    assert table["v00"]["status"] == "done" and table["p00"]["status"] == "skipped"
    # the same bytes with another time (``cp`` without -p) count as changed; unchanged: skipped
    os.utime(src / "p00.png", ns=(1, 1))
    assert _segment(src, out, checkpoint) == 0
    assert _table(out)["p00"]["status"] == "done" and _table(out)["v00"]["status"] == "skipped"


def test_covseg_outputs_are_never_read_as_scans(checkpoint, tmp_path, capsys):
    src = _cohort(tmp_path, pictures=1, volumes=1)
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 0
    capsys.readouterr()
    # an output folder given as input: one line, exit 2, nothing written
    assert _segment(out, tmp_path / "again", checkpoint) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "only covseg's own outputs" in err[0], err
    assert not (tmp_path / "again").exists()
    # outputs beside a new scan: only the scan is a case
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in out.glob("v00_*"):
        (mixed / f.name).write_bytes(f.read_bytes())
    _nifti(mixed / "new.nii.gz", 9)
    assert _segment(mixed, tmp_path / "out2", checkpoint) == 0
    assert sorted(_table(tmp_path / "out2")) == ["new"]


# ------------------------------------------------------------------------------ failures
def test_failed_case_is_listed_and_the_batch_goes_on(checkpoint, tmp_path, capsys):
    src = _cohort(tmp_path, pictures=2, volumes=0)
    bad = src / "p00b.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("covseg segment: error:") and "p00b" in err[0]
    table = _table(out)
    assert table["p00b"]["status"] == "failed" and "p00b.nii.gz" in table["p00b"]["reason"]
    assert table["p00"]["status"] == table["p01"]["status"] == "done"
    assert table["p00"]["infected_percent"] and table["p00"]["model_id"]
    assert not list(out.glob("p00b_*"))
    _nifti(bad, 3)  # fixed: the rerun does it, and only it
    assert _segment(src, out, checkpoint) == 0
    table = _table(out)
    assert table["p00b"]["status"] == "done" and table["p00"]["status"] == "skipped"
    assert not (out / FAILED_DIR).exists()


# ------------------------------------------------------------- one case name, one input
def test_one_case_name_never_holds_files_of_two_inputs(checkpoint, tmp_path):
    (tmp_path / "n").mkdir()
    png = _png(tmp_path / "scan.png", 1)
    nii = _nifti(tmp_path / "n" / "scan.nii.gz", 2)
    out = tmp_path / "out"
    assert _segment(png, out, checkpoint, "--overlay", "all") == 0
    assert _segment(nii, out, checkpoint) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "cohort.csv",
        "scan_infection.nii.gz",
        "scan_lungs.nii.gz",
        "scan_overlay.png",
        "scan_report.json",
    ]
    assert json.loads((out / "scan_report.json").read_text())["input"] == str(nii)


# ----------------------------------------------------------------- batched pictures
@pytest.mark.parametrize("calibrated", [False, True])
def test_batched_pictures_equal_one_by_one(checkpoint, calibrated):
    import dataclasses

    from covseg.checkpoint import load_checkpoint
    from covseg.config import Calibration

    model, meta = load_checkpoint(checkpoint)
    if calibrated:  # the expected burden and interval are per picture too
        cal = Calibration(infection_slope=1.1, infection_offset=0.3, interval_thresholds=(0.3, 0.7))
        meta = dataclasses.replace(meta, calibration=cal)
    seg = Segmenter(model, meta, device="cpu", batch_size=3, framing="lungs")
    rng = np.random.default_rng(0)
    images = []
    for i, hw in enumerate([(24, 24), (24, 24), (17, 31), (24, 24), (24, 24), (17, 31)]):
        hu = make_phantom(i, (hw[1], hw[0], 1))[0][:, :, 0].T
        grey = np.clip((hu + 1250) / 1500 * 255, 0, 255).astype(np.uint8)
        if i == 4:
            grey = rng.integers(0, 255, hw, dtype=np.uint8)
        images.append(Image(grey, None, "png", Path(f"p{i}.png")))
    batched = segment_pictures(seg, images)
    for image, got in zip(images, batched, strict=True):
        one = seg.predict_image(image)
        assert not isinstance(got, Exception)
        assert got.lungs.tobytes() == one.lungs.tobytes()
        assert got.infection.tobytes() == one.infection.tobytes()
        assert got.report.to_dict() == one.report.to_dict()
    assert any(r.infection.any() for r in batched)  # not trivially empty
    assert all((r.report.estimate is not None) == calibrated for r in batched)


def test_batched_cli_outputs_equal_single_case_runs(checkpoint, tmp_path):
    src = _cohort(tmp_path, pictures=3, volumes=0)
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 0
    for png in sorted(src.glob("*.png")):
        alone = tmp_path / f"alone_{png.stem}"
        assert _segment(png, alone, checkpoint) == 0
        for suffix in ("lungs.png", "infection.png"):
            assert (out / f"{png.stem}_{suffix}").read_bytes() == (
                alone / f"{png.stem}_{suffix}"
            ).read_bytes()
        a, b = (json.loads((d / f"{png.stem}_report.json").read_text()) for d in (out, alone))
        assert a == b
    assert read_image(out / "p00_lungs.png").array.shape == (24, 24)


# ----------------------------------------------------------- workers, kill and rerun
def _cmd(src: Path, out: Path, checkpoint: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "covseg", "segment", str(src), "--out", str(out),
            "--checkpoint", str(checkpoint), "--device", "cpu", *flags]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


@pytest.mark.slow
def test_two_jobs_give_the_outputs_of_one(checkpoint, tmp_path):
    src = _cohort(tmp_path, pictures=5, volumes=2)
    outs = {}
    for jobs in ("1", "2"):
        outs[jobs] = tmp_path / f"out{jobs}"
        r = subprocess.run(_cmd(src, outs[jobs], checkpoint, "--jobs", jobs), env=_env(),
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in outs["1"].iterdir())
    assert names == sorted(p.name for p in outs["2"].iterdir()) and len(names) == 3 * 5 + 4 * 2 + 1
    for name in names:
        if name.endswith((".nii.gz", "_lungs.png", "_infection.png", "_report.json")):
            assert (outs["1"] / name).read_bytes() == (outs["2"] / name).read_bytes(), name


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_does_every_case_once(checkpoint, tmp_path):
    src = _cohort(tmp_path, pictures=0, volumes=6)
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(src, out, checkpoint), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 300
    while not list(out.glob("*_report.json")) and proc.poll() is None:
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _reports(out)
    assert 0 < len(before) < 6, "the kill came after the batch"
    r = subprocess.run(_cmd(src, out, checkpoint), env=_env(), capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    after = _reports(out)
    assert len(after) == 6 and all(after[k] == before[k] for k in before)  # none done twice
    table = _table(out)
    assert sorted(table) == [f"v{i:02d}" for i in range(6)]
    assert sum(row["status"] == "skipped" for row in table.values()) == len(before)
    assert all(row["status"] in ("done", "skipped") for row in table.values())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no leftovers
