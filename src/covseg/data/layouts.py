"""Dataset layouts on disk -> a list of :class:`Case` records (no pixel data read here).

Layouts: ``zenodo20`` (Ma et al., Zenodo 3757476, and its Kaggle copy), ``slices`` (``images/`` +
``masks/`` [+ ``lungs/``] pictures or volumes), ``medseg`` (MedSeg ``tr_im``/``rp_im``) and
``nnunet`` (nnU-Net v2 raw). ``auto`` detects one from the folder contents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from covseg.data.io.common import is_nifti, is_picture, strip_suffix
from covseg.data.io.folders import find_inputs, natural_key
from covseg.errors import DataError

__all__ = ["LAYOUTS", "Case", "MaskFile", "Source", "detect_layout", "discover"]

LAYOUTS = ("zenodo20", "slices", "medseg", "nnunet")
NNUNET_LUNG_LABELS = ("lung", "left lung", "right lung", "lung_left", "lung_right")
NNUNET_INFECTION_LABELS = ("infection", "ggo", "consolidation", "lesion", "covid")


@dataclass(frozen=True)
class MaskFile:
    """A label file and how its values map to lung and infection.

    Attributes:
        path: NIfTI or picture.
        lung: values that are lung (infection inside the lung counts as lung).
        infection: values that are infection.
        allowed: every value the file may hold; others are a DataError. ``None`` with
            ``threshold`` set: a soft 0..255 map, foreground = value >= threshold.
        threshold: binarisation threshold of a soft map.
        binary: values are ``{0, v}`` for any single ``v`` (``{0,1}`` or ``{0,255}`` pictures).
    """

    path: Path
    lung: tuple[int, ...] = ()
    infection: tuple[int, ...] = ()
    allowed: tuple[int, ...] | None = None
    threshold: int | None = None
    binary: bool = False


@dataclass(frozen=True)
class Source:
    """One image file with its masks; ``index`` selects one z-slice of a stacked volume."""

    image: Path
    masks: tuple[MaskFile, ...]
    index: int | None = None


@dataclass(frozen=True)
class Case:
    """One patient: a volume, or 2-D slices of one patient stacked in natural order."""

    id: str
    sources: tuple[Source, ...]
    kind: str  # "volume" | "slice"
    labels: str = "expert"  # "expert" | "pseudo"

    @property
    def has_lung_mask(self) -> bool:
        return all(any(m.lung for m in s.masks) for s in self.sources)

    def files(self) -> list[Path]:
        out: list[Path] = []
        for s in self.sources:
            out.append(s.image)
            out.extend(m.path for m in s.masks)
        return sorted(set(out))


def zenodo_case_id(name: str) -> str:
    """Normalise a Zenodo/Kaggle file name to one case id.

    ``coronacases_org_001.nii`` and ``coronacases_001.nii.gz`` -> ``coronacases_001``;
    ``radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz`` -> ``radiopaedia_4_85506_1``.
    """
    s = strip_suffix(name)
    s = s.replace("org_covid-19-pneumonia-", "").replace("_org_", "_")
    s = re.sub(r"-dcm$", "", s)
    return s


# ----------------------------------------------------------------------------- zenodo20
_ZENODO_IMAGES = ("COVID-19-CT-Seg_20cases", "ct_scans")
_ZENODO_MASKS = {  # folder (either spelling) -> (lung values, infection values, allowed)
    "lung_and_infection_mask": ((1, 2, 3), (3,), (0, 1, 2, 3)),
    "lung_mask": ((1, 2), (), (0, 1, 2)),
    "infection_mask": ((), (1,), (0, 1)),
}


def _subdir(root: Path, name: str) -> Path | None:
    for p in root.iterdir() if root.is_dir() else ():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def _zenodo20(root: Path) -> list[Case]:
    img_dir = next((d for n in _ZENODO_IMAGES if (d := _subdir(root, n))), None)
    if img_dir is None:
        raise DataError(f"{root}: no COVID-19-CT-Seg_20cases/ or ct_scans/ folder (zenodo20)")
    mask_files: dict[str, dict[str, Path]] = {}
    for folder in _ZENODO_MASKS:
        d = _subdir(root, folder)
        if d is None:
            continue
        for p in d.iterdir():
            if is_nifti(p):
                mask_files.setdefault(zenodo_case_id(p.name), {})[folder] = p
    if not mask_files:
        raise DataError(f"{root}: no Lung_Mask/, Infection_Mask/ or Lung_and_Infection_Mask/")
    cases = []
    for img in sorted((p for p in img_dir.iterdir() if is_nifti(p)), key=lambda p: p.name):
        cid = zenodo_case_id(img.name)
        found = mask_files.get(cid, {})
        if "infection_mask" in found and "lung_mask" in found:
            use = ["lung_mask", "infection_mask"]
        elif "lung_and_infection_mask" in found:
            use = ["lung_and_infection_mask"]
        elif "infection_mask" in found:
            use = ["infection_mask"]
        else:
            raise DataError(f"{img}: no infection mask for case {cid} in {root}")
        masks = tuple(
            MaskFile(found[k], _ZENODO_MASKS[k][0], _ZENODO_MASKS[k][1], _ZENODO_MASKS[k][2])
            for k in use
        )
        cases.append(Case(cid, (Source(img, masks),), "volume"))
    if not cases:
        raise DataError(f"{img_dir}: no NIfTI images")
    return cases


# ------------------------------------------------------------------------------- slices
def _stem_map(folder: Path) -> dict[str, Path]:
    return {strip_suffix(p.name): p for p in folder.iterdir() if is_picture(p) or is_nifti(p)}


def _slices(root: Path, *, masks_dir: str, pseudo: bool, group: str | None) -> list[Case]:
    img_dir, mask_dir = root / "images", root / masks_dir
    if not img_dir.is_dir():
        raise DataError(f"{root}: no images/ folder (slices layout)")
    if not mask_dir.is_dir():
        raise DataError(f"{root}: no {masks_dir}/ folder (slices layout)")
    masks, lungs = _stem_map(mask_dir), {}
    if (root / "lungs").is_dir():
        lungs = _stem_map(root / "lungs")
    images = sorted(find_inputs(img_dir), key=lambda p: natural_key(p.name))
    pattern = re.compile(group) if group else None
    groups: dict[str, list[Source]] = {}
    for img in images:
        stem = strip_suffix(img.name)
        if stem not in masks:
            raise DataError(f"{img}: no mask {masks_dir}/{stem}.* for this image")
        if pseudo:
            inf = MaskFile(masks[stem], infection=(1,), threshold=128)
        else:
            inf = MaskFile(masks[stem], infection=(1,), binary=True)
        files = [inf]
        if stem in lungs:
            files.append(MaskFile(lungs[stem], lung=(1,), binary=True))
        if pattern is None:
            cid = stem
        else:
            m = pattern.search(stem)
            if m is None or not m.groups():
                raise DataError(f"{img}: name does not match --group {group!r}")
            cid = m.group(1)
        groups.setdefault(cid, []).append(Source(img, tuple(files)))
    kind = "volume" if images and is_nifti(images[0]) else "slice"
    labels = "pseudo" if pseudo else "expert"
    return [Case(cid, tuple(srcs), kind, labels) for cid, srcs in groups.items()]


# ------------------------------------------------------------------------------- medseg
def _medseg(root: Path, *, include_effusion: bool) -> list[Case]:
    infection = (1, 2, 3) if include_effusion else (1, 2)
    cases: list[Case] = []
    tr_im = next((root / n for n in ("tr_im.nii.gz", "tr_im.nii") if (root / n).exists()), None)
    if tr_im is not None:
        mask = _first_existing(root, ("tr_mask.nii.gz", "tr_mask.nii"))
        if mask is None:
            raise DataError(f"{tr_im}: no tr_mask.nii.gz next to it")
        files = [MaskFile(mask, lung=(), infection=infection, allowed=(0, 1, 2, 3))]
        lung = _first_existing(
            root, ("tr_lungmasks_updated.nii.gz", "tr_lungmasks_updated.nii", "tr_lungmasks.nii.gz")
        )
        if lung is not None:
            files.append(MaskFile(lung, lung=(1, 2), allowed=(0, 1, 2)))
        n = _nifti_depth(tr_im)
        for k in range(n):
            cases.append(Case(f"tr_{k:03d}", (Source(tr_im, tuple(files), index=k),), "slice"))
    if (root / "rp_im").is_dir():
        msk, lung_dir = root / "rp_msk", root / "rp_lung_msk"
        for img in sorted(p for p in (root / "rp_im").iterdir() if is_nifti(p)):
            m = msk / img.name
            if not m.exists():
                raise DataError(f"{img}: no mask rp_msk/{img.name}")
            files = [MaskFile(m, infection=infection, allowed=(0, 1, 2, 3))]
            if (lung_dir / img.name).exists():
                files.append(MaskFile(lung_dir / img.name, lung=(1, 2), allowed=(0, 1, 2)))
            cases.append(
                Case(f"rp_{strip_suffix(img.name)}", (Source(img, tuple(files)),), "volume")
            )
    if not cases:
        raise DataError(f"{root}: no tr_im.nii.gz or rp_im/ (medseg layout)")
    return cases


def _first_existing(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).exists()), None)


def _nifti_depth(path: Path) -> int:
    from covseg.data.io.nifti import nifti_shape

    return int(nifti_shape(path)[2])


# ------------------------------------------------------------------------------- nnunet
def _label_values(spec: Sequence[str | int], names: dict[str, int], where: Path) -> tuple[int, ...]:
    out = []
    for item in spec:
        s = str(item).strip()
        if s.isdigit():
            out.append(int(s))
        elif s.lower() in names:
            out.append(names[s.lower()])
        else:
            raise DataError(f"{where}: unknown label {s!r} (labels: {sorted(names)})")
    return tuple(out)


def _nnunet(
    root: Path, *, lung_labels: Sequence[str | int], infection_labels: Sequence[str | int]
) -> list[Case]:
    ds_json = root / "dataset.json"
    try:
        meta = json.loads(ds_json.read_text())
        names = {str(k).lower(): int(v) for k, v in meta["labels"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise DataError(f"{ds_json}: unreadable nnU-Net dataset.json ({err})") from None
    infection = _label_values(infection_labels, names, ds_json)
    lung = _label_values(lung_labels, names, ds_json)
    if not infection:
        raise DataError(f"{ds_json}: no infection label among {sorted(names)}")
    allowed = tuple(sorted(set(names.values()) | {0}))
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    cases = []
    for img in sorted(p for p in img_dir.iterdir() if is_nifti(p)) if img_dir.is_dir() else []:
        stem = strip_suffix(img.name)
        if not stem.endswith("_0000"):
            continue
        cid = stem[: -len("_0000")]
        label = _first_existing(lab_dir, (f"{cid}.nii.gz", f"{cid}.nii"))
        if label is None:
            raise DataError(f"{img}: no label labelsTr/{cid}.nii.gz")
        lung_all = tuple(sorted(set(lung) | set(infection))) if lung else ()
        mf = MaskFile(label, lung=lung_all, infection=infection, allowed=allowed)
        cases.append(Case(cid, (Source(img, (mf,)),), "volume"))
    if not cases:
        raise DataError(f"{img_dir}: no *_0000.nii.gz images (nnunet layout)")
    return cases


# --------------------------------------------------------------------------------- auto
def detect_layout(root: Path, masks_dir: str = "masks") -> str:
    """Name the layout of ``root`` from its contents.

    Raises:
        DataError: ``root`` is missing, empty, or matches no layout.
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if not any(root.iterdir()):
        raise DataError(f"{root}: empty folder")
    if (root / "dataset.json").exists() and (root / "imagesTr").is_dir():
        return "nnunet"
    if any(_subdir(root, n) for n in _ZENODO_IMAGES):
        return "zenodo20"
    if _first_existing(root, ("tr_im.nii.gz", "tr_im.nii")) or (root / "rp_im").is_dir():
        return "medseg"
    if (root / "images").is_dir() and (root / masks_dir).is_dir():
        return "slices"
    raise DataError(
        f"{root}: unknown dataset layout (expected one of {', '.join(LAYOUTS)}; see --layout)"
    )


def discover(
    root: str | Path,
    layout: str = "auto",
    *,
    masks_dir: str = "masks",
    pseudo: bool = False,
    group: str | None = None,
    include_effusion: bool = False,
    lung_labels: Sequence[str | int] = NNUNET_LUNG_LABELS,
    infection_labels: Sequence[str | int] = NNUNET_INFECTION_LABELS,
) -> tuple[str, list[Case]]:
    """List the cases of a dataset folder.

    Args:
        root: the dataset folder.
        layout: one of :data:`LAYOUTS`, or ``"auto"``.
        masks_dir: ``slices``: the infection-mask folder name.
        pseudo: ``slices``: masks are soft 0..255 maps, thresholded at 128; labels "pseudo".
        group: ``slices``: regex whose first group is the patient id (slices -> one case).
        include_effusion: ``medseg``: count pleural effusion (label 3) as infection.
        lung_labels: ``nnunet``: label names or values that are lung (default names that
            dataset.json lacks are ignored).
        infection_labels: ``nnunet``: label names or values that are infection.

    Returns:
        ``(layout name, cases)``.

    Raises:
        DataError: unknown layout, missing folders, an image without its mask.
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: a file, not a dataset folder (images with their masks)")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if layout == "auto":
        layout = detect_layout(root, masks_dir)
    if layout == "zenodo20":
        return layout, _zenodo20(root)
    if layout == "slices":
        return layout, _slices(root, masks_dir=masks_dir, pseudo=pseudo, group=group)
    if layout == "medseg":
        return layout, _medseg(root, include_effusion=include_effusion)
    if layout == "nnunet":
        lung, inf = lung_labels, infection_labels
        names = _nnunet_names(root)
        if tuple(lung) == NNUNET_LUNG_LABELS:  # defaults: keep the names this dataset has
            lung = [n for n in lung if str(n).lower() in names]
        if tuple(inf) == NNUNET_INFECTION_LABELS:
            inf = [n for n in inf if str(n).lower() in names]
        return layout, _nnunet(root, lung_labels=lung, infection_labels=inf)
    raise DataError(f"{root}: unknown layout {layout!r} (expected auto or {', '.join(LAYOUTS)})")


def _nnunet_names(root: Path) -> set[str]:
    try:
        return {str(k).lower() for k in json.loads((root / "dataset.json").read_text())["labels"]}
    except Exception:
        return set()
