"""Several cross-validation folders side by side: one table, paired differences, a figure.

Every row is one ``covseg cv`` folder (a model or an ablation). Rows are compared on the units
they share, a *unit* being one (fold, repeat) run: the same test patients and, for the same
repeat, the same seed. The folders must hold the same folds (their ``splits.json`` test sets
are compared), else pairing them would compare different patients.

For each row and metric the table gives the mean ± population std over folds of the per-fold
figure (each fold the mean over its repeats), exactly as :mod:`covseg.evaluation.report`'s
"Average ± std". Against the reference row it gives, over the shared units, the mean paired
difference (row − reference), the wins/losses, and the two-sided Wilcoxon signed-rank p-value
(:func:`scipy.stats.wilcoxon`, ``zero_method="wilcox"``: zero differences are dropped; exact
null distribution for small samples). With 5 folds × 1 repeat the smallest possible p is
0.0625; × 3 repeats, 6e-5 — the test cannot call 5 pairs significant at 0.05.

Folders of a cross-validation over several datasets (``covseg cv --data A B``) get the same
tables once more per dataset, over its own test slices of each run (as ``covseg report`` gives
Table 2 per dataset): a recipe may gain on one source and lose on another.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.checkpoint import read_meta
from covseg.errors import CovsegError, DataError
from covseg.evaluation.report import (
    MODES,
    ROWS,
    fold_summary,
    load_runs,
    run_scores,
    source_names,
    source_runs,
)
from covseg.files import write_json, write_text

__all__ = ["compare_runs", "format_comparison", "paired_test"]

METRICS = tuple(k for k, _ in ROWS)
LABELS = dict(ROWS)


def paired_test(diffs: Sequence[float]) -> dict[str, Any]:
    """Summary of paired differences ``row − reference`` (NaNs dropped).

    Returns:
        ``{"n", "mean", "std", "wins", "losses", "ties", "p"}``: ``std`` is the sample std
        (``ddof=1``, NaN for n < 2), ``p`` the two-sided Wilcoxon signed-rank p-value over the
        non-zero differences (1.0 when all are zero, NaN when there are none).
    """
    from scipy.stats import wilcoxon

    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=float)
    out: dict[str, Any] = {
        "n": int(d.size),
        "mean": float(d.mean()) if d.size else math.nan,
        "std": float(d.std(ddof=1)) if d.size > 1 else math.nan,
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "ties": int((d == 0).sum()),
    }
    if not d.size:
        out["p"] = math.nan
    elif not np.any(d):
        out["p"] = 1.0
    else:
        out["p"] = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return out


def _splits(root: Path) -> list[list[str]]:
    path = root / "splits.json"
    try:
        folds = json.loads(path.read_text())["folds"]
        return [sorted(str(c) for c in f["test"]) for f in folds]
    except FileNotFoundError:
        raise DataError(f"{path}: missing (not a `covseg cv` folder?)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable splits file ({err})") from None


def _settings(root: Path) -> dict[str, Any]:
    """What the row was trained with, from its first run's checkpoint (if any)."""
    for d in sorted(root.glob("fold*_rep*")):
        for name in ("last.json", "best.json"):
            if not (d / name).exists():
                continue
            try:
                meta = read_meta(d / name)
            except CovsegError:
                continue
            model, train = meta.model_config, meta.train_config
            return {
                "model": model.model,
                "lung_gate": model.lung_gate,
                "use_inception": model.use_inception,
                **({"ensemble_members": len(meta.members)} if meta.members else {}),
                **(
                    {}
                    if train is None
                    else {
                        "w_aux": train.w_aux,
                        "dice": train.dice,
                        "epochs": train.epochs,
                        "lr": train.lr,
                        "batch_size": train.batch_size,
                    }
                ),
            }
    return {}


def _unit_scores(runs: dict, mode: str) -> dict[tuple[int, int], dict[str, float]]:
    return {(f, r): run_scores(runs[f][r], mode) for f in runs for r in runs[f]}


def compare_runs(
    cv_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    reference: str | None = None,
    names: Sequence[str] | None = None,
    figure: bool = True,
) -> dict[str, Any]:
    """Compare cross-validation folders and write ``comparison.{md,csv,json,png}`` into ``out``.

    Args:
        cv_dirs: two or more ``covseg cv`` folders run on the same folds.
        out: output folder (created).
        reference: the row the others are compared with: a name of ``names`` or a folder
            name (default: the first row).
        names: row names (default: each folder's name); unique.
        figure: draw ``comparison.png`` (per-unit Dice of every row, the same fold joined).

    Returns:
        ``{"markdown", "rows", "reference", "modes", "sources"}``; ``rows[name]`` has ``dir``,
        ``units``, ``settings`` and per mode, per metric: ``folds``, ``mean``, ``std`` and (rows
        other than the reference) ``paired`` = :func:`paired_test` of the shared units.
        ``sources[dataset][name]`` is the same (without ``dir``/``settings``) over that dataset's
        test slices, for the datasets every folder's cross-validation holds (else ``{}``).

    Raises:
        DataError: fewer than two folders, duplicate names, an unknown reference, a folder
            without finished runs, or folders whose folds differ.
    """
    roots = [Path(d) for d in cv_dirs]
    if Path(out).exists() and not Path(out).is_dir():
        raise DataError(f"{out}: exists and is not a folder (--out is where the comparison goes)")
    if len(roots) < 2:
        raise DataError("comparing needs two or more cross-validation folders")
    names = list(names) if names else [r.name for r in roots]
    if len(names) != len(roots):
        raise DataError(f"{len(names)} names for {len(roots)} folders")
    if len(set(names)) != len(names):
        raise DataError(f"row names must be unique, got {names} (pass --names)")
    ref = reference if reference is not None else names[0]
    if ref not in names:
        raise DataError(f"reference {ref!r} is not one of the rows {names}")
    splits = {n: _splits(r) for n, r in zip(names, roots, strict=True)}
    for n in names:
        if splits[n] != splits[ref]:
            raise DataError(
                f"{roots[names.index(n)] / 'splits.json'}: its folds differ from those of "
                f"{roots[names.index(ref)] / 'splits.json'}; rows must share their test patients"
            )
    loaded = {n: load_runs(r) for n, r in zip(names, roots, strict=True)}
    volume = any(
        k == "volume"
        for runs in loaded.values()
        for f in runs.values()
        for s in f.values()
        for k in s.kinds.values()
    )
    modes = MODES if volume else ("per_slice_mean", "pooled")
    rows = _rows(loaded, ref, modes)
    for n, r in zip(names, roots, strict=True):
        rows[n] = {"dir": str(r), "settings": _settings(r), **rows[n]}
    named = [set(source_names(runs)) for runs in loaded.values()]
    sources = sorted(set.intersection(*named)) if all(named) else []
    result = {
        "reference": ref,
        "modes": list(modes),
        "rows": rows,
        "sources": {
            src: _rows({n: source_runs(runs, src) for n, runs in loaded.items()}, ref, modes)
            for src in sources
        },
    }
    result["markdown"] = format_comparison(result)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "comparison.md", result["markdown"])
    write_text(out / "comparison.csv", _csv(result))
    write_json(out / "comparison.json", {k: v for k, v in result.items() if k != "markdown"})
    if figure:
        _figure(result, out / "comparison.png")
    return result


def _rows(loaded: dict[str, dict], ref: str, modes: Sequence[str]) -> dict[str, Any]:
    """Per row: its ``units`` and, per mode and metric, ``folds``/``mean``/``std`` and (rows
    other than ``ref``) ``paired`` against ``ref`` over the units both have."""
    units = {n: {m: _unit_scores(runs, m) for m in modes} for n, runs in loaded.items()}
    rows: dict[str, Any] = {}
    for n in loaded:
        row: dict[str, Any] = {"units": sorted([f + 1, rep] for f, rep in units[n][modes[0]])}
        for m in modes:
            per: dict[str, Any] = {}
            for key in METRICS:
                folds, mean, std = fold_summary(
                    {u: s.get(key, math.nan) for u, s in units[n][m].items()}
                )
                entry: dict[str, Any] = {
                    "folds": {str(f + 1): x for f, x in folds.items()},
                    "mean": mean,
                    "std": std,
                }
                if n != ref:
                    shared = sorted(set(units[n][m]) & set(units[ref][m]))
                    entry["paired"] = paired_test(
                        [
                            units[n][m][u].get(key, math.nan) - units[ref][m][u].get(key, math.nan)
                            for u in shared
                        ]
                    )
                per[key] = entry
            row[m] = per
        rows[n] = row
    return rows


def _fmt(x: float, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _signed(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:+.4f}"


def format_comparison(result: dict[str, Any]) -> str:
    """Markdown: per mode, one row per folder (mean ± std of each metric), then the paired
    Dice and IoU differences against the reference with their Wilcoxon p-values."""
    titles = {
        "per_slice_mean": "Per-slice mean (the paper's aggregation)",
        "per_volume_mean": "Per-volume mean",
        "pooled": "Pooled over all test pixels",
    }
    ref = result["reference"]
    rows = result["rows"]
    epochs = {n: r["settings"].get("epochs") for n, r in rows.items()}
    lines = _tables(rows, result["modes"], ref, titles, epochs)
    unit_sets = {tuple(map(tuple, r["units"])) for r in rows.values()}
    if len(unit_sets) > 1:
        lines += [
            "**The rows do not have the same runs** (the `runs` column): their means are over "
            "different folds or repeats and only Δ, over the shared runs, is a like-for-like "
            "comparison.",
            "",
        ]
    lines.append(
        f"Mean ± std over folds (each fold the mean of its repeats). Δ: mean paired difference "
        f"against `{ref}` over the (fold, repeat) runs both rows have, W/L the runs it wins/loses, "
        "p the two-sided Wilcoxon signed-rank test over those runs."
    )
    for src, src_rows in result.get("sources", {}).items():
        tables = _tables(src_rows, result["modes"], ref, titles, epochs)
        lines += ["", f"## Dataset {src}", "", *tables]
    return "\n".join(lines).rstrip("\n") + "\n"


def _tables(
    rows: dict[str, Any],
    modes: Sequence[str],
    ref: str,
    titles: dict[str, str],
    epochs: dict[str, int | None],
) -> list[str]:
    """One Markdown table per mode: a line per row, then its paired Δ against ``ref``."""
    lines: list[str] = []
    for m in modes:
        head = ["Row", "runs", "epochs", *[LABELS[k] for k in METRICS]]
        head += ["Δ Dice (W/L)", "p", "Δ IoU", "p"]
        lines += [f"### {titles[m]}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in rows.items():
            cells = [f"{_fmt(row[m][k]['mean'])} ± {_fmt(row[m][k]['std'])}" for k in METRICS]
            if name == ref:
                tail = ["reference", "", "", ""]
            else:
                d, i = row[m]["dice"]["paired"], row[m]["iou"]["paired"]
                tail = [
                    f"{_signed(d['mean'])} ({d['wins']}/{d['losses']})",
                    _fmt(d["p"], 3),
                    _signed(i["mean"]),
                    _fmt(i["p"], 3),
                ]
            ep = epochs.get(name)
            first = [name, str(len(row["units"])), "?" if ep is None else str(ep)]
            lines.append("| " + " | ".join([*first, *cells, *tail]) + " |")
        lines.append("")
    return lines


def _csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "dataset",
            "mode",
            "row",
            "metric",
            "mean",
            "std",
            "n_paired",
            "diff_mean",
            "diff_std",
            "wins",
            "losses",
            "p",
        ]
    )
    groups = [("all", result["rows"]), *result.get("sources", {}).items()]
    for dataset, rows in groups:
        for m in result["modes"]:
            for name, row in rows.items():
                for k in METRICS:
                    e = row[m][k]
                    p = e.get("paired") or {}
                    w.writerow(
                        [
                            dataset,
                            m,
                            name,
                            k,
                            e["mean"],
                            e["std"],
                            p.get("n", ""),
                            p.get("mean", ""),
                            p.get("std", ""),
                            p.get("wins", ""),
                            p.get("losses", ""),
                            p.get("p", ""),
                        ]
                    )
    return buf.getvalue()


def _figure(result: dict[str, Any], path: Path, mode: str = "per_slice_mean") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from covseg.files import atomic_path

    names = list(result["rows"])
    folds = sorted({int(f) for r in result["rows"].values() for f in r[mode]["dice"]["folds"]})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.6), dpi=120)
    cmap = plt.get_cmap("tab10")
    for j, f in enumerate(folds):
        ys = [result["rows"][n][mode]["dice"]["folds"].get(str(f), math.nan) for n in names]
        ax.plot(
            range(len(names)),
            ys,
            "-o",
            color=cmap(j % 10),
            alpha=0.75,
            ms=4,
            lw=1,
            label=f"fold {f}",
        )
    means = [result["rows"][n][mode]["dice"]["mean"] for n in names]
    ax.scatter(range(len(names)), means, marker="_", s=600, color="black", zorder=3, label="mean")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("Dice (per-slice mean)")
    ax.set_title(f"Per-fold test Dice; reference: {result['reference']}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
