"""The Markdown tables and the project's targets (PASS/FAIL) from the measured figures."""

from __future__ import annotations

from typing import Any

from bench_cohort import cohort_markdown, cohort_targets
from bench_models import MEASURED_ONCE, REFERENCE

# Targets of the project (reported against, never adjusted to the result).
TARGET_FAST_VS_BASICUNET = 3.0  # train and infer slices/s, 256², batch 8, 2 threads
TARGET_SEGMENT_VS_REFERENCE = 0.6  # segment wall / bare BasicUNet forward over the same slices
TARGET_SEGMENT_RSS_GB = 2.0
TARGET_INFER_OF_PEAK = 0.5
TARGET_CONDITIONS = {"size": 256, "batch": 8, "threads": 2}  # where the model targets are defined


def per_round(entry: dict[str, Any], k: str) -> str:
    """``"3.27, 3.38, 1.90"``: the ``k`` ("train"/"infer") ratio of every round of one row."""
    return ", ".join(f"{r[f'{k}_speedup_vs_{REFERENCE}']:.2f}" for r in entry.get("rounds") or [])


# -------------------------------------------------------------------------------- markdown
def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"Run {m['date_utc']} ({'quick' if res['quick'] else 'full'}), commit {m['git_commit']}",
        f"CPU: {m['cpu_model']}, {m['cpu_count']} logical CPUs, {m['simd']}, "
        f"{m['clock_mhz']} MHz; torch {m['torch']} ({m['torch_threads']} threads), "
        f"MONAI {m['monai']}; GPU: {m['cuda'] or 'none'}",
        f"Load average (1 min) per section: {res['loadavg']}",
        "",
    ]
    peak = res.get("peak") or {}
    if peak:
        lines += ["| peak fp32 | GFLOP/s |", "|---|---:|"]
        for dev, p in peak.items():
            lines.append(f"| {dev} matmul {p['n']}² (measured) | {p['gflops']} |")
        lines.append(
            f"| cpu theoretical ({m['theoretical_peak_formula']}) | {m['theoretical_peak_gflops']} |"
        )
        lines.append("")
    mod = res.get("models")
    if mod:
        lines.append(
            f"Models: batch {mod['batch']}, {mod['size']}×{mod['size']}, median of "
            f"{res['settings']['iters']} iterations after {res['settings']['warmup']} warm-up."
        )
        lines.append("")
        for dev, per in mod["devices"].items():
            lines += [
                f"**{dev}**",
                "",
                "| model | params | GFLOP/slice fwd | train sl/s | infer sl/s | infer GFLOP/s "
                "| infer % of matmul | train × BasicUNet | infer × BasicUNet |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, e in per.items():
                fr = e.get("infer_fraction_of_matmul")
                lines.append(
                    f"| {name} ({e['memory_format']}) | {e['params']:,} | "
                    f"{mod['flops_per_slice'][name]['gflop_fwd']:.2f} | "
                    f"{e['train_slices_per_s']:.2f} | {e['infer_slices_per_s']:.2f} | "
                    f"{e['infer_gflops']:.1f} | {'-' if fr is None else f'{100 * fr:.0f} %'} | "
                    f"{e[f'train_speedup_vs_{REFERENCE}']:.2f} | "
                    f"{e[f'infer_speedup_vs_{REFERENCE}']:.2f} |"
                )
            ref = per[REFERENCE]
            tr, inf = ref["train_reference_all"], ref["infer_reference_all"]
            lines += [
                "",
                f"× BasicUNet: the model's slices/s over the mean of the BasicUNet measurements "
                f"just before and just after it (interleaved, {len(tr)} BasicUNet measurements: "
                f"train {min(tr):.2f}–{max(tr):.2f}, infer {min(inf):.2f}–{max(inf):.2f} sl/s; "
                f"its row is their mean). Rows are medians over {res['settings']['rounds']} "
                f"rounds of the whole sequence"
                + (f" ({', '.join(MEASURED_ONCE)}: one)" if res["settings"]["rounds"] > 1 else "")
                + "; the ratios of every round:",
                "",
            ]
            for name, e in per.items():
                if len(e.get("rounds") or []) > 1:
                    lines.append(
                        f"- {name}: train {per_round(e, 'train')}; infer {per_round(e, 'infer')}"
                    )
            lines.append("")
    seg = res.get("segment")
    if seg:
        lines += [
            f"`covseg segment` on {'×'.join(map(str, seg['shape']))} int16 HU NIfTI "
            f"({seg['input_mb']} MB .nii.gz), checkpoint: {seg['checkpoint']}",
            "",
            "| run | exit | wall s (median) | all runs s | slices/s | peak RSS MB (max) "
            "| CPU user s | CPU sys s | × reference |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for key, r in seg["runs"].items():
            runs = ", ".join(f"{w:.1f}" for w in r.get("wall_s_all", [r["wall_s"]]))
            vs = r.get("vs_reference")
            lines.append(
                f"| {key} | {r['rc']} | {r['wall_s']:.1f} | {runs} | {r['slices_per_s']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | "
                f"{'-' if vs is None else f'{vs:.2f}'} |"
            )
        lines.append("")
        for dev, ref in (seg.get("reference") or {}).items():
            fmts = "; ".join(
                f"{fmt} {f['median_s']:.2f} s ({', '.join(f'{t:.2f}' for t in f['forward_s_all'])})"
                for fmt, f in ref["formats"].items()
            )
            lines += [
                f"Reference ({dev}): MONAI BasicUNet forward passes only over {ref['slices']} "
                f"slices of {ref['size']}², batch {ref['batch']}, {ref['threads']} threads, eval + "
                f"inference_mode, fresh process per run, alternating with the segment runs; "
                f"median: {fmts} -> **{ref['forward_s']:.2f} s** ({ref['memory_format']}); "
                f"× reference = segment wall / this.",
                "",
            ]
    prep = res.get("prepare")
    if prep:
        lines += [
            f"`covseg prepare`, synthetic zenodo20: {prep['cases']} cases of "
            f"{prep['size']}×{prep['size']}×{prep['slices']} -> 256² slices: "
            f"{prep['wall_s']:.1f} s total, **{prep['seconds_per_case']:.2f} s/case**, "
            f"peak RSS {prep['peak_rss_mb']:.0f} MB (exit {prep['rc']})",
            "",
        ]
    if res.get("cohort"):
        lines += cohort_markdown(res["cohort"])
    lines += ["| target | measured | verdict |", "|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {_verdict(t['ok'])} |")
    prof = res.get("profile")
    if prof:
        lines += ["", f"Profile ({prof['file']}), top self-time ops:", ""]
        lines += ["| op | input shapes | calls | self ms | % |", "|---|---|---:|---:|---:|"]
        for op in prof["top_ops"][:8]:
            lines.append(
                f"| {op['op']} | `{op['input_shapes'][:70]}` | {op['calls']} | "
                f"{op['self_cpu_ms']} | {op['self_cpu_percent']} |"
            )
    return "\n".join(lines) + "\n"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's targets with the measured figure and PASS/FAIL (n/a when not measured, or
    measured away from the conditions the target is defined at)."""
    out = []
    threads = res["machine"]["torch_threads"]
    mod = res.get("models") or {}
    cpu = (mod.get("devices") or {}).get("cpu")
    at_conditions = (mod.get("size"), mod.get("batch"), threads) == tuple(
        TARGET_CONDITIONS.values()
    )
    where = ", ".join(f"{k} {v}" for k, v in TARGET_CONDITIONS.items())
    if cpu:
        for k, verb in (("train", "trains"), ("infer", "infers")):
            e = cpu.get("fast")
            ratio = None if e is None else e[f"{k}_speedup_vs_{REFERENCE}"]
            out.append(
                {
                    "target": f"fast {verb} ≥ {TARGET_FAST_VS_BASICUNET:g}× BasicUNet's slices/s "
                    f"(cpu; {where})",
                    "measured": "- (no fast preset)"
                    if e is None
                    else f"{ratio:.2f}× ({e[f'{k}_slices_per_s']:.2f} vs "
                    f"{e[f'{k}_reference_slices_per_s']:.2f} sl/s"
                    + (f"; rounds {per_round(e, k)})" if len(e.get("rounds") or []) > 1 else ")")
                    + (
                        ""
                        if at_conditions
                        else f" (at {mod['size']}², batch {mod['batch']}, {threads} threads)"
                    ),
                    "ok": None
                    if ratio is None or not at_conditions
                    else ratio >= TARGET_FAST_VS_BASICUNET,
                }
            )
    seg = res.get("segment") or {}
    full_shape = seg.get("shape") == [512, 512, 300]
    r = (seg.get("runs") or {}).get("cpu")
    ref = (seg.get("reference") or {}).get("cpu")
    quick = "" if full_shape else f" (quick volume {seg.get('shape')})"
    if seg:
        vs = None if r is None else r.get("vs_reference")
        out.append(
            {
                "target": f"segment 512×512×300 wall ≤ {TARGET_SEGMENT_VS_REFERENCE}× the "
                f"BasicUNet reference forward (cpu, {seg.get('threads')} threads)",
                "measured": "-"
                if vs is None or ref is None
                else f"{vs:.2f}× ({r['wall_s']:.1f} s vs {ref['forward_s']:.1f} s){quick}",
                "ok": None
                if vs is None or not full_shape
                else (r["rc"] == 0 and vs <= TARGET_SEGMENT_VS_REFERENCE),
            }
        )
        out.append(
            {
                "target": f"segment 512×512×300 peak RSS ≤ {TARGET_SEGMENT_RSS_GB:g} GB (cpu)",
                "measured": "-" if r is None else f"{r['peak_rss_mb'] / 1024:.2f} GB{quick}",
                "ok": None
                if r is None or not full_shape
                else (r["rc"] == 0 and r["peak_rss_mb"] <= TARGET_SEGMENT_RSS_GB * 1024),
            }
        )
    if cpu:
        for name in ("paper", "small"):
            if name not in cpu:
                continue
            fr = cpu[name].get("infer_fraction_of_matmul")
            out.append(
                {
                    "target": f"{name} inference ≥ {TARGET_INFER_OF_PEAK:.0%} of matmul GFLOP/s (cpu)",
                    "measured": "-" if fr is None else f"{100 * fr:.0f} %",
                    "ok": None if fr is None else fr >= TARGET_INFER_OF_PEAK,
                }
            )
    if res.get("cohort"):
        out += cohort_targets(res["cohort"], res["quick"])
    return out
