"""``covseg evaluate``, ``segment`` and ``export-onnx``: running a trained checkpoint."""

from __future__ import annotations

import argparse

from covseg.cli.common import Runner, comma_list
from covseg.config import (
    DEVICES,
    FRAMINGS,
    INTENSITY_RULES,
    ROBUSTNESS_VARIANTS,
)


# ------------------------------------------------------------------------ evaluate
def add_evaluate(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a labelled dataset")
    p.add_argument("--checkpoint", required=True, help="RUN/best.safetensors or 'pretrained'")
    p.add_argument("--data", required=True, help="prepared dataset, or raw slices/zenodo20 folder")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--threshold", type=float, help="override the checkpoint's threshold")
    p.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also score re-framed and re-windowed variants of every case (a table, and "
        "'robustness' in the JSON)",
    )
    p.add_argument(
        "--variants",
        metavar="NAMES",
        help="comma-separated variants for --robustness (implies it; plain is always scored; "
        f"default: all of {', '.join(ROBUSTNESS_VARIANTS)})",
    )
    _backend_flag(p)
    _framing_flag(p)
    return _run_evaluate


def _backend_flag(p: argparse.ArgumentParser) -> None:
    from covseg.config import BACKENDS

    p.add_argument(
        "--backend", choices=BACKENDS, default="torch", help="how the network runs (torch)"
    )


def _framing_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--framing",
        choices=FRAMINGS,
        help="full: the network sees each whole slice; lungs: it sees the crop to the lungs "
        "that a scout look at the whole slice found (default: the checkpoint's)",
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from covseg.evaluation.evaluate import evaluate, format_robustness, format_table

    variants = None
    if args.variants is not None:
        variants = comma_list(args.variants)
    elif args.robustness:
        variants = list(ROBUSTNESS_VARIANTS)
    result = evaluate(
        args.checkpoint,
        args.data,
        args.json,
        threshold=args.threshold,
        device=args.device,
        tta=args.tta,
        backend=args.backend,
        robustness=variants,
        framing=args.framing,
    )
    print(format_table(result))
    if "robustness" in result:
        print()
        print(format_robustness(result["robustness"]))
    return 0


# ------------------------------------------------------------------------- segment
def add_segment(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("segment", help="segment lungs and infection; masks, report, overlay")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI/DICOM/PNG, or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", default="pretrained", help="CKPT.safetensors or 'pretrained'")
    p.add_argument("--tta", action="store_true", help="average with left-right flipped slices")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (8)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument(
        "--intensity",
        choices=["auto", *INTENSITY_RULES],
        help="intensity rule of every input (default: the checkpoint's, auto = told per scan)",
    )
    _backend_flag(p)
    _framing_flag(p)
    return _run_segment


def _run_segment(args: argparse.Namespace) -> int:
    from covseg.inference.outputs import format_summary, segment_files

    reports = segment_files(
        args.inputs,
        args.out,
        checkpoint=args.checkpoint,
        tta=args.tta,
        batch_size=args.batch_size,
        device=args.device,
        backend=args.backend,
        intensity=args.intensity,
        framing=args.framing,
        progress=True,
    )
    print(format_summary(reports))
    return 0


# --------------------------------------------------------------------- export-onnx
def add_export_onnx(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (three heads)")
    p.add_argument("out", metavar="OUT.onnx", help="output file")
    p.add_argument("--checkpoint", default="pretrained", help="CKPT.safetensors or 'pretrained'")
    p.add_argument("--opset", type=int, default=17)
    return _run_export_onnx


def _run_export_onnx(args: argparse.Namespace) -> int:
    from covseg.inference.export import export_onnx

    print(export_onnx(args.checkpoint, args.out, opset=args.opset))
    return 0
