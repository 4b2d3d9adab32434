"""``covseg train``, ``cv``, ``report`` and ``ensemble``: training, the studies built on it, and
their reports."""

from __future__ import annotations

import argparse
import logging

from covseg.cli.common import MAX_BATCH, SEEDS, Runner, bounded_float, bounded_int, comma_list
from covseg.config import (
    AUGMENTATIONS,
    DEVICES,
    FRAMINGS,
    INPUT_NORMS,
    PRESETS,
)
from covseg.errors import CovsegError

log = logging.getLogger("covseg")


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
    p.add_argument("--epochs", type=bounded_int(1), default=100)
    p.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH), default=8)
    p.add_argument("--lr", type=bounded_float(0.0, open_lo=True), default=4e-4)
    p.add_argument("--schedule", choices=["cosine", "plateau", "none"], default="cosine")
    p.add_argument("--patience", type=bounded_int(0), default=20, help="early stopping (0 = off)")
    p.add_argument(
        "--keep-epochs",
        type=bounded_int(0),
        default=0,
        help="also keep the weights of the last N epochs (epochNNN.safetensors; for weight "
        "averaging)",
    )
    p.add_argument(
        "--dice-loss", type=bounded_float(0.0), default=0.0, help="extra soft-Dice weight"
    )
    p.add_argument(
        "--volume-loss",
        type=bounded_float(0.0),
        default=0.0,
        help="weight of a per-slice infected-area error term on the final head (burden)",
    )
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
        type=bounded_float(0.0),
        default=1.0,
        help="lung-head loss weight of slices whose lung mask `prepare` derived (0 = ignore)",
    )
    p.add_argument("--pseudo-weight", type=bounded_float(0.0), default=0.5)
    p.add_argument(
        "--extra-per-epoch",
        type=bounded_int(0),
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
    p.add_argument("--seed", type=bounded_int(*SEEDS), default=0)
    p.add_argument(
        "--threads", type=bounded_int(0), default=0, help="torch CPU threads (0 = all cores)"
    )
    p.add_argument(
        "--workers",
        type=bounded_int(-1),
        default=-1,
        help="DataLoader workers (-1 = sized to the machine)",
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
        volume=args.volume_loss,
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


def add_train(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("train", help="train one model (one fold, or all cases)")
    _train_flags(p)
    p.add_argument("--fold", type=bounded_int(0), help="test fold to hold out (0-based)")
    p.add_argument("--folds", type=bounded_int(2), default=5)
    p.add_argument("--repeat", type=bounded_int(0), default=0)
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


def add_cv(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("cv", help="repeated k-fold cross-validation (train + test every fold)")
    _train_flags(p)
    p.add_argument("--folds", type=bounded_int(2), default=5)
    p.add_argument("--repeats", type=bounded_int(1), default=3)
    p.add_argument("--fold", type=bounded_int(0), help="run only this fold")
    p.add_argument("--repeat", type=bounded_int(0), help="run only this repeat")
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
    from covseg.studies.crossval import run_cv

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
def add_report(sub: argparse._SubParsersAction) -> Runner:
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
    p.add_argument("--names", type=comma_list, help="several folders: row names, comma-separated")
    return _run_report


def _run_report(args: argparse.Namespace) -> int:
    if len(args.dir) == 1:
        from covseg.evaluation.report import make_report

        for name in ("out", "reference", "names"):
            if getattr(args, name) is not None:
                raise CovsegError(f"--{name} is for comparing several folders; one was given")
        print(make_report(args.dir[0], panels=not args.no_panels)["markdown"])
        return 0
    from covseg.studies.compare import compare_runs

    if args.out is None:
        raise CovsegError("comparing several folders needs --out (where the comparison goes)")
    result = compare_runs(
        args.dir, args.out, reference=args.reference, names=args.names, figure=not args.no_panels
    )
    print(result["markdown"])
    return 0


# --------------------------------------------------------------------------- ensemble
def add_ensemble(sub: argparse._SubParsersAction) -> Runner:
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


# ----------------------------------------------------------------------------- average
def add_average(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "average",
        help="weight averaging (SWA) of runs' last epochs",
        description="For each run folder (of `covseg train`/`cv` with --keep-epochs N), save "
        "the mean of its kept epoch weights as RUN/swa.safetensors, batch norm recomputed on "
        "the run's training cases. `covseg calibrate CV --which swa` then scores them out of "
        "fold like the runs' own checkpoints.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (e.g. CV/fold*_rep0)")
    p.add_argument("--data", nargs="+", required=True, help="the runs' prepared dataset(s)")
    p.add_argument(
        "--last", type=bounded_int(1), help="average only the last N snapshots (default: all)"
    )
    return _run_average


def _run_average(args: argparse.Namespace) -> int:
    from covseg.training.swa import average_run

    for run in args.runs:
        print(f"{average_run(run, args.data, last=args.last)}: averaged")
    return 0
