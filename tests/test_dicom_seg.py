"""DICOM-SEG output: read back with highdicom and pydicom, every frame must name the right source
slice, sit at its position and hold the mask of that slice, whatever order the files come in."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from _dicom import hu_to_stored, write_dicom_series
from covseg.cli import main
from covseg.data.io import read_image
from covseg.data.io.dicom_seg import write_dicom_seg
from covseg.data.synthetic import make_phantom
from covseg.errors import DataError
from covseg.inference.outputs import segment_file
from covseg.inference.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

#: Stored value (HU + 1024) above which the known test masks are set.
_CUT = 1024 - 300


def _series(folder: Path, stored: np.ndarray, z_mm, *, tilt_deg: float = 0.0) -> Path:
    """A DICOM series as a scanner writes it: study/series/frame-of-reference UIDs, patient
    module, slice ``k`` at ``z_mm[k]`` along the normal of an orientation tilted by ``tilt_deg``
    about the row axis (oblique when not 0)."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    t = np.radians(tilt_deg)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(t), np.sin(t)])
    normal = np.cross(row, col)
    origin = np.array([-20.0, -30.0, 5.0])

    def edit(ds, k):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "P-7", "Test^Patient"
        ds.ImageOrientationPatient = [*row.round(6), *col.round(6)]
        ds.ImagePositionPatient = [*(origin + z_mm[k] * normal).round(6)]

    return write_dicom_series(folder, stored, z_mm, edit=edit)


def _by_uid(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, sorted(folder.iterdir()))}


def _known_masks(image) -> tuple[np.ndarray, np.ndarray]:
    """Masks that follow the pixels: lungs where stored > _CUT, infection where it is in the
    top quarter of those (so every source slice's frame is checkable against its own file)."""
    stored = image.array.astype(np.int32) + 1024
    lungs = (stored > _CUT).astype(np.uint8)
    infection = (stored > np.quantile(stored[lungs > 0], 0.75)).astype(np.uint8)
    return lungs, infection


def _check_frames(seg_path: Path, folder: Path, lungs_of, infection_of) -> int:
    """Every frame references one source slice of ``folder``, carries its position, and holds
    ``lungs_of(ds)`` / ``infection_of(ds)`` (``(rows, cols)`` from the source dataset)."""
    seg = pydicom.dcmread(seg_path)
    sources = _by_uid(folder)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        src = sources[str(ref)]
        ipp = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in ipp], src.ImagePositionPatient, atol=1e-4)
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        want = (lungs_of if number == 1 else infection_of)(src)
        np.testing.assert_array_equal(frame, want)
    return len(frames)


def test_segments_coded_and_series_referenced(tmp_path):
    hu = make_phantom(1, (24, 20, 4))[0]
    folder = _series(tmp_path / "ct", hu_to_stored(hu), [0.0, 2.5, 5.0, 7.5])
    image = read_image(folder)
    lungs, infection = _known_masks(image)
    out = write_dicom_seg(image, lungs, infection, tmp_path / "seg.dcm", report=None)

    seg = hd.seg.segread(out)
    src = pydicom.dcmread(image.sources[0])
    for tag in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
        assert seg.get(tag) == src.get(tag)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.SegmentsOverlap == "YES"  # the lungs include the infection
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    lung, inf = seg.SegmentSequence
    assert (lung.SegmentLabel, inf.SegmentLabel) == ("Lungs", "Infection")
    for item, category, kind in (
        (lung, codes.SCT.AnatomicalStructure, codes.SCT.Lung),
        (inf, codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
    ):
        got_category = item.SegmentedPropertyCategoryCodeSequence[0]
        got_type = item.SegmentedPropertyTypeCodeSequence[0]
        assert (got_category.CodeValue, got_category.CodingSchemeDesignator) == (
            category.value,
            "SCT",
        )
        assert (got_type.CodeValue, got_type.CodingSchemeDesignator) == (kind.value, "SCT")
        assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert inf.AnatomicRegionSequence[0].CodeValue == codes.SCT.Lung.value
    referenced = {
        (series_uid, sop_uid) for _study, series_uid, sop_uid in seg.get_source_image_uids()
    }
    assert referenced == {(str(src.SeriesInstanceUID), uid) for uid in _by_uid(folder)}


@pytest.mark.parametrize(
    ("order", "tilt"),
    [("reversed", 0.0), ("shuffled", 0.0), ("oblique shuffled", 20.0)],
)
def test_frames_map_to_their_source_slices(tmp_path, order, tilt):
    """Files written in reverse or shuffled spatial order (and an oblique series): each frame
    still holds the mask of the file it names, at that file's position."""
    hu = make_phantom(2, (20, 18, 5))[0]
    z = [3.0 * k for k in range(5)]
    rng = np.random.default_rng(0)
    perm = np.arange(5)[::-1] if order == "reversed" else rng.permutation(5)
    folder = _series(tmp_path / "ct", hu_to_stored(hu)[perm], [z[k] for k in perm], tilt_deg=tilt)
    image = read_image(folder)
    lungs, infection = _known_masks(image)
    cut_inf = np.quantile((image.array.astype(np.int32) + 1024)[lungs > 0], 0.75)
    out = write_dicom_seg(image, lungs, infection, tmp_path / "seg.dcm")
    n = _check_frames(
        out,
        folder,
        lambda ds: ds.pixel_array > _CUT,
        lambda ds: ds.pixel_array > cut_inf,
    )
    assert n == int(lungs.any(axis=(0, 1)).sum() + infection.any(axis=(0, 1)).sum())


def test_single_slice_series(tmp_path):
    hu = make_phantom(3, (22, 18, 1))[0]
    folder = _series(tmp_path / "one", hu_to_stored(hu), [4.0])
    image = read_image(folder)
    lungs, infection = _known_masks(image)
    out = write_dicom_seg(image, lungs, infection, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    uid = str(pydicom.dcmread(image.sources[0]).SOPInstanceUID)
    pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2])
    assert pixels.shape == (1, 18, 22, 2)
    np.testing.assert_array_equal(pixels[0, :, :, 0], lungs[:, :, 0].T)
    np.testing.assert_array_equal(pixels[0, :, :, 1], infection[:, :, 0].T)


def test_same_masks_same_uid_new_masks_new_uid(tmp_path):
    """A rerun replaces the object in a PACS (same SOP Instance UID) only when nothing changed."""
    folder = _series(tmp_path / "ct", hu_to_stored(make_phantom(4, (16, 16, 3))[0]), [0, 2, 4])
    image = read_image(folder)
    lungs, infection = _known_masks(image)
    uids = []
    for k, inf in enumerate((infection, infection, 1 - infection)):
        path = write_dicom_seg(image, lungs, inf.astype(np.uint8), tmp_path / f"seg{k}.dcm")
        uids.append(pydicom.dcmread(path).SOPInstanceUID)
    assert uids[0] == uids[1] != uids[2]


# ------------------------------------------------------------------- through the segmenter
@pytest.fixture(scope="module")
def seg(checkpoint) -> Segmenter:
    return Segmenter.from_checkpoint(checkpoint, device="cpu", batch_size=4)


def test_segment_writes_seg_equal_to_nifti_masks(seg, tmp_path):
    """The default for a DICOM series: NIfTI masks and ``<case>_seg.dcm`` holding the same
    masks, frame by frame and in world space, for an oblique series given in reverse order."""
    hu = make_phantom(5, (36, 32, 4))[0]
    z = [2.0 * k for k in range(4)]
    folder = _series(tmp_path / "scan", hu_to_stored(hu)[::-1], z[::-1], tilt_deg=15.0)
    result = segment_file(seg, folder, tmp_path / "out")
    assert set(result.paths) == {"lungs", "infection", "dicom_seg", "dicom_sr", "overlay", "report"}
    assert result.paths["dicom_seg"] == tmp_path / "out" / "scan_seg.dcm"
    image = read_image(folder)
    nifti = {k: np.asarray(nib.load(result.paths[k]).dataobj) for k in ("lungs", "infection")}
    assert nifti["lungs"].any() and nifti["infection"].any()

    reader = hd.seg.segread(result.paths["dicom_seg"])
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in image.sources]
    pixels = reader.get_pixels_by_source_instance(uids, segment_numbers=[1, 2])
    # (X = column, Y = row, Z) NIfTI voxels -> (slice, row, column), slice k = image.sources[k]
    np.testing.assert_array_equal(pixels[..., 0], nifti["lungs"].transpose(2, 1, 0))
    np.testing.assert_array_equal(pixels[..., 1], nifti["infection"].transpose(2, 1, 0))
    # The same in world space: the SEG's own volume geometry (highdicom, LPS, its own axis order)
    # puts every voxel where the NIfTI affine (RAS) puts the NIfTI voxel holding the same value.
    volume = reader.get_volume(combine_segments=False)
    nifti_affine = nib.load(result.paths["lungs"]).affine
    index = np.indices(volume.spatial_shape).reshape(3, -1)
    world_lps = volume.affine @ np.vstack([index, np.ones(index.shape[1])])
    ijk = np.linalg.inv(nifti_affine) @ (np.diag([-1.0, -1.0, 1.0, 1.0]) @ world_lps)
    ijk_int = np.rint(ijk[:3]).astype(int)
    np.testing.assert_allclose(ijk[:3], ijk_int, atol=1e-3)
    for channel, key in enumerate(("lungs", "infection")):
        seg_values = volume.array[..., channel].reshape(-1)
        np.testing.assert_array_equal(seg_values, nifti[key][tuple(ijk_int)])
    percent = result.report.total.infection_percent
    assert f"{percent:.2f} % of lung infected" in reader.ContentDescription
    _check_sr(result.paths["dicom_sr"], reader, result.report.to_dict())


def _check_sr(path: Path, seg, report: dict) -> None:
    """The SR's TID 1500 groups: one per segment, referencing it, with the report's volume."""
    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.PatientID == seg.PatientID
    groups = sr.content.get_volumetric_roi_measurement_groups()
    volumes = {}
    for group in groups:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        (measurement,) = group.get_measurements()
        assert measurement.name == codes.SCT.Volume and measurement.unit.value == "ml"
        (number,) = ref.referenced_segment_numbers
        volumes[int(number)] = measurement.value
    assert volumes == {
        1: pytest.approx(report["lung_volume_ml"]),
        2: pytest.approx(report["infection_volume_ml"]),
    }


def test_format_nifti_drops_an_earlier_seg(seg, tmp_path):
    folder = _series(tmp_path / "scan", hu_to_stored(make_phantom(6, (32, 32, 3))[0]), [0, 3, 6])
    out = tmp_path / "out"
    assert "dicom_seg" in segment_file(seg, folder, out).paths
    paths = segment_file(seg, folder, out, formats=["nifti"]).paths
    assert "dicom_seg" not in paths and not (out / "scan_seg.dcm").exists()
    assert not (out / "scan_sr.dcm").exists()
    paths = segment_file(seg, folder, out, formats=["dicom-seg"]).paths
    assert set(paths) == {"dicom_seg", "dicom_sr", "overlay", "report"}
    assert not (out / "scan_lungs.nii.gz").exists()


def test_series_without_uids(seg, tmp_path, caplog):
    """A series lacking the UIDs a SEG references: by default NIfTI alone and a warning that
    names the file and the tags; asked for explicitly, a DataError."""
    hu = make_phantom(7, (32, 32, 2))[0]
    folder = write_dicom_series(tmp_path / "bare", hu_to_stored(hu), [0.0, 2.0])
    with caplog.at_level(logging.WARNING):
        paths = segment_file(seg, folder, tmp_path / "out").paths
    assert "dicom_seg" not in paths and (tmp_path / "out" / "bare_lungs.nii.gz").exists()
    assert "StudyInstanceUID" in caplog.text and "0.dcm" in caplog.text
    with pytest.raises(DataError, match="FrameOfReferenceUID"):
        segment_file(seg, folder, tmp_path / "out2", formats=["dicom-seg"])


def test_cli_dicom_seg_for_a_nifti_input_exits_2_before_any_work(tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom(8, (16, 16, 2))[0], np.eye(4)), scan)
    argv = ["segment", str(scan), "--out", str(tmp_path / "out"), "--format", "dicom-seg"]
    assert main([*argv, "--checkpoint", str(tmp_path / "absent.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.nii.gz" in err[0] and "--format dicom-seg" in err[0]
    assert not (tmp_path / "out").exists()
    assert main([*argv[:-1], "nifti,tiff"]) == 2
    assert "--format nifti,tiff" in capsys.readouterr().err


# ------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_ct_slices_round_trip(shared_data, tmp_path):
    """Three real 512x512 HU slices of one patient (../shared/data/zenodo-lung5; it holds no
    DICOM) wrapped as a series, with their expert lung masks: the SEG gives them back."""
    folder = shared_data / "zenodo-lung5"
    if not (folder / "coronacases_001_image_slice_98.npy").exists():
        pytest.skip(f"{folder}: coronacases_001 slices absent")
    ks = (122, 98, 110)  # not in spatial order on purpose
    hu = np.stack([np.load(folder / f"coronacases_001_image_slice_{k}.npy") for k in ks])
    expert = np.stack([np.load(folder / f"coronacases_001_masks_slice_{k}.npy") for k in ks])
    series = _series(tmp_path / "real", (hu.astype(np.int32) + 1024).astype(np.uint16), ks)
    files = {Path(p).name: k for k, p in enumerate(sorted(series.iterdir()))}
    image = read_image(series)
    order = [files[p.name] for p in image.sources]  # the reader's slice order, as file indices
    lungs = (expert[order] > 0).transpose(2, 1, 0).astype(np.uint8)
    infection = ((hu[order] > -300) & (expert[order] > 0)).transpose(2, 1, 0).astype(np.uint8)
    out = write_dicom_seg(image, lungs, infection, tmp_path / "seg.dcm")

    def index(ds) -> int:  # the file k.dcm holds slice ks[k]
        return int(Path(ds.filename).stem)

    n = _check_frames(
        out,
        series,
        lambda ds: expert[index(ds)] > 0,
        lambda ds: (hu[index(ds)] > -300) & (expert[index(ds)] > 0),
    )
    assert n == 6
