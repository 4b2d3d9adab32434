"""``covseg calibrate``: the out-of-fold burden study of a cross-validation, and a checkpoint
that carries its calibration, interval and post-processing."""

from __future__ import annotations

import argparse
from pathlib import Path

from covseg.cli.common import Runner
from covseg.config import DEVICES, FRAMINGS
from covseg.errors import CovsegError


def add_calibrate(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "calibrate",
        help="burden error, calibration and post-processing on a cv's out-of-fold predictions",
        description="Predict every run's test cases of a finished `covseg cv` (as segment "
        "does), fit the infection head's calibration, choose the post-processing (objective: "
        "per source, mean of per-slice and per-patient Dice minus the median absolute "
        "relative volume error, sources weighted equally) and the burden interval on them, "
        "and estimate all of it honestly by a nested choice (each run scored with what the "
        "other runs chose). Writes burden_oof.json, burden_oof.md and bland_altman.png into "
        "--out; with --ship, copies a checkpoint with what was chosen into --dest.",
    )
    p.add_argument("cv_dir", help="the folder of `covseg cv` (two or more finished runs)")
    p.add_argument("--data", nargs="+", required=True, help="the cv's prepared dataset(s)")
    p.add_argument("--out", required=True, help="where the study's files go")
    p.add_argument(
        "--which",
        choices=["last", "best", "swa"],
        default="last",
        help="run checkpoints (swa: `covseg average`'s)",
    )
    p.add_argument(
        "--rule-from",
        help="also study keeping this checkpoint's post-processing (calibration and interval "
        "only; 'pretrained' = the shipped model's); --ship then ships that variant",
    )
    p.add_argument("--ship", help="checkpoint to copy with what was chosen (e.g. the final model)")
    p.add_argument("--dest", help="where --ship writes (.safetensors)")
    p.add_argument(
        "--framing", choices=FRAMINGS, help="how the runs look at slices (default: their own)"
    )
    p.add_argument("--device", choices=DEVICES, default="cpu")
    return _run_calibrate


def _run_calibrate(args: argparse.Namespace) -> int:
    from covseg.checkpoint import pretrained_path, read_meta
    from covseg.studies.calibrate import run_study, ship_calibrated

    if (args.ship is None) != (args.dest is None):
        raise CovsegError("--ship and --dest go together")
    rule = None
    if args.rule_from is not None:
        src = pretrained_path() if args.rule_from == "pretrained" else args.rule_from
        rule = read_meta(src).postprocessing
    rec = run_study(
        args.cv_dir,
        args.data,
        args.out,
        which=args.which,
        device=args.device,
        rule=rule,
        framing=args.framing,
    )
    print((Path(args.out) / "burden_oof.md").read_text())
    print(f"headline estimate (smaller nested error): {rec['headline']}")
    if "headline_rule" in rec:
        print(f"headline estimate with the kept rule: {rec['headline_rule']}")
    if args.ship is not None:
        how = "calibration and interval only" if rule is not None else "calibration, rule"
        dest = ship_calibrated(
            args.ship,
            args.dest,
            rec,
            source=f"out of fold: {args.cv_dir} ({', '.join(rec['runs'])}), {how}",
            keep_rule=rule is not None,
        )
        print(f"{dest}: shipped ({how})")
    return 0
