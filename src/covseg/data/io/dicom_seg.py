"""DICOM Segmentation output: the lung and infection masks of a DICOM series as one DICOM-SEG
object that references the source instances, built with ``highdicom``.

PACS and viewers (3D Slicer, OHIF, Horos) open a DICOM-SEG beside its CT: each frame of the SEG
names the source slice it was derived from (its SOP Instance UID) and carries that slice's
``ImagePositionPatient``; the SEG shares the series' study, patient and frame of reference.

The segments are coded with SNOMED CT terms from the DICOM code lists for segmentations
(pydicom's ``codes``):

- segment 1, lungs: category *Anatomical Structure* (SCT 91723000, CID 7150), type *Lung*
  (SCT 39607008, CID 7151): the structure itself, both lungs, infection included.
- segment 2, infection: category *Morphologically Abnormal Structure* (SCT 49755003, CID 7150),
  type *Lesion* (SCT 52988006, CID 7151/7159), anatomic region *Lung*. The masks mark abnormal
  lung tissue (ground-glass opacity and consolidation); SNOMED's COVID-19 concepts (e.g.
  840539006, disease caused by SARS-CoV-2) are diagnoses, not what a voxel is, and the model
  does not make that diagnosis. The segment label says "Infection".

A re-run with the same masks on the same series gives the same SOP Instance UID (derived from
the source series UID, the model and the masks), so a PACS replaces the object rather than keeping two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from covseg._version import __version__
from covseg.data.io.common import Image, quiet_reading
from covseg.errors import DataError
from covseg.files import atomic_path

__all__ = ["SEG_SERIES_NUMBER", "dicom_seg_problem", "write_dicom_seg"]

#: Series number of the written SEG series (viewers list series by number).
SEG_SERIES_NUMBER = 900
#: Type 1 attributes a SEG must copy from, or point to in, every source slice.
_REFERENCED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
)
#: Type 2 patient/study attributes highdicom copies unconditionally: empty where a file lacks
#: them (type 2 means present, possibly empty).
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def dicom_seg_problem(image: Image) -> str | None:
    """Why a DICOM-SEG cannot be written for ``image``, or ``None`` when it can (a cheap check
    on the first slice; :func:`write_dicom_seg` checks every slice).

    Args:
        image: an image from :func:`~covseg.data.io.read_image`.

    Returns:
        A message naming the input and the problem, or ``None``.
    """
    if image.kind != "dicom" or not image.sources:
        return _not_a_series(image)
    if not image.slice_known:
        return f"{image.path}: one slice without SliceThickness: no volumes for a DICOM SR"
    try:
        _read_sources(image.sources[:1])
    except DataError as err:
        return str(err)
    return None


def write_dicom_seg(
    image: Image,
    lungs: np.ndarray,
    infection: np.ndarray,
    path: str | Path,
    *,
    report: Mapping[str, Any] | None = None,
) -> Path:
    """Write the two masks of a DICOM series as one binary DICOM-SEG at ``path``, atomically.

    Args:
        image: the series as read (``kind == "dicom"``, ``sources`` in the order of its Z axis).
        lungs: ``{0, 1}`` lungs, ``image.array``'s shape ``(X = column, Y = row, Z = slice)``.
        infection: ``{0, 1}`` infection, the same shape.
        path: the ``.dcm`` to write.
        report: the case report (``BurdenReport.to_dict()``): its model id and settings go into
            the algorithm identification, its percent infected into the content description.

    Returns:
        ``path``.

    Raises:
        DataError: not a DICOM series, masks of another shape, a source slice that is gone,
            unreadable, or lacks a UID the SEG must reference, or geometry highdicom refuses.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    path = Path(path)
    if image.kind != "dicom" or not image.sources:
        raise DataError(_not_a_series(image))
    n = len(image.sources)
    if image.array.ndim != 3 or image.array.shape[2] != n:
        raise DataError(
            f"{image.path}: {n} source slices for an image of shape {image.array.shape}"
        )
    for mask in (lungs, infection):
        if mask.shape != image.array.shape:
            raise DataError(f"{path}: mask shape {mask.shape} != image shape {image.array.shape}")
    sources = _read_sources(image.sources)
    _fill_for_highdicom(sources, float(np.linalg.norm(image.affine[:3, 2])))
    # (X = column, Y = row, Z) -> (slice, row, column, segment): frame k is source slice k.
    frames = np.empty((n, image.array.shape[1], image.array.shape[0], 2), dtype=bool)
    for k, mask in enumerate((lungs, infection)):
        frames[..., k] = mask.transpose(2, 1, 0)
    model = str((report or {}).get("model_id") or "")
    uid = generate_uid(entropy_srcs=[str(sources[0].SeriesInstanceUID), model, _digest(frames)])
    try:
        with quiet_reading("highdicom", "pydicom"):
            seg = _lean_segmentation_class()(
                source_images=sources,
                pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=_segments(report),
                series_instance_uid=generate_uid(entropy_srcs=[uid, "series"]),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=uid,
                instance_number=1,
                manufacturer="covseg",
                manufacturer_model_name="covseg Bifurcated Autoencoder",
                software_versions=__version__,
                device_serial_number=model[:16] or "unknown",
                content_label="COVSEG",
                content_description=_description(report),
                series_description="covseg lungs and infection",
            )
    except (ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{image.path}: cannot build a DICOM-SEG ({err})") from None
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


def _not_a_series(image: Image) -> str:
    return f"{image.path}: a DICOM-SEG needs a DICOM series input (this is {image.kind})"


def _read_sources(files: tuple[Path, ...]) -> list[Any]:
    """The headers of the source slices (no pixel data), each with the UIDs a SEG references."""
    import pydicom

    headers = []
    with quiet_reading("pydicom"):
        for f in files:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception as err:  # gone since it was read, or rewritten meanwhile
                raise DataError(f"{f}: cannot read the DICOM source again ({err})") from None
            missing = [tag for tag in _REFERENCED if not str(ds.get(tag, "") or "")]
            if missing:
                raise DataError(
                    f"{f}: DICOM {', '.join(missing)} missing; a DICOM-SEG cannot reference "
                    "this series (use --format nifti)"
                )
            headers.append(ds)
    return headers


def _fill_for_highdicom(headers: list[Any], step_mm: float) -> None:
    """Make the in-memory headers acceptable to highdicom without changing what they say:
    empty type 2 attributes where absent, one orientation (the reader has checked they agree
    within 1e-3), and a slice thickness where none is given (the slice spacing)."""
    orientation = headers[0].ImageOrientationPatient
    for ds in headers:
        for tag in _TYPE2:
            if tag not in ds:
                setattr(ds, tag, None)
        ds.ImageOrientationPatient = orientation
        if not ds.get("SliceThickness"):
            ds.SliceThickness = round(step_mm, 6)


def _segments(report: Mapping[str, Any] | None) -> list[Any]:
    """The two segment descriptions (see the module docstring for the codes)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    params = {
        key: str(report[key])
        for key in ("model_id", "threshold", "tta")
        if report and key in report
    }
    algorithm = hd.AlgorithmIdentificationSequence(
        name="covseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters=params or None,
    )
    common = {"algorithm_type": hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC}
    return [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Lungs",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(128, 174, 128),
            **common,
        ),
        hd.seg.SegmentDescription(
            segment_number=2,
            segment_label="Infection",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.Lung],
            display_color=hd.color.CIELabColor.from_rgb(230, 60, 50),
            **common,
        ),
    ]


def _description(report: Mapping[str, Any] | None) -> str:
    """ContentDescription (at most 64 characters): what the SEG holds and the burden."""
    text = "covseg lungs and infection"
    percent = (report or {}).get("infection_percent")
    return text if percent is None else f"{text}; {float(percent):.2f} % of lung infected"


def _lean_segmentation_class() -> type:
    """highdicom's Segmentation, with its check of whether segments overlap done slice by slice.

    highdicom 0.28 sums the ``(frames, rows, columns, segments)`` array over the segments into
    an int64 array, 8 bytes per voxel (0.6 GB for 512x512x300) only to learn whether two
    segments share a pixel; here the same answer costs one slice. Any other input goes to
    highdicom's own check.
    """
    import highdicom as hd

    class LeanSegmentation(hd.seg.Segmentation):
        @classmethod
        def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, *args, **kwargs):
            if not (
                isinstance(pixel_array, np.ndarray)
                and pixel_array.dtype == np.bool_
                and pixel_array.ndim == 4
                and pixel_array.shape[-1] == 2
                and list(segment_numbers) == [1, 2]
            ):
                return super()._check_and_cast_pixel_array(
                    pixel_array, segment_numbers, *args, **kwargs
                )
            overlap = any(np.logical_and(f[..., 0], f[..., 1]).any() for f in pixel_array)
            values = hd.seg.SegmentsOverlapValues
            return pixel_array, values.YES if overlap else values.NO

    return LeanSegmentation


def _digest(frames: np.ndarray) -> str:
    """sha256 of the masks, for a UID that repeats exactly when the content does."""
    return hashlib.sha256(np.packbits(frames).tobytes()).hexdigest()
