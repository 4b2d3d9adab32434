"""Readers and writers that keep geometry: NIfTI (:mod:`.nifti`), DICOM series (:mod:`.dicom`),
PNG/JPG pictures (:mod:`.picture`), one door for all of them (:mod:`.dispatch`), folders of
inputs (:mod:`.folders`), and what they share (:mod:`.common`).

Every problem with an input (a FIFO or device instead of a file, an unreadable or truncated file,
a header that claims more voxels than the file or the memory budget holds, wrong number of
dimensions, degenerate geometry, NaN/inf values, an empty folder) is raised as
:class:`~covseg.errors.DataError` naming the file, so the CLI can report it as one line. Sizes are
checked against the header before any voxel is read, and the readers' own warnings and log lines
(numpy, nibabel, Pillow, pydicom) are silenced: a problem is an error, never a printed warning.

Voxel order: a volume's ``array`` is ``(X, Y, Z)`` in the file's own voxel order (what nibabel
returns), and ``affine`` maps voxel indices to world RAS millimetres. A DICOM series is returned in
the same convention (``X`` = column index, ``Y`` = row index, ``Z`` = slice, sorted along the slice
normal) with its LPS geometry converted to RAS. A 2-D image is ``(H, W)`` with ``affine=None``.
"""

from __future__ import annotations

from covseg.data.io.common import MAX_SIDE, MAX_VOXELS, Image, check_affine
from covseg.data.io.dispatch import read_image, write_mask
from covseg.data.io.folders import find_inputs
from covseg.data.io.nifti import nifti_shape

__all__ = [
    "MAX_SIDE",
    "MAX_VOXELS",
    "Image",
    "check_affine",
    "find_inputs",
    "nifti_shape",
    "read_image",
    "write_mask",
]
