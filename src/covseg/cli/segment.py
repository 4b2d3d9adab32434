"""``covseg evaluate``, ``segment`` and ``export-onnx``: running a trained checkpoint."""

from __future__ import annotations

import argparse

from covseg.cli.common import MAX_BATCH, Runner, bounded_float, bounded_int, comma_list
from covseg.config import (
    DEVICES,
    FRAMINGS,
    INTENSITY_RULES,
    ROBUSTNESS_VARIANTS,
)
from covseg.config.choices import ONNX_OPSETS

#: The most worker processes ``--jobs`` may ask for.
MAX_JOBS = 256


# ------------------------------------------------------------------------ evaluate
def add_evaluate(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a labelled dataset")
    p.add_argument("--checkpoint", required=True, help="RUN/best.safetensors or 'pretrained'")
    p.add_argument("--data", required=True, help="prepared dataset, or raw slices/zenodo20 folder")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument(
        "--threshold",
        type=bounded_float(0.0, 1.0, open_lo=True, open_hi=True),
        help="override the checkpoint's threshold (0..1)",
    )
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
    p.add_argument(
        "--batch-size",
        type=bounded_int(1, MAX_BATCH),
        default=8,
        help="slices per forward pass (8)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument(
        "--intensity",
        choices=["auto", *INTENSITY_RULES],
        help="intensity rule of every input (default: the checkpoint's, auto = told per scan)",
    )
    _backend_flag(p)
    _framing_flag(p)
    p.add_argument(
        "--format",
        type=comma_list,
        metavar="FORMATS",
        help="mask formats, comma-separated: nifti (PNG for picture inputs), dicom-seg "
        "(<case>_seg.dcm, DICOM series only) (default: nifti, plus dicom-seg for DICOM series)",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <case>_infection_prob.nii.gz (.png for pictures): the calibrated "
        "infection probability the threshold is applied to, as uint8 0..255",
    )
    _batch_flags(p)
    _scheduler_flag(p)
    return _run_segment


def _scheduler_flag(p: argparse.ArgumentParser) -> None:
    """``--scheduler``: the cases on a Dask cluster (docs/usage/cluster.md)."""
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the cases on a Dask cluster: a running scheduler's address (tcp://HOST:8786) "
        "or local:N for N local worker processes (needs the cluster extra; instead of --jobs)",
    )


def _batch_flags(p: argparse.ArgumentParser) -> None:
    """Resume, shards, workers, overlays and the cohort table (docs/usage/cohort.md)."""
    from covseg.config.choices import OVERLAY_AUTO_MAX, OVERLAYS

    p.add_argument(
        "--redo",
        action="store_true",
        help="segment every case again (default: a case whose outputs are complete, with the "
        "same model and settings, is skipped, so a killed batch resumes where it stopped)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="this run's share of the cases (by a hash of the case name): shards 1/N..N/N, "
        "run anywhere, cover every case once (e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)",
    )
    p.add_argument(
        "--jobs",
        type=bounded_int(1, MAX_JOBS),
        default=1,
        help="worker processes, each with its share of the CPU threads (1)",
    )
    p.add_argument(
        "--overlay",
        choices=OVERLAYS,
        default="auto",
        help="overlay figures: auto = for volumes only, and none above "
        f"{OVERLAY_AUTO_MAX} cases; none; all (auto)",
    )


def _shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` as an argparse ``type`` (a bad value: one line, exit 2)."""
    from covseg.cohort.plan import parse_shard
    from covseg.errors import DataError

    try:
        return parse_shard(text)
    except DataError:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {text!r}") from None


def _run_segment(args: argparse.Namespace) -> int:
    import sys

    from covseg.cohort import Outcome, segment_cohort
    from covseg.data.io.archive import unzipped_inputs
    from covseg.inference.outputs import format_summary

    engine = None
    if args.scheduler is not None:  # checked before any work: the value, the extra
        from covseg.cohort.dask_engine import cluster_engine
        from covseg.errors import DataError

        if args.jobs != 1:
            raise DataError("--scheduler and --jobs: give one (the cluster's workers are the jobs)")
        engine = cluster_engine(args.scheduler)

    def failed(outcome: Outcome) -> None:  # one line per failed case, as it fails
        if outcome.status == "failed":
            print(f"covseg segment: error: {outcome.reason}", file=sys.stderr, flush=True)

    with unzipped_inputs(args.inputs) as (inputs, labels):  # x.zip: extracted as the server does
        run = segment_cohort(
            inputs,
            args.out,
            checkpoint=args.checkpoint,
            tta=args.tta,
            batch_size=args.batch_size,
            device=args.device,
            backend=args.backend,
            intensity=args.intensity,
            framing=args.framing,
            progress=True,
            formats=args.format,
            overlay=args.overlay,
            redo=args.redo,
            shard=args.shard,
            jobs=args.jobs,
            engine=engine,
            on_outcome=failed,
            labels=labels,
            probability=args.probabilities,
        )
    print(format_summary([o.report for o in run.outcomes if o.report is not None]))
    if run.count("skipped") or run.failed:  # the table above lists this run's new cases only
        where = f"every case: {run.table}" if run.table else f"nothing written to {args.out}"
        print(
            f"\n{run.count('done')} done, {run.count('skipped')} skipped (finished earlier), "
            f"{len(run.failed)} failed; {where}"
        )
    return 2 if run.failed else 0


# --------------------------------------------------------------------- export-onnx
def add_export_onnx(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (three heads)")
    p.add_argument("out", metavar="OUT.onnx", help="output file")
    p.add_argument("--checkpoint", default="pretrained", help="CKPT.safetensors or 'pretrained'")
    p.add_argument(
        "--opset",
        type=bounded_int(*ONNX_OPSETS),
        default=17,
        help=f"ONNX opset, {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]} (17)",
    )
    return _run_export_onnx


def _run_export_onnx(args: argparse.Namespace) -> int:
    from covseg.inference.export import export_onnx

    print(export_onnx(args.checkpoint, args.out, opset=args.opset))
    return 0
