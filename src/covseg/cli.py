"""The ``covseg`` command line.

Each sub-command only parses arguments and calls one typed function of the library (the nnU-Net
habit), so everything the CLI does is also an API. A :class:`~covseg.errors.CovsegError` becomes
one line on stderr and exit code 2; no traceback reaches the user.

argparse (stdlib) rather than typer/click: no extra dependency, and full control over the one-line
error + exit-code contract.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from covseg._version import __version__
from covseg.errors import CovsegError

__all__ = ["main"]

log = logging.getLogger("covseg")

Runner = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- model-info
def _add_model_info(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("model-info", help="build a model, run one forward pass, print its size")
    p.add_argument("--preset", choices=["paper", "small"], default="small")
    p.add_argument("--model", choices=["bifurcated", "unet"], default="bifurcated")
    p.add_argument("--size", type=int, default=256, help="input side length (default 256)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    return _run_model_info


def _run_model_info(args: argparse.Namespace) -> int:
    from covseg.models import model_info

    info = model_info(args.preset, model=args.model, size=args.size)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"preset {info['preset']} ({args.model}): {info['params']:,} parameters")
        for name, shape in info["outputs"].items():
            print(f"  {name:<14} {tuple(shape) if shape else None}")
    return 0


# ---------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("demo", help="the main job on synthetic phantoms (what `make demo` runs)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    return _run_demo


def _run_demo(args: argparse.Namespace) -> int:
    from covseg.demo import run_demo

    run_demo(args.out)
    return 0


# ------------------------------------------------------------------------- prepare
def _add_prepare(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("prepare", help="convert a dataset folder into resized training slices")
    p.add_argument("src", help="dataset folder")
    p.add_argument("out", help="output folder (built under a temporary name, then renamed)")
    p.add_argument(
        "--layout", choices=["auto", "zenodo20", "slices", "medseg", "nnunet"], default="auto"
    )
    p.add_argument("--size", type=int, default=256, help="side of the square slices (256)")
    p.add_argument("--intensity", choices=["auto", "hu", "uint8"], default="auto")
    p.add_argument("--include-effusion", action="store_true", help="medseg: effusion = infection")
    p.add_argument("--lung-labels", type=_csv, help="nnunet: lung labels, e.g. lung,1")
    p.add_argument("--infection-labels", type=_csv, help="nnunet: infection labels, e.g. 2,3")
    p.add_argument("--masks-dir", default="masks", help="slices: mask folder name (masks)")
    p.add_argument("--group", help="slices: regex whose first group is the patient id")
    p.add_argument("--pseudo", action="store_true", help="slices: soft 0-255 model masks")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    return _run_prepare


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _run_prepare(args: argparse.Namespace) -> int:
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
        force=args.force,
    )
    return 0


# --------------------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("synth", help="write synthetic CT phantoms in a dataset layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--layout", choices=["zenodo20", "slices"], default="zenodo20")
    p.add_argument("--cases", type=int, default=6, help="number of phantoms (6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=16, help="slices per phantom (16)")
    p.add_argument("--size", type=int, default=128, help="in-plane side (128)")
    return _run_synth


def _run_synth(args: argparse.Namespace) -> int:
    from covseg.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(
        args.out, args.layout, args.cases, args.seed, slices=args.slices, size=args.size
    )
    return 0


# Sub-commands in the order `covseg --help` lists them.
COMMANDS: list[Callable[[argparse._SubParsersAction], Runner]] = [
    _add_model_info,
    _add_demo,
    _add_prepare,
    _add_synth,
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    parser = argparse.ArgumentParser(
        prog="covseg", description="Lung and COVID-19 infection segmentation in chest CT."
    )
    parser.add_argument("--version", action="version", version=f"covseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runners: dict[str, Runner] = {}
    for add in COMMANDS:
        before = set(sub.choices)
        runner = add(sub)
        for name in set(sub.choices) - before:
            runners[name] = runner
    return parser, runners


def main(argv: Sequence[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return runners[args.command](args)
    except CovsegError as err:
        print(f"covseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covseg: interrupted", file=sys.stderr)
        return 130
