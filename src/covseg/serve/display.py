"""What the browser viewer loads: the CT and the two masks as NIfTI volumes, for display only.

A NIfTI input is shown from the uploaded file and the masks ``segment`` wrote, unchanged. A DICOM
series is shown from a NIfTI copy of the volume as read (its RAS affine, the one the masks
carry). A 2-D picture and its PNG masks are wrapped in 1-slice NIfTI volumes whose affine puts
the picture's rows anterior -> posterior and its columns patient right -> left, the orientation
covseg reads pictures in; the viewer's radiological display then shows the picture as it is.
These copies are never offered as downloads: the downloads are ``segment``'s own files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.data.io import Image

__all__ = ["PICTURE_AFFINE", "display_volumes"]

#: Voxel ``(column, row, 0)`` -> RAS mm for a picture: columns run to the patient's left
#: (-x), rows to posterior (-y); 1 mm pixels, the size being unknown.
PICTURE_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def display_volumes(
    image: Image,
    lungs: np.ndarray,
    infection: np.ndarray,
    written: dict[str, Path],
    source: Path,
    folder: Path,
) -> dict[str, Path]:
    """The three volumes the viewer loads for one case.

    Args:
        image: the input as read.
        lungs: the lung mask, ``image.array``'s shape.
        infection: the infection mask, ``image.array``'s shape.
        written: the files ``segment`` wrote (``lungs``, ``infection``, ...).
        source: the stored upload (a NIfTI file for NIfTI inputs).
        folder: where display copies are written (created when needed).

    Returns:
        ``{"ct", "lungs", "infection"}`` NIfTI paths (``.nii`` or ``.nii.gz``).
    """
    if image.kind == "nifti":
        return {"ct": source, "lungs": written["lungs"], "infection": written["infection"]}
    folder.mkdir(exist_ok=True)
    if image.kind == "dicom":
        return {
            "ct": _save(image.array, image.affine, folder / "ct.nii"),
            "lungs": written["lungs"],
            "infection": written["infection"],
        }
    return {  # a picture, (H, W): voxel (column, row, 0)
        key: _save(np.ascontiguousarray(a.T)[:, :, None], PICTURE_AFFINE, folder / f"{key}.nii.gz")
        for key, a in (("ct", image.array), ("lungs", lungs), ("infection", infection))
    }


def _save(array: np.ndarray, affine: np.ndarray | None, path: Path) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path
