"""``covseg prepare`` and ``covseg synth``: dataset folders in, training slices or phantoms out."""

from __future__ import annotations

import argparse

from covseg.cli.common import SEEDS, Runner, bounded_int, comma_list
from covseg.config import INTENSITY_RULES
from covseg.errors import CovsegError

#: The most phantoms ``synth`` writes in one call.
MAX_SYNTH_CASES = 1000


def check_side(size: int) -> None:
    """Refuse ``--size`` above the largest slice side covseg reads (before any work; the module
    that defines it imports torch, so it is not an argparse bound)."""
    from covseg.data.io.common import MAX_SIDE

    if size > MAX_SIDE:
        raise CovsegError(f"--size {size}: covseg reads slices of at most {MAX_SIDE} px")


# ------------------------------------------------------------------------- prepare
def add_prepare(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("prepare", help="convert a dataset folder into resized training slices")
    p.add_argument("src", help="dataset folder")
    p.add_argument("out", help="output folder (built under a temporary name, then renamed)")
    p.add_argument(
        "--layout", choices=["auto", "zenodo20", "slices", "medseg", "nnunet"], default="auto"
    )
    p.add_argument(
        "--size",
        type=bounded_int(16),
        default=256,
        help="side of the square slices, 16 to covseg's largest side (256)",
    )
    p.add_argument("--intensity", choices=["auto", *INTENSITY_RULES], default="auto")
    p.add_argument("--include-effusion", action="store_true", help="medseg: effusion = infection")
    p.add_argument("--lung-labels", type=comma_list, help="nnunet: lung labels, e.g. lung,1")
    p.add_argument("--infection-labels", type=comma_list, help="nnunet: infection labels, e.g. 2,3")
    p.add_argument("--masks-dir", default="masks", help="slices: mask folder name (masks)")
    p.add_argument("--group", help="slices: regex whose first group is the patient id")
    p.add_argument("--pseudo", action="store_true", help="slices: soft 0-255 model masks")
    p.add_argument(
        "--rotate",
        type=int,
        default=0,
        help="rotate slices by K x 90 degrees counter-clockwise (zenodo20-pseudo JPGs: 1)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    return _run_prepare


def _run_prepare(args: argparse.Namespace) -> int:
    check_side(args.size)
    from covseg.data.layouts import NNUNET_INFECTION_LABELS, NNUNET_LUNG_LABELS
    from covseg.data.prepare import prepare

    prepare(
        args.src,
        args.out,
        layout=args.layout,
        size=args.size,
        intensity=args.intensity,
        include_effusion=args.include_effusion,
        lung_labels=args.lung_labels or NNUNET_LUNG_LABELS,
        infection_labels=args.infection_labels or NNUNET_INFECTION_LABELS,
        masks_dir=args.masks_dir,
        group=args.group,
        pseudo=args.pseudo,
        rotate=args.rotate,
        force=args.force,
    )
    return 0


# --------------------------------------------------------------------------- synth
def add_synth(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("synth", help="write synthetic CT phantoms in a dataset layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--layout", choices=["zenodo20", "slices"], default="zenodo20")
    p.add_argument(
        "--cases", type=bounded_int(1, MAX_SYNTH_CASES), default=6, help="number of phantoms (6)"
    )
    p.add_argument("--seed", type=bounded_int(*SEEDS), default=0)
    p.add_argument("--slices", type=bounded_int(1), default=16, help="slices per phantom (16)")
    p.add_argument(
        "--size",
        type=bounded_int(16),
        default=128,
        help="in-plane side, 16 to covseg's largest (128)",
    )
    return _run_synth


def _run_synth(args: argparse.Namespace) -> int:
    from covseg.data.io.common import MAX_VOXELS
    from covseg.data.synthetic import write_synthetic_dataset

    check_side(args.size)
    voxels = args.slices * args.size**2
    if voxels > MAX_VOXELS:  # covseg could not read such a phantom back
        raise CovsegError(
            f"--slices {args.slices} x --size {args.size}^2 = {voxels} voxels per phantom, more "
            f"than covseg reads ({MAX_VOXELS})"
        )
    write_synthetic_dataset(
        args.out, args.layout, args.cases, args.seed, slices=args.slices, size=args.size
    )
    return 0
