"""``covseg model-info`` and ``covseg demo``: a look at a model, and the main job on phantoms."""

from __future__ import annotations

import argparse
import json

from covseg.cli.common import Runner, bounded_int
from covseg.config import PRESETS


# --------------------------------------------------------------------------- model-info
def add_model_info(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("model-info", help="build a model, run one forward pass, print its size")
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--model", choices=["bifurcated", "unet"], default="bifurcated")
    p.add_argument(
        "--size", type=bounded_int(16, 4096), default=256, help="input side length, 16..4096 (256)"
    )
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
def add_demo(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("demo", help="the main job on synthetic phantoms (what `make demo` runs)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    return _run_demo


def _run_demo(args: argparse.Namespace) -> int:
    from covseg.demo import run_demo

    run_demo(args.out)
    return 0
