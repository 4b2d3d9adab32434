"""The paper's Table 2 from a cross-validation folder.

Each fold's number is the mean over its repeats; "Average ± std" is the mean and the population
standard deviation (``ddof=0``) over folds. Each aggregation mode of :mod:`covseg.metrics` gets
its own table; volume datasets also get HD95 and NSD@3mm (mean over the test volumes of a run,
NaN HD95 of an empty prediction skipped). Every report also gets the infection-burden error
per case (patient) -- relative volume error, Bland-Altman bias and limits of "% infected",
rank correlation, per-case pooled Dice (:mod:`covseg.evaluation.agreement`) -- per dataset, and
``bland_altman.png`` beside the Dice panels.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import DataError
from covseg.evaluation.agreement import CaseBurden, agreement, format_agreement
from covseg.evaluation.metrics import by_lesion_size, format_lesion_size_table
from covseg.evaluation.scores import Scores
from covseg.files import write_json, write_text

__all__ = [
    "MODES",
    "ROWS",
    "fold_summary",
    "format_markdown",
    "format_robustness_table",
    "lesion_size_rows",
    "load_robustness",
    "load_runs",
    "make_report",
    "robustness_table",
    "run_scores",
    "source_names",
    "source_runs",
]

MODES = ("per_slice_mean", "per_volume_mean", "pooled")
#: Table rows: (metric key, label), in the paper's order.
ROWS = (
    ("iou", "IoU"),
    ("dice", "Dice"),
    ("ppv", "PPV"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
)
SURFACE = (("hd95_mm", "HD95 (mm)"), ("nsd_3mm", "NSD@3mm"))

_RUN = re.compile(r"^fold(\d+)_rep(\d+)$")


def load_runs(root: Path) -> dict[int, dict[int, Scores]]:
    """The finished runs of a cross-validation folder: ``{fold: {repeat: Scores}}`` (0-based).

    Raises:
        DataError: no finished run, or a damaged ``test_metrics.json``.
    """
    runs: dict[int, dict[int, Scores]] = {}
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        m = _RUN.match(d.name)
        if m and (d / "test_metrics.json").exists():
            path = d / "test_metrics.json"
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise DataError(f"{path}: unreadable ({err})") from None
            runs.setdefault(int(m.group(1)), {})[int(m.group(2))] = Scores.from_record(record, path)
    if not runs:
        raise DataError(f"{root}: no fold*_rep*/test_metrics.json (run `covseg cv` first)")
    return runs


def run_scores(run: Scores, mode: str) -> dict[str, float]:
    """One run's metrics in aggregation ``mode`` (per-slice mode: with the surface means)."""
    scores = run.aggregate(mode)
    if mode == "per_slice_mean" and run.surface:
        scores.update(run.surface_means())
    return scores


def fold_summary(values: Mapping[tuple[int, int], float]) -> tuple[dict[int, float], float, float]:
    """Table 2's aggregation of one figure given per ``(fold, repeat)`` run.

    Returns:
        ``(per fold: the mean over its repeats (NaN only when all are NaN), mean, population
        std)``; mean and std are over the non-NaN folds (NaN when there are none).
    """
    by_fold: dict[int, list[float]] = {}
    for (f, _), v in sorted(values.items()):
        by_fold.setdefault(f, []).append(v)
    folds = {
        f: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else math.nan
        for f, v in by_fold.items()
    }
    ok = np.array([x for x in folds.values() if not math.isnan(x)])
    return (
        folds,
        float(ok.mean()) if ok.size else math.nan,
        float(ok.std()) if ok.size else math.nan,
    )


def _table(runs: dict[int, dict[int, Scores]], mode: str) -> dict[str, Any]:
    folds = sorted(runs)
    keys = [k for k, _ in ROWS]
    surface = mode == "per_slice_mean" and any(r.surface for f in runs.values() for r in f.values())
    if surface:
        keys += [k for k, _ in SURFACE]
    scores = {(f, r): run_scores(runs[f][r], mode) for f in runs for r in runs[f]}
    rows = {}
    for k in keys:
        per_fold, mean, std = fold_summary({u: s.get(k, math.nan) for u, s in scores.items()})
        rows[k] = {"folds": list(per_fold.values()), "mean": mean, "std": std}
    return {
        "folds": [f + 1 for f in folds],
        "repeats": {f + 1: len(runs[f]) for f in folds},
        "rows": rows,
    }


def format_markdown(table: dict[str, Any], title: str) -> str:
    """One Table-2 block: rows of metrics, columns Fold 1..K and ``Average ± std``."""
    labels = dict(ROWS) | dict(SURFACE)
    head = ["Metric", *[f"Fold {f}" for f in table["folds"]], "Average ± std"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in table["rows"].items():
        fmt = "{:.2f}" if key == "hd95_mm" else "{:.4f}"
        cells = [fmt.format(v) for v in row["folds"]]
        avg = f"{fmt.format(row['mean'])} ± {fmt.format(row['std'])}"
        lines.append("| " + " | ".join([labels[key], *cells, avg]) + " |")
    return "\n".join(lines) + "\n"


def make_report(cv_dir: str | Path, panels: bool = True) -> dict[str, Any]:
    """Aggregate a cross-validation folder into Table 2 and write the report files.

    Writes ``report.md`` (Markdown tables), ``report.csv`` (mode, metric, fold..., mean, std),
    ``report.json`` and, with ``panels``, ``panels.png`` (test slices of the first repeat of each
    fold: input, prediction, ground truth, overlay).

    Args:
        cv_dir: the folder of ``covseg cv``.
        panels: draw ``panels.png``.

    With ``fold*_rep*/test_robustness.json`` in every run (``covseg cv --robustness``) the
    files also get the robustness table (:func:`load_robustness`, :func:`robustness_table`).

    Returns:
        ``{"markdown": str, "tables": {mode: table}, "volume": bool, "by_lesion_size": rows
        (:func:`lesion_size_rows`), "robustness": table or None, "sources": per dataset}``.

    Raises:
        DataError: no finished runs in ``cv_dir``.
    """
    root = Path(cv_dir)
    runs = load_runs(root)
    volume = any(k == "volume" for f in runs.values() for r in f.values() for k in r.kinds.values())
    modes = MODES if volume else ("per_slice_mean", "pooled")
    titles = {
        "per_slice_mean": "Per-slice mean (the paper's aggregation)",
        "per_volume_mean": "Per-volume mean",
        "pooled": "Pooled over all test pixels",
    }
    tables = {m: _table(runs, m) for m in modes}
    md = "\n".join(format_markdown(tables[m], titles[m]) for m in modes)
    sizes = lesion_size_rows(runs)
    md += "\n" + format_lesion_size_table(sizes, _SIZES_TITLE)
    variants = load_robustness(root, runs)
    robust = robustness_table(variants) if variants is not None else None
    if robust is not None:
        md += "\n" + format_robustness_table(robust)
    burden = burden_table(runs)
    if burden:
        md += "\n" + format_agreement(burden, _BURDEN_TITLE) + "\n"
        _bland_altman(root, runs)
    per_source: dict[str, dict[str, Any]] = {}
    for name in source_names(runs):
        own = source_runs(runs, name)
        per_source[name] = {
            "tables": {m: _table(own, m) for m in modes},
            "by_lesion_size": lesion_size_rows(own),
        }
        md += f"\n## Dataset {name}\n\n" + "\n".join(
            format_markdown(per_source[name]["tables"][m], titles[m]) for m in modes
        )
        md += "\n" + format_lesion_size_table(per_source[name]["by_lesion_size"], _SIZES_TITLE)
        per_source[name]["burden"] = own_burden = burden_table(own)
        if own_burden:
            md += "\n" + format_agreement(own_burden, f"{_BURDEN_TITLE}, {name}") + "\n"
        if variants is not None:
            own_variants = {
                (f, r): {k: v.subset(name) for k, v in vs.items()}
                for (f, r), vs in variants.items()
                if r in own.get(f, {})
            }
            per_source[name]["robustness"] = rob = robustness_table(own_variants)
            md += "\n" + format_robustness_table(rob, name)
    write_text(root / "report.md", md)
    write_text(root / "report.csv", _csv(tables, robust, per_source))
    write_json(
        root / "report.json",
        {
            "volume": volume,
            "tables": tables,
            "by_lesion_size": sizes,
            "robustness": robust,
            "burden": burden,
            "sources": per_source,
        },
    )
    if panels:
        _panels(root, runs)
    return {
        "markdown": md,
        "tables": tables,
        "volume": volume,
        "by_lesion_size": sizes,
        "robustness": robust,
        "burden": burden,
        "sources": per_source,
    }


_BURDEN_TITLE = (
    "Infection burden per case (the first repeat's out-of-fold masks; % of lung infected for "
    "the Bland-Altman bias and limits)"
)


def first_repeat_burden(runs: dict[int, dict[int, Scores]], which: str) -> list[CaseBurden]:
    """The :class:`~covseg.evaluation.agreement.CaseBurden` of estimate ``which`` (``"mask"``,
    ``"expected"``) of every test case of each fold's first repeat (one out-of-fold prediction
    per case)."""
    out = []
    for reps in runs.values():
        if reps:
            s = reps[min(reps)]
            out += [b[which] for b in s.burden.values() if which in b]
    return out


def burden_table(runs: dict[int, dict[int, Scores]]) -> dict[str, dict[str, Any]]:
    """``{"mask volume": agreement, "expected volume": agreement}`` (the second where the
    runs' models were calibrated); ``{}`` for runs scored before covseg 0.3."""
    out = {}
    for which, label in (("mask", "mask volume"), ("expected", "expected volume")):
        rows = first_repeat_burden(runs, which)
        if rows:
            out[label] = agreement(rows)
    return out


def _bland_altman(root: Path, runs: dict[int, dict[int, Scores]]) -> None:
    from covseg.figures.agreement import plot_bland_altman

    rows = first_repeat_burden(runs, "mask")
    names = sorted({r.source for r in rows})
    panels = {
        name or "all": [(r.true_percent, r.pred_percent) for r in rows if r.source == name]
        for name in names
    }
    plot_bland_altman(panels, root / "bland_altman.png", "% of lung infected: predicted - true")


_SIZES_TITLE = "By lesion size: the test slices of every run together"


def lesion_size_rows(runs: dict[int, dict[int, Scores]]) -> list[dict[str, Any]]:
    """:func:`~covseg.evaluation.metrics.by_lesion_size` over the test slices of every run
    (each slice once per repeat): which lesion sizes a per-slice mean loses on."""
    return by_lesion_size([row for f in runs.values() for s in f.values() for row in s.counts])


def source_names(runs: dict[int, dict[int, Scores]]) -> list[str]:
    """The datasets of a cross-validation over several (``covseg cv --data A B``), else ``[]``."""
    names = [s.sources() for reps in runs.values() for s in reps.values()]
    if not names or any(not n for n in names):
        return []
    return sorted({n for ns in names for n in ns})


def source_runs(runs: dict[int, dict[int, Scores]], name: str) -> dict[int, dict[int, Scores]]:
    """The runs restricted to the slices of dataset ``name`` (runs without any dropped)."""
    own = {
        f: {r: sub for r, s in reps.items() if (sub := s.subset(name)).n_items}
        for f, reps in runs.items()
    }
    return {f: reps for f, reps in own.items() if reps}


def load_robustness(
    root: Path, runs: dict[int, dict[int, Scores]]
) -> dict[tuple[int, int], dict[str, Scores]] | None:
    """The variant scores of every run (``fold*_rep*/test_robustness.json`` of ``covseg cv
    --robustness``) by ``(fold, repeat)``; ``None`` when no run has the file.

    Raises:
        DataError: a damaged ``test_robustness.json``, or only some runs have one (rerun
            ``covseg cv --robustness`` to score the others).
    """
    found: dict[tuple[int, int], dict[str, Scores]] = {}
    missing = []
    for f in sorted(runs):
        for r in sorted(runs[f]):
            path = root / f"fold{f}_rep{r}" / "test_robustness.json"
            if not path.exists():
                missing.append(path.parent.name)
                continue
            try:
                variants = json.loads(path.read_text())["variants"]
                found[f, r] = {k: Scores.from_record(v, path) for k, v in variants.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise DataError(f"{path}: unreadable robustness scores ({err})") from None
    if not found:
        return None
    if missing:
        raise DataError(
            f"{root}: {', '.join(missing)} have no test_robustness.json while other runs do "
            "(rerun `covseg cv ... --robustness` with the same settings)"
        )
    return found


def robustness_table(
    variants: dict[tuple[int, int], dict[str, Scores]], mode: str = "per_slice_mean"
) -> dict[str, Any]:
    """Dice of every re-framed/re-windowed variant (:func:`load_robustness`), per fold (mean
    over repeats), mean ± std over folds, and the ratio of its mean to the ``plain`` mean."""
    names = list(next(iter(variants.values())))
    folds = sorted({f for f, _ in variants})
    rows: dict[str, Any] = {}
    for name in names:
        dice = {u: v[name].aggregate(mode)["dice"] for u, v in variants.items()}
        per_fold, mean, std = fold_summary(dice)
        rows[name] = {"folds": list(per_fold.values()), "mean": mean, "std": std}
    plain = rows.get("plain", {}).get("mean", math.nan)
    for row in rows.values():
        row["ratio_to_plain"] = row["mean"] / plain if plain and not math.isnan(plain) else math.nan
    return {"mode": mode, "metric": "dice", "folds": [f + 1 for f in folds], "rows": rows}


def format_robustness_table(table: dict[str, Any], source: str | None = None) -> str:
    """The robustness block of ``report.md``: one row per variant."""
    head = ["Variant", *[f"Fold {f}" for f in table["folds"]], "Average ± std", "× plain"]
    where = f" ({source})" if source else ""
    lines = [
        f"### Robustness{where}: Dice (per-slice mean) of the test folds re-framed and re-windowed",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, row in table["rows"].items():
        cells = [f"{v:.4f}" for v in row["folds"]]
        avg = f"{row['mean']:.4f} ± {row['std']:.4f}"
        lines.append("| " + " | ".join([name, *cells, avg, f"{row['ratio_to_plain']:.3f}"]) + " |")
    return "\n".join(lines) + "\n"


def _csv(
    tables: dict[str, dict],
    robust: dict[str, Any] | None = None,
    per_source: dict[str, dict[str, Any]] | None = None,
) -> str:
    """``mode, metric, fold1.., mean, std``; per-dataset rows have modes ``NAME:mode`` (empty
    cells for folds without the dataset's cases)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    n = max(max(t["folds"]) for t in tables.values())
    w.writerow(["mode", "metric", *[f"fold{k + 1}" for k in range(n)], "mean", "std"])

    def cells(folds: list[int], values: list[float]) -> list[Any]:
        by = dict(zip(folds, values, strict=True))
        return [by.get(k + 1, "") for k in range(n)]

    blocks = [("", tables, robust)] + [
        (f"{name}:", part["tables"], part.get("robustness"))
        for name, part in (per_source or {}).items()
    ]
    for prefix, tabs, rob in blocks:
        for mode, t in tabs.items():
            for key, row in t["rows"].items():
                vals = cells(t["folds"], row["folds"])
                w.writerow([prefix + mode, key, *vals, row["mean"], row["std"]])
        for name, row in (rob or {}).get("rows", {}).items():
            vals = cells(rob["folds"], row["folds"])  # type: ignore[index]
            w.writerow([f"{prefix}robustness:{name}", "dice", *vals, row["mean"], row["std"]])
    return buf.getvalue()


def _panels(root: Path, runs: dict[int, dict[int, Scores]]) -> None:
    from covseg.figures.panels import plot_panels

    parts = []
    for f in sorted(runs):
        p = root / f"fold{f}_rep{min(runs[f])}" / "panels.npz"
        if p.exists():
            with np.load(p) as z:
                parts.append({k: z[k] for k in ("image", "pred", "truth", "title")})
    if parts:
        plot_panels(
            np.concatenate([p["image"] for p in parts]),
            np.concatenate([p["pred"] for p in parts]),
            np.concatenate([p["truth"] for p in parts]),
            root / "panels.png",
            titles=[str(t) for p in parts for t in p["title"]],
        )
