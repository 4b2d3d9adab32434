"""`covseg segment`: outputs and summary, and bad inputs give one line, exit 2, nothing partial."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from covseg.checkpoint import save_checkpoint
from covseg.cli import main
from covseg.config import Preprocessing
from covseg.data.synthetic import make_phantom
from covseg.meta import CheckpointMeta
from covseg.models import build_model
from segment_tiny import SIZE, TINY, save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([-0.8, 0.8, 2.5, 1.0])), str(path))
    return path


def test_segment_folder_writes_every_case_and_a_summary(checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _nifti(src / "scan_a.nii.gz", make_phantom(1, (40, 40, 5))[0])
    pic = make_phantom(2, (40, 40, 1))[0][:, :, 0].T
    PILImage.fromarray((np.clip((pic + 1250) / 1500, 0, 1) * 255).astype(np.uint8)).save(
        src / "slice_b.png"
    )
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--checkpoint", str(checkpoint), "--tta"]
    assert main([*argv, "--batch-size", "2", "--device", "cpu"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [  # --overlay auto: overlays for volumes only
        "cohort.csv",
        "scan_a_infection.nii.gz",
        "scan_a_lungs.nii.gz",
        "scan_a_overlay.png",
        "scan_a_report.json",
        "slice_b_infection.png",
        "slice_b_lungs.png",
        "slice_b_report.json",
    ]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["case", "lung", "mL", "infection", "mL", "infected", "%"]
    report = json.loads((out / "scan_a_report.json").read_text())
    row = next(line.split() for line in table if line.startswith("scan_a"))
    assert float(row[1]) == pytest.approx(report["lung_volume_ml"], abs=0.05)
    assert report["tta"] is True and report["covseg_version"]


def _bad_inputs(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    nan = np.zeros((8, 8, 3), np.float32)
    nan[1, 1, 1] = np.nan
    _nifti(tmp_path / "nan.nii.gz", nan)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.int16), np.eye(4)), str(tmp_path / "4d.nii"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing to see")
    good = _nifti(tmp_path / "good.nii.gz", make_phantom(0, (32, 32, 3))[0])
    tampered = tmp_path / "tampered.safetensors"
    save_tiny_checkpoint(tampered)
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    unet = tmp_path / "unet.safetensors"
    save_checkpoint(
        unet,
        build_model(TINY.replace(model="unet")),
        CheckpointMeta(
            model_config=TINY.replace(model="unet"), preprocessing=Preprocessing(size=SIZE)
        ),
    )
    ck = ["--checkpoint", str(checkpoint)]
    return {
        "nan": ([str(tmp_path / "nan.nii.gz"), *ck], "NaN"),
        "4d": ([str(tmp_path / "4d.nii"), *ck], "3-D"),
        "broken": ([str(tmp_path / "broken.nii.gz"), *ck], "unreadable"),
        "empty folder": ([str(tmp_path / "empty"), *ck], "no NIfTI"),
        "missing": ([str(tmp_path / "nope.nii.gz"), *ck], "no such file"),
        "tampered checkpoint": ([str(good), "--checkpoint", str(tampered)], "sha256"),
        "bad case after a good one": ([str(good), str(tmp_path / "nan.nii.gz"), *ck], "NaN"),
        "model without lung head": ([str(good), "--checkpoint", str(unet)], "lung head"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "nan",
        "4d",
        "broken",
        "empty folder",
        "missing",
        "tampered checkpoint",
        "bad case after a good one",
        "model without lung head",
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_partial(case, checkpoint, tmp_path, capsys):
    args, needle = _bad_inputs(tmp_path, checkpoint)[case]
    out = tmp_path / "out"
    assert main(["segment", *args, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [
        line for line in err if line.strip() and "slice/s" not in line and "s/slice" not in line
    ]
    assert len(lines) == 1 and lines[0].startswith("covseg segment: error:"), err
    assert needle in lines[0]
    # Nothing of the bad case but its row in the cohort table (and its failure record, when
    # it failed while running: a bad case no longer stops the batch).
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    table = (out / "cohort.csv").read_text() if "cohort.csv" in left else ""
    cases = [n for n in left if n not in ("cohort.csv", ".covseg-failed")]
    if case == "bad case after a good one":  # the finished case stays, complete
        assert cases == [
            f"good_{s}" for s in ("infection.nii.gz", "lungs.nii.gz", "overlay.png", "report.json")
        ]
    else:
        assert cases == []
    if case == "bad case after a good one":  # the batch went on; the table lists both
        row = next(r for r in table.splitlines() if ",failed," in r)
        assert needle in row
    else:  # refused before any work, or the only case failed: no folder left behind
        assert not out.exists()


def test_no_lung_is_reported_not_an_error(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "nolung.safetensors", lung_shift=-50.0)
    scan = _nifti(tmp_path / "air.nii.gz", np.full((24, 24, 2), -1000, np.int16))
    args = ["segment", str(scan), "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt)]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "air_report.json").read_text())
    assert report["lung_found"] is False and report["infection_percent"] is None
    assert "no lung" in capsys.readouterr().out


def test_pretrained_missing_is_one_line(tmp_path, capsys, monkeypatch):
    import covseg.checkpoint as ck

    # An install without the shipped model: pretrained_path() looks next to checkpoint.py.
    monkeypatch.setattr(ck, "__file__", str(tmp_path / "install" / "checkpoint.py"))
    scan = _nifti(tmp_path / "s.nii.gz", np.zeros((8, 8, 2), np.int16))
    assert main(["segment", str(scan), "--out", str(tmp_path / "out")]) == 2
    assert "no pretrained model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
