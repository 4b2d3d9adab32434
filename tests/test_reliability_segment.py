"""Reliability of ``covseg segment`` at the edges: odd geometry, extreme scans, long scans, and
two processes writing into one folder. A tiny random-init checkpoint is used: the assertions are
about shapes, geometry, exit codes and memory, not accuracy."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covseg.cli import main
from covseg.data.synthetic import make_phantom
from segment_tiny import save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _segment(inputs: list[Path], out: Path, ckpt: Path, *flags: str) -> tuple[int, str, str]:
    err, stdout = io.StringIO(), io.StringIO()
    argv = ["segment", *map(str, inputs), "--out", str(out), "--checkpoint", str(ckpt)]
    with redirect_stderr(err), redirect_stdout(stdout):
        rc = main([*argv, "--device", "cpu", *flags])
    return rc, stdout.getvalue(), err.getvalue()


def _check_outputs(src: Path, out: Path) -> dict:
    """Masks exist with the input's shape and affine, infection inside lungs; the report."""
    case = src.name.removesuffix(".nii.gz").removesuffix(".nii")
    ref = nib.load(str(src))
    lungs = nib.load(str(out / f"{case}_lungs.nii.gz"))
    inf = nib.load(str(out / f"{case}_infection.nii.gz"))
    for m in (lungs, inf):
        assert m.shape == ref.shape and m.get_data_dtype() == np.uint8
        np.testing.assert_allclose(m.affine, ref.affine, atol=1e-5)
    lung_a, inf_a = np.asarray(lungs.dataobj), np.asarray(inf.dataobj)
    assert not (inf_a.astype(bool) & ~lung_a.astype(bool)).any()
    report = json.loads((out / f"{case}_report.json").read_text())
    assert report["shape"] == list(ref.shape)
    assert report["infection_percent"] is None or 0 <= report["infection_percent"] <= 100
    assert (out / f"{case}_overlay.png").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left"
    return report


def _save(path: Path, vol: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    return path


def _flip_affine() -> np.ndarray:
    aff = np.diag([0.6, -0.9, -5.0, 1.0])  # anisotropic, y and z flipped
    aff[:3, 3] = [-30.0, 40.0, 100.0]
    return aff


EDGE_VOLUMES = {
    "single_slice": lambda: (make_phantom(1, (32, 32, 1))[0], np.diag([0.7, 0.7, 5.0, 1.0])),
    "two_pixels_thick": lambda: (make_phantom(1, (32, 2, 3))[0], np.diag([0.7, 0.7, 5.0, 1.0])),
    "non_square": lambda: (make_phantom(2, (48, 32, 3))[0], np.diag([0.7, 0.7, 5.0, 1.0])),
    "odd_sizes": lambda: (make_phantom(3, (17, 61, 3))[0], np.diag([0.7, 0.7, 5.0, 1.0])),
    "anisotropic_flipped": lambda: (make_phantom(4, (32, 40, 4))[0], _flip_affine()),
    "axes_permuted": lambda: (
        make_phantom(5, (32, 32, 4))[0].transpose(2, 0, 1),
        np.array([[0, -0.7, 0, 0], [0, 0, 0.7, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]]),
    ),
    "all_air": lambda: (np.full((32, 32, 3), -1000, np.int16), np.diag([0.7, 0.7, 5.0, 1.0])),
    "all_infection": lambda: (
        np.random.default_rng(0).normal(-400, 60, (32, 32, 3)).astype(np.int16),
        np.diag([0.7, 0.7, 5.0, 1.0]),
    ),
    "all_lung": lambda: (np.full((32, 32, 3), -850, np.int16), np.diag([0.7, 0.7, 5.0, 1.0])),
    "float_hu": lambda: (
        make_phantom(6, (32, 32, 3))[0].astype(np.float32) + 0.25,
        np.diag([0.7, 0.7, 5.0, 1.0]),
    ),
}


@pytest.mark.parametrize("kind", sorted(EDGE_VOLUMES))
def test_edge_volume_segments_with_geometry_kept(kind, checkpoint, tmp_path):
    vol, aff = EDGE_VOLUMES[kind]()
    src = _save(tmp_path / f"{kind}.nii.gz", vol, aff)
    rc, stdout, stderr = _segment([src], tmp_path / "out", checkpoint)
    assert rc == 0, stderr[-2000:]
    report = _check_outputs(src, tmp_path / "out")
    assert kind in stdout
    if not report["lung_found"]:
        assert "no lung" in stdout and report["infection_percent"] is None


def test_all_air_scan_reports_no_lung(tmp_path):
    """A model that finds no lung in an all-air scan: exit 0 and the summary says so."""
    ckpt = save_tiny_checkpoint(tmp_path / "nolung.safetensors", lung_shift=-50.0)
    src = _save(tmp_path / "air.nii.gz", np.full((32, 32, 2), -1000, np.int16), np.eye(4))
    rc, stdout, _ = _segment([src], tmp_path / "out", ckpt)
    assert rc == 0 and "no lung" in stdout
    report = _check_outputs(src, tmp_path / "out")
    assert report["lung_found"] is False and report["lung_voxels"] == 0


@pytest.mark.slow
def test_long_scan_memory_stays_bounded(checkpoint, tmp_path):
    """2000 slices of 32x32: peak RSS grows by little more than the input and the two masks."""
    wrapper = (
        "import resource,subprocess,sys;r=subprocess.run(sys.argv[1:],capture_output=True);"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )

    def peak_mb(n: int) -> float:
        src = _save(tmp_path / f"long{n}.nii.gz", make_phantom(7, (32, 32, n))[0], np.eye(4))
        cmd = [sys.executable, "-m", "covseg", "segment", str(src), "--out", str(tmp_path / "o")]
        cmd += ["--checkpoint", str(checkpoint), "--device", "cpu"]
        r = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
        rc, kb = r.stdout.split()
        assert rc == "0", r.stderr
        return int(kb) / 1024

    short, long = peak_mb(20), peak_mb(2000)
    # input int16 4 MB + masks 4 MB + per-slice report lists; 100 MB is a loose bound.
    assert long - short < 100, (short, long)
    report = _check_outputs(tmp_path / "long2000.nii.gz", tmp_path / "o")
    assert len(report["infection_area_per_slice"]) == 2000


@pytest.mark.slow
def test_two_processes_writing_one_folder_match_a_single_run(checkpoint, tmp_path):
    inputs = []
    for k in range(3):
        inputs.append(_save(tmp_path / f"s{k}.nii.gz", make_phantom(k, (32, 32, 6))[0], np.eye(4)))
    base = [
        sys.executable,
        "-m",
        "covseg",
        "segment",
        *map(str, inputs),
        "--checkpoint",
        str(checkpoint),
    ]
    base += ["--device", "cpu"]
    single = subprocess.run([*base, "--out", str(tmp_path / "single")], capture_output=True)
    assert single.returncode == 0, single.stderr[-2000:]
    procs = [
        subprocess.Popen([*base, "--out", str(tmp_path / "shared")], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    single_names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == single_names
    for src in inputs:
        _check_outputs(src, tmp_path / "shared")
        for suffix in ("lungs", "infection"):
            a = nib.load(str(tmp_path / "single" / f"{src.name[:2]}_{suffix}.nii.gz"))
            b = nib.load(str(tmp_path / "shared" / f"{src.name[:2]}_{suffix}.nii.gz"))
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        ra = json.loads((tmp_path / "single" / f"{src.name[:2]}_report.json").read_text())
        rb = json.loads((tmp_path / "shared" / f"{src.name[:2]}_report.json").read_text())
        assert ra == rb
