"""`covseg prepare` on every layout, its cache, and every bad input (exit 2, one line, no OUT)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from covseg.cli import main
from covseg.data.dataset import PreparedDataset
from covseg.data.prepare import prepare
from covseg.data.synthetic import make_phantom, write_synthetic_dataset

SIZE = 32


@pytest.fixture(scope="module")
def zenodo(tmp_path_factory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("z") / "Z", "zenodo20", 2, slices=4, size=32
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_zenodo20_round_trip_via_cli(zenodo, tmp_path):
    out = tmp_path / "OUT"
    assert main(["prepare", "--size", str(SIZE), str(zenodo), str(out)]) == 0
    data = PreparedDataset(out)
    assert data.manifest["layout"] == "zenodo20" and len(data.cases) == 2
    rules = {c["id"]: c["intensity_rule"] for c in data.cases}
    assert rules == {"coronacases_001": "hu", "radiopaedia_1_80001_0": "uint8"}
    a = data.load("coronacases_001")
    assert a["image"].shape == (4, SIZE, SIZE) and a["image"].dtype == np.float16
    # Expert masks survive: the canonical lung mask equals the phantom's (resized) lung.
    _, lung, inf = make_phantom(0, (32, 32, 4))
    np.testing.assert_array_equal(a["lung"], (lung.transpose(2, 1, 0) > 0))
    np.testing.assert_array_equal(a["infection"], inf.transpose(2, 1, 0))
    c = data.case("coronacases_001")
    assert c["lung_mask"] == "expert" and c["spacing_mm"] == pytest.approx([0.8, 0.8])
    assert c["slice_thickness_mm"] == pytest.approx(5.0)


def test_zenodo20_kaggle_names_and_combined_mask(zenodo, tmp_path):
    src = tmp_path / "kaggle"
    (src / "ct_scans").mkdir(parents=True)
    (src / "lung_and_infection_mask").mkdir()
    for f in (zenodo / "COVID-19-CT-Seg_20cases").iterdir():
        name = f.name.replace("coronacases_", "coronacases_org_")
        shutil.copy(f, src / "ct_scans" / name)
    for f in (zenodo / "Lung_and_Infection_Mask").iterdir():
        shutil.copy(f, src / "lung_and_infection_mask" / f.name)
    out = prepare(src, tmp_path / "OUT", size=SIZE)
    data = PreparedDataset(out)
    assert sorted(data.case_ids) == ["coronacases_001", "radiopaedia_1_80001_0"]
    ref = PreparedDataset(prepare(zenodo, tmp_path / "REF", size=SIZE))
    for cid in data.case_ids:
        for key in ("lung", "infection"):
            np.testing.assert_array_equal(data.load(cid)[key], ref.load(cid)[key])


def _slices_dataset(root: Path, n: int = 4, *, soft: bool = False) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    hu, _, inf = make_phantom(3, (40, 36, n))
    from covseg.data.preprocess import normalize_intensity

    img = (normalize_intensity(hu, "hu") * 255).astype(np.uint8).transpose(2, 1, 0)
    for k in range(n):
        name = f"Data-1_p{k % 2}_{k}"
        PILImage.fromarray(img[k]).save(root / "images" / f"{name}.jpg")
        m = inf[:, :, k].T * (200 if soft else 1)
        if soft:
            m[0, :5] = 60  # a faint, sub-threshold response: a soft map, not a binary mask
        PILImage.fromarray(m.astype(np.uint8)).save(root / "masks" / f"{name}.png")
    return root


def test_slices_layout_derives_lungs(tmp_path):
    out = prepare(_slices_dataset(tmp_path / "S"), tmp_path / "OUT", size=SIZE)
    data = PreparedDataset(out)
    assert len(data.cases) == 4
    assert {c["lung_mask"] for c in data.cases} == {"derived"}
    assert {c["kind"] for c in data.cases} == {"slice"}
    a = data.load(data.case_ids[0])
    assert a["lung"].sum() > 0 and not (a["infection"].astype(bool) & ~a["lung"].astype(bool)).any()


def test_slices_group_and_pseudo(tmp_path):
    src = _slices_dataset(tmp_path / "S", soft=True)
    (src / "masks").rename(src / "pseudo_masks")
    out = tmp_path / "OUT"
    argv = ["prepare", "--layout", "slices", "--masks-dir", "pseudo_masks", "--pseudo"]
    argv += ["--group", r"^Data-1_(.+)_\d+$", "--size", str(SIZE), str(src), str(out)]
    assert main(argv) == 0
    data = PreparedDataset(out)
    assert sorted(data.case_ids) == ["p0", "p1"]
    assert [c["n_slices"] for c in data.cases] == [2, 2]
    assert {c["labels"] for c in data.cases} == {"pseudo"}


def test_medseg_layout(tmp_path):
    hu, lung, inf = make_phantom(1, (32, 32, 3))
    labels = np.where(inf > 0, 1, 0).astype(np.uint8)
    labels[0:3, 0:3, :] = 3  # effusion
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    (tmp_path / "M" / "rp_im").mkdir(parents=True)
    (tmp_path / "M" / "rp_msk").mkdir()
    nib.save(nib.Nifti1Image(hu, aff), str(tmp_path / "M" / "tr_im.nii.gz"))
    nib.save(nib.Nifti1Image(labels, aff), str(tmp_path / "M" / "tr_mask.nii.gz"))
    nib.save(nib.Nifti1Image(lung, aff), str(tmp_path / "M" / "tr_lungmasks_updated.nii.gz"))
    nib.save(nib.Nifti1Image(hu, aff), str(tmp_path / "M" / "rp_im" / "1.nii.gz"))
    nib.save(nib.Nifti1Image(labels, aff), str(tmp_path / "M" / "rp_msk" / "1.nii.gz"))
    data = PreparedDataset(prepare(tmp_path / "M", tmp_path / "OUT", size=SIZE))
    assert data.manifest["layout"] == "medseg"
    assert data.case_ids == ["tr_000", "tr_001", "tr_002", "rp_1"]
    assert (
        data.case("tr_000")["lung_mask"] == "expert" and data.case("rp_1")["lung_mask"] == "derived"
    )
    # each tr_im slice is its own case, matching the same canonical slice of the rp volume
    rp = data.load("rp_1")
    for k in range(3):
        np.testing.assert_array_equal(data.load(f"tr_{k:03d}")["image"][0], rp["image"][k])
    assert rp["infection"].sum() == (labels != 3).sum() - (labels == 0).sum()
    eff = PreparedDataset(prepare(tmp_path / "M", tmp_path / "E", size=SIZE, include_effusion=True))
    assert eff.load("rp_1")["infection"].sum() > rp["infection"].sum()


def test_nnunet_layout_with_label_names(tmp_path):
    hu, lung, inf = make_phantom(2, (32, 32, 3))
    lab = np.where(inf > 0, 2, np.where(lung > 0, 1, 0)).astype(np.uint8)
    root = tmp_path / "Dataset001_Covid"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "lung": 1, "infection": 2}})
    )
    for cid in ("c1", "c2"):
        nib.save(nib.Nifti1Image(hu, np.eye(4)), str(root / "imagesTr" / f"{cid}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"{cid}.nii.gz"))
    data = PreparedDataset(prepare(root, tmp_path / "OUT", size=SIZE))
    assert data.case_ids == ["c1", "c2"]
    a = data.load("c1")
    assert data.case("c1")["lung_mask"] == "expert"
    assert a["lung"].sum() == (lab > 0).sum() and a["infection"].sum() == (lab == 2).sum()
    assert main(["prepare", "--infection-labels", "tumour", str(root), str(tmp_path / "X")]) == 2


def test_cache_reuse_and_invalidation(zenodo, tmp_path, caplog):
    src = _copy(zenodo, tmp_path / "Z")
    out = prepare(src, tmp_path / "OUT", size=SIZE)
    first = json.loads((out / "manifest.json").read_text())["hash"]
    stamp = (out / "manifest.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        prepare(src, out, size=SIZE)
    assert "reusing" in caplog.text and (out / "manifest.json").stat().st_mtime_ns == stamp
    prepare(src, out, size=SIZE + 16)  # a parameter changed
    assert PreparedDataset(out).load("coronacases_001")["image"].shape[1] == SIZE + 16
    f = src / "Infection_Mask" / "coronacases_001.nii.gz"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # a source changed
    prepare(src, out, size=SIZE)
    second = json.loads((out / "manifest.json").read_text())["hash"]
    assert second != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- bad input
def _nii(path: Path, arr: np.ndarray, aff=None) -> None:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if aff is None else aff), str(path))


def _break(src: Path, case: str) -> None:
    img = src / "COVID-19-CT-Seg_20cases" / "coronacases_001.nii.gz"
    mask = src / "Infection_Mask" / "coronacases_001.nii.gz"
    good = nib.load(str(img))
    if case == "truncated":
        img.write_bytes(img.read_bytes()[:300])
    elif case == "4d":
        _nii(img, np.zeros((32, 32, 4, 2), np.int16))
    elif case == "nan":
        arr = np.asanyarray(good.dataobj).astype(np.float32)
        arr[0, 0, 0] = np.nan
        _nii(img, arr, good.affine)
    elif case == "shape":
        _nii(mask, np.zeros((32, 32, 5), np.uint8), good.affine)
    elif case == "affine":
        _nii(mask, np.zeros((32, 32, 4), np.uint8), good.affine * np.diag([2, 1, 1, 1]))
    elif case == "labels":
        _nii(mask, np.full((32, 32, 4), 7, np.uint8), good.affine)
    elif case == "no-mask":
        for d in ("Infection_Mask", "Lung_Mask", "Lung_and_Infection_Mask"):
            (src / d / "coronacases_001.nii.gz").unlink()
    elif case == "empty":
        shutil.rmtree(src)
        src.mkdir()


@pytest.mark.parametrize(
    "case, words",
    [
        ("truncated", "coronacases_001.nii.gz: unreadable"),
        ("4d", "3-D"),
        ("nan", "NaN"),
        ("shape", "mask shape"),
        ("affine", "affine"),
        ("labels", "unexpected label"),
        ("no-mask", "no infection mask"),
        ("empty", "empty folder"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_out(zenodo, tmp_path, capsys, case, words):
    src = _copy(zenodo, tmp_path / "Z")
    _break(src, case)
    out = tmp_path / "OUT"
    capsys.readouterr()
    assert main(["prepare", "--size", str(SIZE), str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["Z"]


def test_slices_bad_inputs(tmp_path, capsys):
    src = _slices_dataset(tmp_path / "S")
    (src / "masks" / "Data-1_p0_0.png").unlink()
    assert main(["prepare", str(src), str(tmp_path / "O1")]) == 2
    assert "Data-1_p0_0.jpg: no mask" in capsys.readouterr().err
    src2 = _slices_dataset(tmp_path / "S2", soft=True)  # soft masks without --pseudo
    assert main(["prepare", str(src2), str(tmp_path / "O2")]) == 2
    assert "--pseudo" in capsys.readouterr().err
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "readme.txt").write_text("x")
    assert main(["prepare", str(tmp_path / "odd"), str(tmp_path / "O3")]) == 2
    assert "unknown dataset layout" in capsys.readouterr().err
    assert not any((tmp_path / f"O{i}").exists() for i in (1, 2, 3))


def test_synth_cli_writes_slices_layout(tmp_path):
    assert (
        main(
            [
                "synth",
                "--layout",
                "slices",
                "--cases",
                "2",
                "--slices",
                "2",
                "--size",
                "32",
                str(tmp_path / "S"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "S" / "images").glob("*.png"))) == 4
    data = PreparedDataset(prepare(tmp_path / "S", tmp_path / "OUT", size=SIZE))
    assert len(data.cases) == 4
