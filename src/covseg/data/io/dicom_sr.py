"""The burden figures beside a DICOM-SEG: a DICOM Structured Report (Comprehensive 3D SR) holding
a TID 1500 Measurement Report, built with ``highdicom``.

One volumetric measurement group per segment of the SEG written by
:func:`covseg.data.io.dicom_seg.write_dicom_seg`, each referencing its segment (and through it
the source slices): the lungs' volume and the infection's volume, SNOMED CT *Volume* (118565006)
in UCUM ``ml``. The percent of lung infected is their ratio; TID 1500 has no standard concept
for it, so it is not coded separately (it stays in ``<case>_report.json`` and in the SEG's
content description).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covseg._version import __version__
from covseg.data.io.common import quiet_reading
from covseg.errors import DataError
from covseg.files import atomic_path

__all__ = ["SR_SERIES_NUMBER", "write_burden_sr"]

#: Series number of the written SR series (next to the SEG's 900).
SR_SERIES_NUMBER = 901
#: The report keys measured, by segment number: (label, volume key).
_GROUPS = {1: ("Lungs", "lung_volume_ml"), 2: ("Infection", "infection_volume_ml")}


def write_burden_sr(seg_path: str | Path, report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the lung and infection volumes of ``report`` as a TID 1500 SR on the SEG at
    ``seg_path``, atomically.

    Args:
        seg_path: a DICOM-SEG written by :func:`~covseg.data.io.dicom_seg.write_dicom_seg`.
        report: the case report (``BurdenReport.to_dict()``): ``lung_volume_ml`` and
            ``infection_volume_ml`` (known for every DICOM series).
        path: the ``.dcm`` to write.

    Returns:
        ``path``.

    Raises:
        DataError: a volume missing from ``report``, or a SEG highdicom cannot reference.
    """
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    volumes = {n: report.get(key) for n, (_, key) in _GROUPS.items()}
    if any(v is None for v in volumes.values()):
        raise DataError(f"{path}: the burden report has no volumes to put in a DICOM SR")
    with quiet_reading("highdicom", "pydicom"):
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
        # the same SEG and volumes give the same UIDs (as for the SEG: a PACS replaces, not adds)
        uid = generate_uid(
            entropy_srcs=[str(seg.SOPInstanceUID), "sr", *map(repr, volumes.values())]
        )
        try:
            sr = hd.sr.Comprehensive3DSR(
                evidence=[seg, *_source_stubs(seg)],
                content=_measurement_report(seg, volumes, uid),
                series_instance_uid=generate_uid(entropy_srcs=[uid, "series"]),
                series_number=SR_SERIES_NUMBER,
                sop_instance_uid=uid,
                instance_number=1,
                manufacturer="covseg",
                is_complete=True,
                series_description="covseg lung and infection volumes",
            )
        except (ValueError, TypeError, AttributeError) as err:
            raise DataError(f"{seg_path}: cannot build a DICOM SR ({err})") from None
    with atomic_path(path, suffix=".dcm") as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return Path(path)


def _measurement_report(seg: Any, volumes: Mapping[int, float], uid: str) -> Any:
    """TID 1500: covseg as the device observer, one volume per segment (tracking UIDs derived
    from the SR's ``uid``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    algorithm = hd.sr.AlgorithmIdentification(name="covseg", version=__version__)
    ml = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
    groups = []
    for number, volume in volumes.items():
        label = _GROUPS[number][0]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[uid, label]),
                    identifier=f"{label} (segment {number})",
                ),
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, number),
                finding_type=codes.SCT.Lung if number == 1 else codes.SCT.Lesion,
                finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Volume, value=float(volume), unit=ml, algorithm_id=algorithm
                    )
                ],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["covseg", str(seg.DeviceSerialNumber)]),
            name="covseg",
            model_name=str(seg.ManufacturerModelName),
        ),
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )


def _source_stubs(seg: Any) -> list[Any]:
    """The SEG's source slices as the identifiers the SR's evidence lists (no re-reading)."""
    from pydicom.dataset import Dataset

    stubs = []
    for series in seg.ReferencedSeriesSequence:
        for item in series.ReferencedInstanceSequence:
            ds = Dataset()
            ds.StudyInstanceUID = seg.StudyInstanceUID
            ds.SeriesInstanceUID = series.SeriesInstanceUID
            ds.SOPClassUID = item.ReferencedSOPClassUID
            ds.SOPInstanceUID = item.ReferencedSOPInstanceUID
            stubs.append(ds)
    return stubs
