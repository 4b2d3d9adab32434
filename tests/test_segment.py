"""Segmenter: geometry survives, the report adds up, memory does not grow with the scan."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from _dicom import hu_to_stored, write_dicom_series
from covseg.data.geometry import slices_to_volume, volume_to_slices
from covseg.data.io import Image, read_image
from covseg.data.synthetic import make_phantom
from covseg.inference.burden import left_right_counts
from covseg.inference.outputs import segment_file
from covseg.inference.segmenter import Segmenter
from segment_tiny import fraction, save_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _readme_snippet() -> str:
    """The first ``python`` block of the README's "Python API" section, run verbatim below."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def seg(checkpoint) -> Segmenter:
    return Segmenter.from_checkpoint(checkpoint, device="cpu", batch_size=4)


def _oblique_affine() -> np.ndarray:
    """Axes permuted (voxel axis 0 runs S->I), flipped, anisotropic, rotated 10 degrees."""
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perm = np.array([[0, 0, -4.0], [0.75, 0, 0], [0, -0.9, 0]]).T  # columns: voxel axes in RAS
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm
    aff[:3, 3] = [12.0, -40.0, 7.5]
    return aff


def _check_report_adds_up(report: dict, lungs: np.ndarray, infection: np.ndarray) -> None:
    ml = report["voxel_volume_ml"]
    assert report["lung_voxels"] == int(lungs.sum()) and report["lung_voxels"] > 0
    assert report["infection_voxels"] == int(infection.sum()) > 0
    assert report["lung_volume_ml"] == pytest.approx(lungs.sum() * ml)
    assert report["infection_volume_ml"] == pytest.approx(infection.sum() * ml)
    assert report["infection_percent"] == pytest.approx(100 * infection.sum() / lungs.sum(), 1e-3)
    left, right = report["left"], report["right"]
    assert left["lung_voxels"] + right["lung_voxels"] == report["lung_voxels"]
    assert left["infection_voxels"] + right["infection_voxels"] == report["infection_voxels"]
    assert sum(report["infection_area_per_slice"]) == pytest.approx(
        report["infection_voxels"] * ml * 1000 / report["spacing_mm"][2], rel=1e-3
    )


def test_nifti_keeps_geometry_and_report_adds_up(seg, tmp_path):
    hu = make_phantom(3, (8, 40, 48))[0].transpose(2, 0, 1).copy()  # put the slices on axis 0
    aff = _oblique_affine()
    nib.save(nib.Nifti1Image(hu, aff), str(tmp_path / "ct.nii.gz"))
    result = segment_file(seg, tmp_path / "ct.nii.gz", tmp_path / "out")

    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["ct_infection.nii.gz", "ct_lungs.nii.gz", "ct_overlay.png", "ct_report.json"]
    for key in ("lungs", "infection"):
        img = nib.load(str(result.paths[key]))
        assert img.shape == hu.shape and img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, aff, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(img.dataobj), getattr(result, key))
    assert set(np.unique(result.lungs)) <= {0, 1}
    assert not (result.infection & ~result.lungs).any()  # infection lies inside the lungs
    report = json.loads(result.paths["report"].read_text())
    assert report == result.report.to_dict()  # the JSON written is the report returned
    assert report["voxel_volume_ml"] == pytest.approx(0.75 * 0.9 * 4.0 / 1000)
    assert report["spacing_mm"] == pytest.approx([0.9, 0.75, 4.0])  # canonical row, col, slice
    assert report["shape"] == list(hu.shape) and report["model_id"] == seg.model_id
    _check_report_adds_up(report, result.lungs, result.infection)

    # Orientation is handled exactly: the canonical slices segmented as a bare (N, H, W) array
    # give the same masks, put back with slices_to_volume.
    image = read_image(tmp_path / "ct.nii.gz")
    bare = seg.predict_volume(volume_to_slices(image))
    np.testing.assert_array_equal(slices_to_volume(bare.lungs, image), result.lungs)
    np.testing.assert_array_equal(slices_to_volume(bare.infection, image), result.infection)


def test_dicom_series_keeps_geometry(seg, tmp_path):
    hu = make_phantom(4, (40, 36, 5))[0]  # (X = columns, Y = rows, Z)
    z = [3.0 * k for k in range(hu.shape[2])]
    series = write_dicom_series(tmp_path / "series", hu_to_stored(hu), z)
    result = segment_file(seg, series, tmp_path / "out")
    ref = read_image(series)
    img = nib.load(str(tmp_path / "out" / "series_lungs.nii.gz"))
    assert img.shape == ref.array.shape == hu.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    report = json.loads((tmp_path / "out" / "series_report.json").read_text())
    assert report["voxel_volume_ml"] == pytest.approx(0.6 * 0.8 * 3.0 / 1000)
    _check_report_adds_up(report, result.lungs, result.infection)


def test_png_in_png_out(seg, tmp_path):
    hu = make_phantom(5, (48, 44, 1))[0][:, :, 0].T  # (H, W) displayed slice
    pic = (np.clip((hu + 1250) / 1500, 0, 1) * 255).astype(np.uint8)
    PILImage.fromarray(pic).save(tmp_path / "slice_7.png")
    result = segment_file(seg, tmp_path / "slice_7.png", tmp_path / "out")
    lungs = np.array(PILImage.open(tmp_path / "out" / "slice_7_lungs.png"))
    inf = np.array(PILImage.open(tmp_path / "out" / "slice_7_infection.png"))
    assert lungs.shape == inf.shape == pic.shape
    assert set(np.unique(lungs)) <= {0, 255} and lungs.any()
    np.testing.assert_array_equal(inf > 0, result.infection.astype(bool))
    report = result.report.to_dict()
    assert report["intensity_rule"] == "uint8" and report["area_unit"] == "px"
    assert report["lung_volume_ml"] is None and report["voxel_volume_ml"] is None
    assert report["infection_area_per_slice"] == [report["infection_voxels"]]
    assert (tmp_path / "out" / "slice_7_overlay.png").stat().st_size > 0


def test_array_api_layouts(seg):
    slices = make_phantom(6, (40, 40, 6))[0].transpose(2, 1, 0)  # (N, H, W) canonical
    r3 = seg.predict_volume(slices, spacing=(2.5, 0.5, 0.6))
    report3 = r3.report.to_dict()
    assert r3.lungs.shape == slices.shape and report3["spacing_mm"] == [0.5, 0.6, 2.5]
    assert report3["voxel_volume_ml"] == pytest.approx(0.5 * 0.6 * 2.5 / 1000)
    r2 = seg.predict_volume(slices[3], spacing=(0.5, 0.6))
    np.testing.assert_array_equal(r2.lungs, r3.lungs[3])
    report2 = r2.report.to_dict()
    assert report2["area_unit"] == "mm2" and report2["lung_volume_ml"] is None
    assert seg.predict_volume(slices).report.to_dict()["area_unit"] == "px"
    from covseg.errors import DataError

    with pytest.raises(DataError, match="NaN"):
        seg.predict_volume(np.full((2, 8, 8), np.nan), spacing=(1, 1, 1))
    with pytest.raises(DataError, match="spacing"):
        seg.predict_volume(slices, spacing=(1, 1))


def test_left_right_split_follows_the_patient_axis():
    lungs = np.zeros((2, 10, 20), np.uint8)
    lungs[:, 2:8, 2:8] = 1  # low columns: patient right
    lungs[:, 2:8, 11:19] = 1  # high columns: patient left (bigger)
    lungs[1, 4, 8:11] = 1  # the lungs touch on one slice
    inf = np.zeros_like(lungs)
    inf[0, 3:5, 12:14] = 1
    counts = left_right_counts(lungs, inf)
    assert counts["left"][1] == 4 and counts["right"][1] == 0
    assert counts["left"][0] + counts["right"][0] == lungs.sum()
    assert counts["left"][0] >= 2 * 48 and counts["right"][0] >= 2 * 36


def test_one_lung_is_not_cut_in_two():
    # One lung (pneumonectomy, collapse, a slice below the other lung's base) was halved at its
    # own mean column: half of it reported as the other lung.
    from covseg.inference.burden import lung_sides

    lungs = np.zeros((3, 20, 40), np.uint8)
    lungs[:, 4:16, 23:35] = 1  # high columns: the patient's left
    inf = np.zeros_like(lungs)
    inf[1, 5:8, 25:28] = 1
    n = int(lungs.sum())
    assert left_right_counts(lungs, inf) == {"left": (n, 9), "right": (0, 0)}
    assert set(np.unique(lung_sides(lungs)[lungs > 0])) == {1}
    mirrored = left_right_counts(lungs[:, :, ::-1].copy(), inf[:, :, ::-1].copy())
    assert mirrored == {"left": (0, 0), "right": (n, 9)}


def test_left_right_counts_do_not_depend_on_the_labelling_chunk(monkeypatch):
    """Slices are labelled a few at a time (bounded memory); the counts are those of labelling
    every slice on its own, and every lung pixel lands on exactly one side."""
    from scipy import ndimage as ndi

    from covseg.inference import burden

    rng = np.random.default_rng(0)
    lungs = ndi.binary_opening(rng.random((70, 24, 30)) < 0.6, np.ones((1, 2, 2)))
    lungs = lungs.astype(np.uint8)
    inf = (lungs & (rng.random(lungs.shape) < 0.3)).astype(np.uint8)
    whole = left_right_counts(lungs, inf)
    monkeypatch.setattr(burden, "_SIDE_CHUNK", 1)
    assert left_right_counts(lungs, inf) == whole
    monkeypatch.setattr(burden, "_SIDE_CHUNK", 16)
    assert left_right_counts(lungs, inf) == whole
    assert whole["left"][0] + whole["right"][0] == lungs.sum()
    assert whole["left"][1] + whole["right"][1] == inf.sum()


def test_tta_is_left_right_symmetric(checkpoint):
    seg = Segmenter.from_checkpoint(checkpoint, device="cpu", tta=True)
    half = make_phantom(7, (20, 40, 3))[0].transpose(2, 1, 0)
    sym = np.concatenate([half, half[:, :, ::-1]], axis=2)  # mirror-symmetric columns
    r = seg.predict_volume(sym)
    mism = np.count_nonzero(r.lungs != r.lungs[:, :, ::-1])
    assert r.report.to_dict()["tta"] and fraction(r.lungs) > 0 and mism <= 0.001 * r.lungs.size


def test_no_lung_found(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "nolung.safetensors", lung_shift=-50.0)
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    r = seg.predict_volume(make_phantom(0, (32, 32, 3))[0], affine=np.eye(4))
    report = r.report.to_dict()
    assert report["lung_found"] is False and report["infection_percent"] is None
    assert report["left"]["infection_percent"] is None and not r.infection.any()


def test_memory_does_not_grow_with_the_scan(seg):
    def peak(n: int) -> int:
        vol = np.random.default_rng(0).integers(-1000, 300, (n, 64, 64)).astype(np.int16)
        tracemalloc.start()
        try:
            seg.predict_volume(vol)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(40), peak(400)
    per_slice = (large - small) / 360
    # The two uint8 masks cost 2 bytes per pixel; one more float32 array per slice would be 4.
    assert per_slice < 3.5 * 64 * 64, per_slice


def test_concurrent_cases_into_one_folder(checkpoint, tmp_path):
    hu = make_phantom(8, (32, 32, 4))[0]
    nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 3, 1])), str(tmp_path / "a.nii.gz"))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            s = Segmenter.from_checkpoint(checkpoint, device="cpu")
            for _ in range(3):
                segment_file(s, tmp_path / "a.nii.gz", tmp_path / "out")
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a_infection.nii.gz", "a_lungs.nii.gz", "a_overlay.png", "a_report.json"]
    assert nib.load(str(tmp_path / "out" / "a_lungs.nii.gz")).shape == hu.shape
    json.loads((tmp_path / "out" / "a_report.json").read_text())


def test_readme_snippet(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_snippet(), "README.md", "exec"), {})
    assert "scan_report.json" in capsys.readouterr().out
    assert (tmp_path / "out" / "scan_lungs.nii.gz").exists()


@pytest.mark.realdata
def test_pretrained_segments_a_real_slice(shared_data):
    from covseg.evaluation.metrics import confusion, dice

    # The model is shipped (tracked in git, package data): its absence is a failure, not a skip.
    masks = sorted((shared_data / "medseg100-train" / "masks").glob("*.png"))
    areas = [np.count_nonzero(np.array(PILImage.open(m))) for m in masks]
    mask_path = masks[int(np.argmax(areas))]  # the slice with the most infection
    image = read_image(shared_data / "medseg100-train" / "images" / mask_path.name)
    truth = np.array(PILImage.open(mask_path)) > 0
    result = Segmenter.from_pretrained(device="cpu").predict_image(image)
    assert isinstance(image, Image) and result.infection.shape == truth.shape
    score = float(dice(*confusion(result.infection.astype(bool), truth)))
    assert score > 0.8, f"{mask_path.name}: Dice {score:.3f}"


def test_outputs_get_the_usual_file_mode(seg, tmp_path):
    import os
    import stat

    nib.save(
        nib.Nifti1Image(make_phantom(0, (24, 24, 2))[0], np.eye(4)), str(tmp_path / "m.nii.gz")
    )
    old = os.umask(0o022)
    try:
        paths = segment_file(seg, tmp_path / "m.nii.gz", tmp_path / "out").paths
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths.values()} == {0o644}


def test_a_model_without_lung_head_is_refused(tmp_path):
    from covseg.config import Preprocessing
    from covseg.errors import CheckpointError
    from covseg.meta import CheckpointMeta
    from covseg.models import build_model
    from segment_tiny import SIZE, TINY

    cfg = TINY.replace(model="unet")
    meta = CheckpointMeta(model_config=cfg, preprocessing=Preprocessing(size=SIZE))
    seg = Segmenter(build_model(cfg), meta, device="cpu")  # constructing is fine ...
    vol = make_phantom(0, (SIZE, SIZE, 2))[0]
    with pytest.raises(CheckpointError, match="lung head"):  # ... segmenting is not
        seg.predict_volume(vol, affine=np.eye(4))
    with pytest.raises(CheckpointError, match="lung head"):
        seg.predict_volume(vol.transpose(2, 1, 0))
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "u.nii.gz"))
    with pytest.raises(CheckpointError, match="lung head"):
        segment_file(seg, tmp_path / "u.nii.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()
