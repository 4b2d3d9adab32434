"""``covseg calibrate``: the out-of-fold burden study of a finished ``covseg cv``, and a
checkpoint that carries what it chose.

:func:`run_study` predicts every run's test cases (:func:`covseg.studies.oof.collect_oof`, the
Segmenter of ``segment``), runs :mod:`covseg.studies.burden` on them and writes
``burden_oof.json``, ``burden_oof.md`` (the tables) and ``bland_altman.png`` (predicted - true
"% infected" per case, one panel per source: the runs' own rule, and the nested choice).
:func:`ship_calibrated` copies a checkpoint with the calibration, the interval and the
post-processing chosen on all runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.config import Calibration, PostProcessing, from_dict, to_dict
from covseg.evaluation.agreement import CaseBurden, agreement
from covseg.studies.burden import OOFCase, evaluate, fit, nested

__all__ = [
    "burden_rows",
    "cases_from_oof",
    "headline",
    "run_study",
    "ship_calibrated",
    "study",
    "summarise",
]


def cases_from_oof(oof: Any) -> list[OOFCase]:
    """The :class:`OOFCase` of every case of a :class:`~covseg.studies.oof.OOF` (case ids
    ``RUN/DATASET::CASE``, or ``RUN/CASE`` for one dataset)."""
    from covseg.data.dataset import SOURCE_SEP

    out = []
    for i, cid in enumerate(oof.case_ids):
        run, _, rest = cid.partition("/")
        name, sep, case = rest.partition(SOURCE_SEP)
        source, case = (name, case) if sep else ("", rest)
        it = oof.items[i]
        out.append(
            OOFCase(
                run,
                source,
                case,
                it.lung,
                it.infection,
                it.truth.astype(bool),
                oof.lung_truth[i],
                oof.voxel_ml[i],
                oof.own[i],
            )
        )
    return out


def study(
    cases: Sequence[OOFCase],
    model_size: int,
    seed: int = 0,
    rule: PostProcessing | None = None,
) -> dict[str, Any]:
    """The whole out-of-fold burden study of a cross-validation, as a JSON-ready record.

    ``own``: every run's cases with the run's own post-processing (chosen on its validation
    slices; no calibration): the figures of the recipe as it was. ``nested``: each run's cases
    with the calibration, post-processing and interval chosen on the other runs
    (:func:`nested`). ``chosen``: :func:`fit` on all runs (what is shipped), with its optimistic
    in-sample figures. Each under ``summary`` per source, and the per-case rows. With ``rule``
    (e.g. the shipped model's post-processing) also ``nested_rule`` and ``chosen_rule``: the
    same with the post-processing kept and only the calibration and interval chosen.
    """
    own = evaluate(cases, model_size, lambda c: c.own, None)
    nest = nested(cases, model_size, seed)
    f = fit(cases, model_size, seed)
    insample = evaluate(cases, model_size, lambda c: f.postprocessing, f.calibration)

    def rows_of(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            rec = {"run": r["run"], "n_slices": len(r["slice_dice"]),
                   "slice_dice_mean": float(np.mean(r["slice_dice"])), "mask": r["mask"].row()}  # fmt: skip
            if "expected" in r:
                rec["expected"] = r["expected"].row()
            out.append(rec)
        return out

    extra: dict[str, Any] = {}
    if rule is not None:
        nest_r = nested(cases, model_size, seed, rule)
        f_r = fit(cases, model_size, seed, rule)
        extra = {
            "rule": to_dict(rule),
            "nested_rule": {
                "summary": summarise(nest_r["rows"]),
                "chosen": nest_r["chosen"],
                "cases": rows_of(nest_r["rows"]),
            },
            "chosen_rule": {
                "postprocessing": to_dict(f_r.postprocessing),
                "calibration": to_dict(f_r.calibration),
            },
        }
    return {
        **extra,
        "objective": "mean over sources of (per-slice mean Dice + mean per-case pooled Dice)/2 "
        "- median |relative infected-volume error|",
        "runs": sorted({c.run for c in cases}),
        "n_cases": len(cases),
        "own": {"summary": summarise(own), "cases": rows_of(own)},
        "nested": {
            "summary": summarise(nest["rows"]),
            "chosen": nest["chosen"],
            "cases": rows_of(nest["rows"]),
        },
        "chosen": {
            "postprocessing": to_dict(f.postprocessing),
            "calibration": to_dict(f.calibration),
            "objective": f.objective,
            "summary_in_sample": summarise(insample),
        },
    }


def headline(record: dict[str, Any], part: str = "nested") -> str:
    """``"mask"`` or ``"expected"``: the infected-volume estimate with the smaller nested
    median absolute relative error, averaged over sources.

    Args:
        record: :func:`study`'s record.
        part: ``"nested"`` (the rule chosen out of fold) or ``"nested_rule"`` (a given rule
            kept, calibration only): the estimates are compared under the rule that is shipped.
    """
    per = record[part]["summary"].values()
    mask = float(np.mean([s["mask"]["median_abs_relative_error"] for s in per]))
    exp = float(np.mean([s["expected"]["median_abs_relative_error"] for s in per]))
    return "expected" if exp < mask else "mask"


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def tables(record: dict[str, Any]) -> str:
    """The Markdown tables of a :func:`study` record: per source and rule, the Dice and the
    burden error of the mask volume, and (nested) of the expected volume with its interval."""
    lines = [
        "| source | rule | cases | slice Dice | patient Dice | median abs rel. vol. error "
        "| over / all | bias % pts | 95 % LoA | Spearman | interval coverage |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    rules = (
        ("own", "runs' own (validation)", "mask"),
        ("nested", "out of fold (nested)", "mask"),
        ("nested", "out of fold, expected volume", "expected"),
        ("nested_rule", "fixed rule, calibrated: mask", "mask"),
        ("nested_rule", "fixed rule, calibrated: expected volume", "expected"),
    )
    for source in record["own"]["summary"]:
        for part, label, est in rules:
            if part not in record:
                continue
            s = record[part]["summary"][source]
            a = s.get(est)
            if a is None:
                continue
            ba = a["bland_altman"]
            lines.append(
                f"| {source} | {label} | {s['n_cases']} | {_fmt(s['per_slice_dice'])} "
                f"| {_fmt(a['pooled_dice_mean'])} | {_fmt(a['median_abs_relative_error'])} "
                f"| {a['overestimated']} / {a['n_cases']} | {_fmt(ba['bias'], '+.2f')} "
                f"| {_fmt(ba['loa_low'], '+.1f')} … {_fmt(ba['loa_high'], '+.1f')} "
                f"| {_fmt(a['spearman'], '.2f')} | {_fmt(a['interval_coverage'], '.2f')} |"
            )
    return "\n".join(lines) + "\n"


def run_study(
    cv_dir: str | Path,
    data_roots: Sequence[str | Path],
    out: str | Path,
    *,
    which: str = "last",
    device: str = "cpu",
    seed: int = 0,
    rule: PostProcessing | None = None,
    framing: str | None = None,
) -> dict[str, Any]:
    """Collect the out-of-fold predictions of ``cv_dir``'s ``which`` checkpoints, run
    :func:`study`, and write ``burden_oof.json``, ``burden_oof.md`` and ``bland_altman.png``
    into ``out``.

    Raises:
        DataError: no finished run in ``cv_dir``, or fewer than two (nothing to nest).
    """
    from covseg.data.dataset import open_prepared
    from covseg.errors import DataError
    from covseg.figures.agreement import plot_bland_altman
    from covseg.files import write_json, write_text
    from covseg.studies.oof import collect_oof

    oof = collect_oof(cv_dir, open_prepared(list(data_roots)), which, device, framing)
    cases = cases_from_oof(oof)
    if len({c.run for c in cases}) < 2:
        raise DataError(f"{cv_dir}: the burden study needs two or more finished runs")
    rec = study(cases, oof.model_size, seed, rule)
    rec["headline"] = headline(rec)
    if "nested_rule" in rec:
        rec["headline_rule"] = headline(rec, "nested_rule")
    rec["cv_dir"], rec["which"], rec["framing"] = str(cv_dir), which, framing
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "burden_oof.json", rec)
    write_text(out / "burden_oof.md", tables(rec))
    panels = {}
    for part, label in (("own", "own rule"), ("nested", "out of fold")):
        for source in rec[part]["summary"]:
            pairs = [
                (r["mask"]["true_percent"], r["mask"]["pred_percent"])
                for r in rec[part]["cases"]
                if r["mask"]["source"] == source
            ]
            panels[f"{source or 'all'}: {label}"] = pairs
    plot_bland_altman(panels, out / "bland_altman.png", "% of lung infected, per case")
    return rec


def ship_calibrated(
    checkpoint: str | Path,
    dest: str | Path,
    record: dict[str, Any],
    *,
    source: str,
    keep_rule: bool = False,
) -> Path:
    """Copy ``checkpoint`` to ``dest`` with the calibration and post-processing that
    :func:`study` chose on all runs, and its :func:`headline`.

    Args:
        checkpoint: the final model.
        dest: the new checkpoint (may be ``checkpoint``).
        record: :func:`run_study`'s record.
        source: provenance, recorded as ``postprocessing_source`` and ``calibration.source``.
        keep_rule: ship ``record["chosen_rule"]`` (the given rule kept, calibration and
            interval only) instead of ``record["chosen"]``.
    """
    from covseg.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(checkpoint)
    chosen = record["chosen_rule" if keep_rule else "chosen"]
    cal = from_dict(Calibration, chosen["calibration"]).replace(
        headline=record.get("headline_rule" if keep_rule else "headline", "mask"), source=source
    )
    post = from_dict(PostProcessing, chosen["postprocessing"])
    return save_checkpoint(
        dest,
        model,
        meta.replace(postprocessing=post, postprocessing_source=source, calibration=cal),
    )


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per source: per-slice mean Dice, mean per-case pooled Dice, and the burden agreement of
    the mask volume (and of the expected volume with its interval where scored)."""
    out: dict[str, Any] = {}
    for s in sorted({r["mask"].source for r in rows}):
        sel = [r for r in rows if r["mask"].source == s]
        rec: dict[str, Any] = {
            "n_cases": len(sel),
            "n_slices": int(sum(len(r["slice_dice"]) for r in sel)),
            "per_slice_dice": float(np.concatenate([r["slice_dice"] for r in sel]).mean()),
            "mask": agreement([r["mask"] for r in sel]),
        }
        if all("expected" in r for r in sel):
            rec["expected"] = agreement([r["expected"] for r in sel])
        out[s] = rec
    return out


def burden_rows(rows: Sequence[dict[str, Any]], which: str = "mask") -> list[CaseBurden]:
    """The :class:`CaseBurden` of every row for one estimate (``"mask"`` or ``"expected"``)."""
    return [r[which] for r in rows if which in r]
