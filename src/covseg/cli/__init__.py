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
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from covseg._version import __version__
from covseg.config import (
    AUGMENTATIONS,
    DEVICES,
    FRAMINGS,
    INPUT_NORMS,
    INTENSITY_RULES,
    PRESETS,
    ROBUSTNESS_VARIANTS,
)
from covseg.errors import CovsegError

__all__ = ["main"]

log = logging.getLogger("covseg")

Runner = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- model-info
def _add_model_info(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("model-info", help="build a model, run one forward pass, print its size")
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--model", choices=["bifurcated", "unet"], default="bifurcated")
    p.add_argument("--size", type=int, default=256, help="input side length (default 256)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    return _run_model_info


def _run_model_info(args: argparse.Namespace) -> int:
    from covseg.models import model_info

    if not 16 <= args.size <= 4096:
        raise CovsegError(f"--size must be in 16..4096, got {args.size}")
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
    p.add_argument("--intensity", choices=["auto", *INTENSITY_RULES], default="auto")
    p.add_argument("--include-effusion", action="store_true", help="medseg: effusion = infection")
    p.add_argument("--lung-labels", type=_csv, help="nnunet: lung labels, e.g. lung,1")
    p.add_argument("--infection-labels", type=_csv, help="nnunet: infection labels, e.g. 2,3")
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
        rotate=args.rotate,
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


# --------------------------------------------------------------------------- train / cv
def _train_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `cv` (model, optimisation, device)."""
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="prepared dataset(s) (covseg prepare); several are trained on together, case ids "
        "NAME/ID, folds stratified by dataset",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", choices=list(PRESETS), default="small")
    p.add_argument("--model", choices=["bifurcated", "unet"], default="bifurcated")
    p.add_argument("--lung-gate", choices=["binary", "soft"], help="override the preset's gate")
    p.add_argument("--no-lung-gate", action="store_true", help="ablation: no lung gating")
    p.add_argument(
        "--input-norm",
        choices=INPUT_NORMS,
        help="override the preset's input step: 'equalize' = per-slice histogram equalisation "
        "inside the network (recorded in the checkpoint)",
    )
    p.add_argument("--no-inception", action="store_true", help="ablation: double convs only")
    p.add_argument("--no-deep-supervision", action="store_true", help="ablation: aux loss 0")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--schedule", choices=["cosine", "plateau", "none"], default="cosine")
    p.add_argument("--patience", type=int, default=20, help="early stopping (0 = off)")
    p.add_argument(
        "--keep-epochs",
        type=int,
        default=0,
        help="also keep the weights of the last N epochs (epochNNN.safetensors; for weight "
        "averaging)",
    )
    p.add_argument("--dice-loss", type=float, default=0.0, help="extra soft-Dice weight")
    p.add_argument(
        "--dice-mode",
        choices=["batch", "slice"],
        default="batch",
        help="the soft-Dice term over the batch's pixels (pooled Dice) or per slice, averaged "
        "(per-slice mean Dice)",
    )
    p.add_argument("--no-augment", action="store_true")
    p.add_argument(
        "--augmentation",
        choices=AUGMENTATIONS,
        default="basic",
        help="basic: flips, small rotations/zooms, contrast; robust: also up-down flips, zoom "
        "0.5-2x, crops to the lungs, windows, gamma, CLAHE, noise, blur; robust_lungs: robust "
        "with 3 in 4 slices cropped to the lungs (the framing of --framing lungs); "
        "robust_clahe_first: robust with CLAHE on the whole picture, before the framing",
    )
    p.add_argument(
        "--sampling",
        choices=["slices", "sources"],
        default="slices",
        help="several --data: every slice once per epoch, or an equal share per dataset",
    )
    p.add_argument(
        "--derived-lung-weight",
        type=float,
        default=1.0,
        help="lung-head loss weight of slices whose lung mask `prepare` derived (0 = ignore)",
    )
    p.add_argument("--pseudo-weight", type=float, default=0.5)
    p.add_argument(
        "--extra-per-epoch",
        type=int,
        default=0,
        help="slices drawn from --extra-data per epoch (0 = all)",
    )
    p.add_argument("--extra-data", help="prepared pseudo-labelled data, training only")
    p.add_argument(
        "--framing",
        choices=FRAMINGS,
        default="full",
        help="how validation (and then segment) looks at slices: whole, or cropped to the lungs "
        "a scout look found; the post-processing is chosen on those predictions (full)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    p.add_argument(
        "--workers", type=int, default=-1, help="DataLoader workers (-1 = sized to the machine)"
    )


def _configs(args: argparse.Namespace):
    """The model and training configs the flags ask for; a value out of range is one line."""
    try:
        return _build_configs(args)
    except ValueError as err:
        raise CovsegError(f"bad setting: {err}") from None


def _build_configs(args: argparse.Namespace):
    from covseg.config import PRESETS, TrainConfig

    model_cfg = PRESETS[args.preset].replace(model=args.model)
    if args.lung_gate:
        model_cfg = model_cfg.replace(lung_gate=args.lung_gate)
    if args.no_lung_gate:
        model_cfg = model_cfg.replace(lung_gate="none")
    if args.no_inception:
        model_cfg = model_cfg.replace(use_inception=False)
    if args.input_norm:
        model_cfg = model_cfg.replace(input_norm=args.input_norm)
    train_cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        patience=args.patience,
        keep_epochs=args.keep_epochs,
        dice=args.dice_loss,
        dice_mode=args.dice_mode,
        augment=not args.no_augment,
        augmentation=args.augmentation,
        sampling=args.sampling,
        framing=args.framing,
        derived_lung_weight=args.derived_lung_weight,
        pseudo_weight=args.pseudo_weight,
        extra_per_epoch=args.extra_per_epoch,
        w_aux=0.0 if args.no_deep_supervision else 1.0,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        workers=args.workers,
    )
    return model_cfg, train_cfg


def _add_train(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("train", help="train one model (one fold, or all cases)")
    _train_flags(p)
    p.add_argument("--fold", type=int, help="test fold to hold out (0-based)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.*")
    p.add_argument(
        "--force", action="store_true", help="with --resume: continue although settings differ"
    )
    return _run_train


def _run_train(args: argparse.Namespace) -> int:
    from covseg.training.loop import train

    model_cfg, train_cfg = _configs(args)
    try:
        train_cfg = train_cfg.replace(fold=args.fold, folds=args.folds, repeat=args.repeat)
    except ValueError as err:
        raise CovsegError(f"bad setting: {err}") from None
    out = train(
        model_cfg,
        train_cfg,
        args.data,
        args.out,
        extra_data=args.extra_data,
        resume=args.resume,
        force=args.force,
    )
    log.info("model: %s", out / "best.safetensors")
    return 0


def _add_cv(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("cv", help="repeated k-fold cross-validation (train + test every fold)")
    _train_flags(p)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fold", type=int, help="run only this fold")
    p.add_argument("--repeat", type=int, help="run only this repeat")
    p.add_argument(
        "--force", action="store_true", help="start over the runs made with other settings"
    )
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also score each test fold re-framed and re-windowed (finished runs too)",
    )
    return _run_cv


def _run_cv(args: argparse.Namespace) -> int:
    from covseg.evaluation.crossval import run_cv

    model_cfg, train_cfg = _configs(args)
    run_cv(
        args.data,
        args.out,
        model_cfg,
        train_cfg,
        folds=args.folds,
        repeats=args.repeats,
        fold=args.fold,
        repeat=args.repeat,
        extra_data=args.extra_data,
        force=args.force,
        robustness=args.robustness,
    )
    return 0


# -------------------------------------------------------------------- report / evaluate
def _add_report(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "report",
        help="Table 2 of a cross-validation folder; with several, a paired comparison",
        description="One folder: its Table 2 (report.md/.csv/.json, panels.png) in that folder. "
        "Several folders run on the same folds: one table of every row, paired differences "
        "against --reference with Wilcoxon signed-rank p-values, and a per-fold Dice figure "
        "(comparison.md/.csv/.json/.png in --out).",
    )
    p.add_argument("dir", nargs="+", help="the folder(s) of `covseg cv`")
    p.add_argument("--no-panels", action="store_true", help="skip panels.png / comparison.png")
    p.add_argument("--out", help="several folders: where the comparison goes (required)")
    p.add_argument("--reference", help="several folders: the row compared against (the first)")
    p.add_argument("--names", type=_csv, help="several folders: row names, comma-separated")
    return _run_report


def _run_report(args: argparse.Namespace) -> int:
    if len(args.dir) == 1:
        from covseg.evaluation.report import make_report

        for name in ("out", "reference", "names"):
            if getattr(args, name) is not None:
                raise CovsegError(f"--{name} is for comparing several folders; one was given")
        print(make_report(args.dir[0], panels=not args.no_panels)["markdown"])
        return 0
    from covseg.evaluation.compare import compare_runs

    if args.out is None:
        raise CovsegError("comparing several folders needs --out (where the comparison goes)")
    result = compare_runs(
        args.dir, args.out, reference=args.reference, names=args.names, figure=not args.no_panels
    )
    print(result["markdown"])
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> Runner:
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
    from covseg.evaluation.evaluate import evaluate, format_table
    from covseg.evaluation.robustness import format_robustness

    variants = None
    if args.variants is not None:
        variants = _csv(args.variants)
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
def _add_segment(sub: argparse._SubParsersAction) -> Runner:
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
def _add_export_onnx(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (three heads)")
    p.add_argument("out", metavar="OUT.onnx", help="output file")
    p.add_argument("--checkpoint", default="pretrained", help="CKPT.safetensors or 'pretrained'")
    p.add_argument("--opset", type=int, default=17)
    return _run_export_onnx


def _run_export_onnx(args: argparse.Namespace) -> int:
    from covseg.inference.export import export_onnx

    print(export_onnx(args.checkpoint, args.out, opset=args.opset))
    return 0


# --------------------------------------------------------------------------- ensemble
def _add_ensemble(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "ensemble",
        help="join trained checkpoints into one (mean of their probabilities)",
        description="Save the ensemble of two or more checkpoints (the mean of their "
        "probabilities, as nnU-Net averages its folds) as one checkpoint that segment, "
        "evaluate, export-onnx and serve take like any other. With --data, its post-processing "
        "is chosen again on the validation slices the members held out (they must have been "
        "trained on the same cases with the same validation split).",
    )
    p.add_argument("checkpoint", nargs="+", help="RUN/best.safetensors (or 'pretrained'), 2+")
    p.add_argument("--out", required=True, help="the ensemble's .safetensors (.json beside it)")
    p.add_argument("--data", nargs="+", help="the members' prepared dataset(s), in their order")
    p.add_argument("--framing", choices=FRAMINGS, help="default: the first member's")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    return _run_ensemble


def _run_ensemble(args: argparse.Namespace) -> int:
    from covseg.training.ensemble import ensemble

    meta = ensemble(
        args.checkpoint, args.out, data_root=args.data, framing=args.framing, device=args.device
    )
    val = meta.metrics.get("val_dice_postprocessed")
    print(
        f"{args.out}: {len(meta.members)} members, framing {meta.preprocessing.framing}, "
        f"{meta.postprocessing} ({meta.postprocessing_source}"
        + (f", val Dice {val:.4f})" if val is not None else ")")
    )
    return 0


# --------------------------------------------------------------------------- serve
def _add_serve(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("serve", help="local web viewer: upload scans, see masks and reports")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=8765, help="port (8765; 0 = any free port)")
    p.add_argument("--checkpoint", default="pretrained", help="CKPT.safetensors or 'pretrained'")
    p.add_argument("--data-dir", help="keep uploads and results here (default: a temporary folder)")
    p.add_argument("--max-upload-mb", type=int, default=2048, help="largest upload (2048 MiB)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    return _run_serve


def _run_serve(args: argparse.Namespace) -> int:
    if args.max_upload_mb < 1:
        raise CovsegError(f"--max-upload-mb must be at least 1, got {args.max_upload_mb}")
    try:
        from covseg.serve import ServeConfig, serve
    except ImportError as err:
        raise CovsegError(
            f"serve needs its web packages ({err}): pip install 'covseg[serve]'"
        ) from None
    serve(
        ServeConfig(
            host=args.host,
            port=args.port,
            checkpoint=args.checkpoint,
            data_dir=args.data_dir,
            max_upload_bytes=args.max_upload_mb << 20,
            device=args.device,
        )
    )
    return 0


# Sub-commands in the order `covseg --help` lists them.
COMMANDS: list[Callable[[argparse._SubParsersAction], Runner]] = [
    _add_model_info,
    _add_demo,
    _add_prepare,
    _add_synth,
    _add_train,
    _add_cv,
    _add_report,
    _add_evaluate,
    _add_segment,
    _add_export_onnx,
    _add_ensemble,
    _add_serve,
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


#: Commands that only run inference, where transparent huge pages pay (see :func:`main`).
HUGE_PAGE_COMMANDS = frozenset({"segment", "evaluate"})


def main(argv: Sequence[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command in HUGE_PAGE_COMMANDS and "torch" not in sys.modules:
        # PyTorch reads this once, at its first CPU allocation. Inference re-allocates its
        # full-resolution activations layer after layer; with 4 KiB pages the page faults took
        # ~55 s of system time in a ~78 s `segment` of 512x512x300 (huge pages: ~55 s wall;
        # BENCHMARKS.md). Training is slower with them (benchmarks/train_step.py), so only here.
        # THP_MEM_ALLOC_ENABLE=0 opts out.
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    # Library warnings (numpy overflow, PIL, pydicom, ...) go to the log at debug level, never
    # around the one-line error: shown with --verbose only.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return runners[args.command](args)
    except CovsegError as err:
        # One line, whatever a wrapped library message contained.
        print(f"covseg {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno is None:
            raise
        # A file system refusal (full disk, read-only folder, ...) met after the checks.
        where = f"{err.filename}: " if err.filename else ""
        print(f"covseg {args.command}: error: {where}{err.strerror}", file=sys.stderr)
        return 2
    except Terminated:
        print("covseg: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("covseg: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` removes its temporary files."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated
