"""Readers/writers keep geometry; intensity rules; one canonical slice orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff

from _dicom import write_dicom_series
from covseg.data.geometry import slices_to_volume, volume_to_slices
from covseg.data.io import Image, find_inputs, read_image, write_mask
from covseg.data.preprocess import (
    detect_intensity_rule,
    normalize_intensity,
    resize_back,
    resize_slices,
)
from covseg.errors import DataError


def _volume(shape=(33, 47, 5), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 400, size=shape).astype(np.int16)


def test_nifti_read_write_mask_round_trip(tmp_path):
    arr = _volume()
    aff = np.diag([-0.8, -0.8, 5.0, 1.0])
    aff[:3, 3] = [10, 20, -30]
    nib.save(nib.Nifti1Image(arr, aff), str(tmp_path / "ct.nii.gz"))
    img = read_image(tmp_path / "ct.nii.gz")
    assert img.kind == "nifti" and img.array.shape == (33, 47, 5)
    np.testing.assert_array_equal(img.array, arr)
    assert img.spacing == pytest.approx((0.8, 0.8, 5.0))
    mask = (arr > 0).astype(np.uint8)
    out = write_mask(mask, img, tmp_path / "mask.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), mask)
    np.testing.assert_allclose(back.affine, aff)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_png_rgb_becomes_grey_and_mask_png_is_0_255(tmp_path):
    from PIL import Image as PILImage

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., :] = 100
    PILImage.fromarray(rgb).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.array.shape == (20, 30) and img.affine is None and img.spacing == (1.0, 1.0)
    assert volume_to_slices(img).shape == (1, 20, 30)
    write_mask(img.array > 50, img, tmp_path / "m.png")
    assert set(np.unique(np.array(PILImage.open(tmp_path / "m.png")))) == {255}


def test_intensity_rules():
    assert detect_intensity_rule(np.array([-1024, 40], np.int16)) == "hu"
    assert detect_intensity_rule(np.array([0, 255], np.uint8)) == "uint8"
    assert detect_intensity_rule(np.array([0, 1], np.uint8)) == "uint8"
    with pytest.raises(DataError, match="--intensity unit"):  # floats in [0, 1]: window unknown
        detect_intensity_rule(np.array([0.0, 1.0]))
    with pytest.raises(DataError, match="--intensity hu1024"):  # stored values, no intercept
        detect_intensity_rule(np.array([0, 24, 1100, 2500], np.uint16))
    with pytest.raises(DataError):
        detect_intensity_rule(np.array([-50.0, 10.0]))
    np.testing.assert_allclose(
        normalize_intensity(np.array([-226, 274, 1274]), "hu1024"), [0, 1 / 3, 1], atol=1e-6
    )
    assert normalize_intensity(np.array([-0.5, 0.25, 2.0]), "unit").tolist() == [0, 0.25, 1]
    x = normalize_intensity(np.array([-2000, -1250, -500, 250, 3000]), "hu")
    np.testing.assert_allclose(x, [0, 0, 0.5, 1, 1])
    assert normalize_intensity(np.array([0, 255], np.uint8), "uint8").tolist() == [0.0, 1.0]
    assert x.dtype == np.float32


def _reoriented(
    arr: np.ndarray, aff: np.ndarray, ornt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The same physical volume stored with another voxel order."""
    new = apply_orientation(arr, ornt)
    return new, aff @ inv_ornt_aff(ornt, arr.shape)


@pytest.mark.parametrize(
    "ornt",
    [
        [[0, -1], [1, 1], [2, 1]],  # x flipped
        [[1, 1], [0, -1], [2, -1]],  # x/y swapped, flips
        [[2, 1], [0, 1], [1, -1]],  # all axes permuted
    ],
)
def test_canonical_slices_do_not_depend_on_voxel_order(ornt):
    arr = _volume((11, 13, 7))
    aff = np.diag([0.7, 0.9, 3.0, 1.0])
    ref = volume_to_slices(Image(arr, aff, "nifti", None))
    arr2, aff2 = _reoriented(arr, aff, np.array(ornt))
    img2 = Image(arr2, aff2, "nifti", None)
    s2 = volume_to_slices(img2)
    np.testing.assert_array_equal(s2, ref)
    np.testing.assert_array_equal(slices_to_volume(s2, img2), arr2)


def test_canonical_orientation_is_radiological():
    # Identity affine: voxel +x points to the patient's right, +y anterior, +z superior.
    arr = np.zeros((4, 5, 3), np.int16)
    arr[3, 0, 2] = 1  # most right, most posterior, most superior
    s = volume_to_slices(Image(arr, np.eye(4), "nifti", None))
    assert s.shape == (3, 5, 4)
    # rows run anterior->posterior: posterior is the last row; cols run right->left: right first
    assert s[2, 4, 0] == 1


def test_resize_masks_keep_labels_and_round_trip_shape():
    m = np.zeros((2, 33, 47), np.uint8)
    m[:, 10:20, 5:30] = 2
    r = resize_slices(m, 64, mask=True)
    assert r.shape == (2, 64, 64) and set(np.unique(r)) == {0, 2}
    assert resize_back(r, (33, 47), mask=True).shape == (2, 33, 47)
    x = resize_slices(
        np.random.default_rng(0).random((1, 100, 90)).astype(np.float32), 32, mask=False
    )
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1


def test_dicom_series_matches_geometry(tmp_path):
    rows, cols, n = 12, 16, 3
    vol = np.random.default_rng(0).integers(0, 2000, size=(n, rows, cols)).astype(np.uint16)
    # written in reverse order: file k holds slice n-1-k
    z = [2.5 * (n - 1 - k) for k in range(n)]
    write_dicom_series(
        tmp_path, vol[::-1], z, pixel_spacing=(0.5, 0.7), origin_xy=(0, 0), prefix="s"
    )
    assert find_inputs(tmp_path) == [tmp_path]
    img = read_image(tmp_path)
    assert img.kind == "dicom" and img.array.shape == (cols, rows, n)
    np.testing.assert_array_equal(img.array[:, :, 0], vol[0].T.astype(np.int16) - 1024)
    assert img.spacing == pytest.approx((0.7, 0.5, 2.5))


def test_bad_files_raise_data_error(tmp_path):
    nib.save(
        nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4)), str(tmp_path / "4d.nii.gz")
    )
    nib.save(
        nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)),
        str(tmp_path / "nan.nii.gz"),
    )
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), str(good))
    (tmp_path / "trunc.nii.gz").write_bytes(good.read_bytes()[:200])
    (tmp_path / "x.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    for name, words in [
        ("4d.nii.gz", "3-D"),
        ("nan.nii.gz", "NaN"),
        ("trunc.nii.gz", "unreadable"),
        ("x.txt", "unsupported"),
        ("empty", "empty"),
        ("missing.nii", "no such"),
    ]:
        with pytest.raises(DataError, match=words) as err:
            read_image(tmp_path / name)
        assert name in str(err.value)
