#!/usr/bin/env python
"""covseg benchmarks: every figure of BENCHMARKS.md from one command, on one machine.

    python benchmarks/run.py --json benchmarks/results.json          # full (make bench)
    python benchmarks/run.py --json /tmp/quick.json --quick           # sanity run, < 2 min idle

Measured in one run (each section can be picked with ``--sections``):

- ``peak``: fp32 matmul GFLOP/s (the achievable peak) and the theoretical peak from lscpu flags;
- ``models``: FLOPs per slice (FlopCounterMode), training throughput (forward + backward + Adam
  step) and inference throughput (eval, ``torch.inference_mode``) of the ``paper`` and ``small``
  presets and of two MONAI peers (``BasicUNet``; ``UNet`` of about the small preset's size);
- ``segment``: ``covseg segment`` end to end on a synthetic 512x512x300 HU NIfTI, wall time and
  peak RSS of the subprocess (``getrusage`` of the child, exact), with and without ``--tta``;
- ``prepare``: ``covseg prepare`` on a synthetic zenodo20 dataset, seconds per case;
- ``profile``: top ops of one small-preset training step (torch.profiler) -> a text file.

Throughputs are the median of several timed iterations after warm-up. The load average is
recorded before and after every section: figures taken on a busy machine are not comparable.
Writes ``--json`` (all figures + machine info), ``<json stem>.md`` (the Markdown tables, also
printed) and ``<json stem>_profile.txt``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("peak", "models", "segment", "prepare", "profile")

# Targets of the project (reported against, never adjusted to the result).
TARGET_SEGMENT_S = 60.0
TARGET_SEGMENT_RSS_GB = 2.5
TARGET_SMALL_VS_BASICUNET = 2.0
TARGET_INFER_OF_PEAK = 0.5


# ------------------------------------------------------------------------------ settings
def settings(quick: bool) -> dict[str, Any]:
    """Sizes and iteration counts; ``quick`` shrinks everything for a sanity run."""
    if quick:
        return {
            "size": 128,
            "batch": 2,
            "warmup": 1,
            "iters": 2,
            "matmul_n": 1024,
            "segment_shape": (128, 128, 24),
            "segment_runs": 1,
            "prepare": {"cases": 2, "slices": 8, "size": 64},
            "peer_formats": ("contiguous",),
        }
    return {
        "size": 256,
        "batch": 8,
        "warmup": 2,
        "iters": 5,
        "matmul_n": 4096,
        "segment_shape": (512, 512, 300),
        "segment_runs": 3,
        "prepare": {"cases": 3, "slices": 64, "size": 512},
        "peer_formats": ("contiguous", "channels_last"),
    }


# -------------------------------------------------------------------------------- machine
def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, SIMD, clock, theoretical fp32 peak, library versions, date, GPU."""
    lscpu = _lscpu()
    flags = set((lscpu.get("Flags") or _cpuinfo_field("flags") or "").split())
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = "fma" in flags or "avx512f" in flags
    mhz = None
    for key in ("CPU max MHz", "CPU MHz"):
        if lscpu.get(key):
            mhz = float(lscpu[key])
            break
    if mhz is None and _cpuinfo_field("cpu MHz"):
        mhz = float(_cpuinfo_field("cpu MHz") or 0) or None
    cores = os.cpu_count() or 1
    # cores x SIMD lanes x 2 (an FMA is 2 flops) x 2 FMA units per core (assumed).
    peak = cores * lanes * (2 if fma else 1) * 2 * mhz / 1000 if mhz else None
    import monai

    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": lscpu.get("Model name")
        or _cpuinfo_field("model name")
        or platform.processor(),
        "cpu_count": cores,
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "simd": "avx512f" if lanes == 16 else "avx2" if lanes == 8 else "sse",
        "fp32_lanes": lanes,
        "fma": fma,
        "clock_mhz": mhz,
        "theoretical_peak_gflops": round(peak, 1) if peak else None,
        "theoretical_peak_formula": (
            f"{cores} cores x {lanes} fp32 lanes x 2 (FMA) x 2 FMA units (assumed) x "
            f"{mhz} MHz (nominal clock from lscpu//proc/cpuinfo; turbo not counted)"
            if peak
            else "clock not readable"
        ),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "git_commit": _git_commit(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return None


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict:
    """Median (and min/max) seconds of ``step`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "iters": iters,
    }


def matmul_peak(device: torch.device, n: int, warmup: int, iters: int) -> dict[str, Any]:
    """Achieved fp32 GFLOP/s of an ``n x n`` matmul (2 n^3 flops)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = median_seconds(lambda: a @ b, device, warmup, max(iters, 3))
    return {"n": n, "gflops": round(2 * n**3 / t["median_s"] / 1e9, 1), **t}


# ---------------------------------------------------------------------------------- models
def model_zoo() -> dict[str, Callable[[], nn.Module]]:
    """The benchmarked networks (ours as ``build_model`` returns them: channels-last)."""
    from monai.networks.nets import BasicUNet, UNet

    from covseg.config import PRESETS
    from covseg.models import build_model

    return {
        "paper": lambda: build_model(PRESETS["paper"]),
        "small": lambda: build_model(PRESETS["small"]),
        "monai_basicunet": lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=1),
        "monai_unet": lambda: UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=1,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        ),
    }


def _loss_fn(name: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The training loss of each model: BifurcatedLoss (3 heads) for ours, BCE for the peers."""
    if name in ("paper", "small"):
        from covseg.losses import BifurcatedLoss

        crit = BifurcatedLoss()
        return lambda out, y: crit(out, y, y).total
    return lambda out, y: F.binary_cross_entropy_with_logits(out, y)


def count_flops(name: str, size: int) -> dict[str, float]:
    """GFLOP per slice (batch 1): forward, and forward + backward.

    Counted on the ``meta`` device (shapes only, no arithmetic), so it costs nothing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = model_zoo()[name]().train()
        x = torch.rand(1, 1, size, size)
        y = torch.rand(1, 1, size, size)
        with FlopCounterMode(display=False) as fwd:
            out = model(x)
        loss = _loss_fn(name)(out, y)
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
    f, b = fwd.get_total_flops(), bwd.get_total_flops()
    return {"gflop_fwd": round(f / 1e9, 3), "gflop_train": round((f + b) / 1e9, 3)}


def bench_model(
    name: str, device: torch.device, cfg: dict, fmt: str, amp: torch.dtype | None
) -> dict[str, Any]:
    """Training and inference throughput of one model on one device / memory format."""
    torch.manual_seed(0)
    model = model_zoo()[name]().to(device)
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    b, s = cfg["batch"], cfg["size"]
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = torch.rand(b, 1, s, s, device=device).to(memory_format=mf)
    y = (torch.rand(b, 1, s, s, device=device) > 0.5).float()
    loss_fn = _loss_fn(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
        if not isinstance(out, torch.Tensor):
            out = type(out)(*[t.float() if t is not None else None for t in out])
        loss_fn(out, y).backward()
        opt.step()

    model.train()
    tr = median_seconds(train_step, device, cfg["warmup"], cfg["iters"])
    model.eval()
    if name in ("paper", "small"):
        # What `covseg segment` runs: batch norm folded into the convolutions.
        from covseg.models.blocks import fold_batchnorm

        fold_batchnorm(model)

    def infer_step() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    inf = median_seconds(infer_step, device, cfg["warmup"], cfg["iters"])
    return {
        "params": params,
        "memory_format": fmt,
        "train_slices_per_s": round(b / tr["median_s"], 3),
        "infer_slices_per_s": round(b / inf["median_s"], 3),
        "train_step": tr,
        "infer_step": inf,
    }


def section_models(cfg: dict, devices: list[str], peak: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {"batch": cfg["batch"], "size": cfg["size"], "devices": {}}
    flops: dict[str, dict[str, float]] = {}
    for name in model_zoo():
        flops[name] = count_flops(name, cfg["size"])
        _log(f"flops {name}: {flops[name]}")
    results["flops_per_slice"] = flops
    for dev_key in devices:
        device = torch.device("cuda" if dev_key.startswith("cuda") else "cpu")
        amp = torch.bfloat16 if dev_key == "cuda-bf16" else None
        per_model: dict[str, Any] = {}
        for name in model_zoo():
            formats = ("channels_last",) if name in ("paper", "small") else cfg["peer_formats"]
            runs = []
            for fmt in formats:
                r = bench_model(name, device, cfg, fmt, amp)
                _log(
                    f"{dev_key} {name} [{fmt}]: train {r['train_slices_per_s']} sl/s, "
                    f"infer {r['infer_slices_per_s']} sl/s"
                )
                runs.append(r)
            best = max(runs, key=lambda r: r["train_slices_per_s"])
            entry = {**best, "all_formats": runs}
            f = flops[name]
            entry["infer_gflops"] = round(f["gflop_fwd"] * best["infer_slices_per_s"], 1)
            entry["train_gflops"] = round(f["gflop_train"] * best["train_slices_per_s"], 1)
            mm = (peak.get(dev_key) or peak.get(device.type) or {}).get("gflops")
            if mm:
                entry["infer_fraction_of_matmul"] = round(entry["infer_gflops"] / mm, 3)
                entry["train_fraction_of_matmul"] = round(entry["train_gflops"] / mm, 3)
            per_model[name] = entry
        for entry in per_model.values():
            for peer in ("monai_basicunet", "monai_unet"):
                p = per_model[peer]
                entry[f"train_speedup_vs_{peer}"] = round(
                    entry["train_slices_per_s"] / p["train_slices_per_s"], 3
                )
                entry[f"infer_speedup_vs_{peer}"] = round(
                    entry["infer_slices_per_s"] / p["infer_slices_per_s"], 3
                )
        results["devices"][dev_key] = per_model
    return results


# ------------------------------------------------------------------------- subprocess runs
# Runs a command and reports its wall time and the peak RSS of the child (getrusage is exact,
# unlike polling); the wrapper itself imports only the standard library.
_WRAPPER = (
    "import json,resource,subprocess,sys,time\n"
    "t=time.perf_counter();r=subprocess.run(sys.argv[2:],stdout=subprocess.DEVNULL,"
    "stderr=subprocess.PIPE,text=True);w=time.perf_counter()-t\n"
    "ru=resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "json.dump({'rc':r.returncode,'wall_s':w,'peak_rss_mb':ru.ru_maxrss/1024,"
    "'user_s':ru.ru_utime,'sys_s':ru.ru_stime,'stderr_tail':r.stderr[-2000:]},"
    "open(sys.argv[1],'w'))\n"
)


def measured_run(cmd: list[str], tmp: Path) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; ``{rc, wall_s, peak_rss_mb, user_s, sys_s, ...}``."""
    report = tmp / f"run_{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-c", _WRAPPER, str(report), *cmd], check=True)
    res = json.loads(report.read_text())
    res["wall_s"] = round(res["wall_s"], 3)
    res["peak_rss_mb"] = round(res["peak_rss_mb"], 1)
    if res["rc"] == 0:
        res.pop("stderr_tail")
    return res


def benchmark_checkpoint(tmp: Path) -> tuple[Path | str, str]:
    """The shipped model when present, else a random-init small-preset checkpoint (256 px)."""
    from covseg.checkpoint import pretrained_path, save_checkpoint
    from covseg.config import PRESETS, to_dict
    from covseg.errors import CheckpointError
    from covseg.models import build_model

    try:
        pretrained_path()
        return "pretrained", "shipped model (covseg/pretrained/model.safetensors)"
    except CheckpointError:
        pass
    torch.manual_seed(0)
    meta = {
        "model_config": to_dict(PRESETS["small"]),
        "preprocessing": {"size": 256, "intensity": "auto"},
    }
    path = save_checkpoint(tmp / "small_random.safetensors", build_model(PRESETS["small"]), meta)
    return path, "random-init small preset, 256 px (no shipped model found)"


def write_volume(shape: tuple[int, int, int], path: Path) -> None:
    """A synthetic HU scan of ``shape``: a phantom at 1/4 size, repeated, plus noise."""
    import nibabel as nib

    from covseg.data.synthetic import make_phantom

    small = tuple(max(8, s // 4) for s in shape)
    hu = make_phantom(0, small)[0]  # type: ignore[arg-type]
    reps = [-(-s // m) for s, m in zip(shape, small, strict=True)]
    vol = np.repeat(np.repeat(np.repeat(hu, reps[0], 0), reps[1], 1), reps[2], 2)
    vol = vol[: shape[0], : shape[1], : shape[2]]
    noise = np.random.default_rng(0).normal(0, 15, size=shape).astype(np.int16)
    vol = np.clip(vol.astype(np.int16) + noise, -1024, 3071).astype(np.int16)
    spacing = (0.7, 0.7, 300.0 / shape[2])
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    nib.save(nib.Nifti1Image(vol, affine), str(path))


def section_segment(cfg: dict, devices: list[str], tmp: Path) -> dict[str, Any]:
    shape = tuple(cfg["segment_shape"])
    vol = tmp / "scan.nii.gz"
    t0 = time.perf_counter()
    write_volume(shape, vol)  # type: ignore[arg-type]
    _log(f"segment: wrote {shape} in {time.perf_counter() - t0:.1f} s (not timed)")
    ckpt, ckpt_desc = benchmark_checkpoint(tmp)
    out: dict[str, Any] = {
        "shape": list(shape),
        "input_mb": round(vol.stat().st_size / 2**20, 1),
        "checkpoint": ckpt_desc,
        "runs": {},
    }
    for dev in dict.fromkeys("cuda" if d.startswith("cuda") else "cpu" for d in devices):
        for tta in (False, True):
            key = f"{dev}{'_tta' if tta else ''}"
            cmd = [sys.executable, "-m", "covseg", "segment", str(vol), "--out"]
            cmd += [str(tmp / f"seg_{key}"), "--checkpoint", str(ckpt), "--device", dev]
            cmd += ["--tta"] if tta else []
            runs = []
            for _ in range(cfg["segment_runs"]):
                shutil.rmtree(tmp / f"seg_{key}", ignore_errors=True)
                runs.append(measured_run(cmd, tmp))
                _log(f"segment {key}: {runs[-1]}")
            # The median run by wall time; peak RSS is the largest of all runs.
            r = dict(sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2])
            r["wall_s_all"] = [x["wall_s"] for x in runs]
            r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
            r["rc"] = max(x["rc"] for x in runs)
            r["slices_per_s"] = round(shape[2] / r["wall_s"], 2)
            out["runs"][key] = r
    return out


def section_prepare(cfg: dict, tmp: Path) -> dict[str, Any]:
    from covseg.data.synthetic import write_synthetic_dataset

    p = cfg["prepare"]
    src = tmp / "zenodo20"
    write_synthetic_dataset(src, "zenodo20", p["cases"], seed=0, slices=p["slices"], size=p["size"])
    cmd = [sys.executable, "-m", "covseg", "prepare", str(src), str(tmp / "prepared")]
    r = measured_run([*cmd, "--layout", "zenodo20"], tmp)
    r["seconds_per_case"] = round(r["wall_s"] / p["cases"], 3)
    _log(f"prepare: {r}")
    return {**p, "output_size": 256, **r}


def section_profile(cfg: dict, device: torch.device, path: Path) -> dict[str, Any]:
    """torch.profiler of one small-preset training step; the table goes to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    from covseg.config import PRESETS
    from covseg.losses import BifurcatedLoss
    from covseg.models import build_model

    torch.manual_seed(0)
    model = build_model(PRESETS["small"]).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    crit = BifurcatedLoss()
    b, s = cfg["batch"], cfg["size"]
    x = torch.rand(b, 1, s, s, device=device)
    y = (torch.rand(b, 1, s, s, device=device) > 0.5).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        crit(model(x), y, y).total.backward()
        opt.step()

    step()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages(group_by_input_shape=True)
    table = averages.table(sort_by=sort, row_limit=30, max_name_column_width=40)
    header = f"small preset, one training step, batch {b}, {s}x{s}, {device}\n\n"
    path.write_text(header + table + "\n")
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "file": str(path),
        "device": str(device),
        "top_ops": [
            {
                "op": e.key,
                "input_shapes": str(e.input_shapes)[:160],
                "calls": e.count,
                "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2),
                "self_cpu_percent": round(100 * e.self_cpu_time_total / total, 1),
            }
            for e in top
        ],
    }


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
                "| infer % of matmul | train × BasicUNet | train × MONAI UNet | infer × BasicUNet |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, e in per.items():
                fr = e.get("infer_fraction_of_matmul")
                lines.append(
                    f"| {name} ({e['memory_format']}) | {e['params']:,} | "
                    f"{mod['flops_per_slice'][name]['gflop_fwd']:.2f} | "
                    f"{e['train_slices_per_s']:.2f} | {e['infer_slices_per_s']:.2f} | "
                    f"{e['infer_gflops']:.1f} | {'-' if fr is None else f'{100 * fr:.0f} %'} | "
                    f"{e['train_speedup_vs_monai_basicunet']:.2f} | "
                    f"{e['train_speedup_vs_monai_unet']:.2f} | "
                    f"{e['infer_speedup_vs_monai_basicunet']:.2f} |"
                )
            lines.append("")
    seg = res.get("segment")
    if seg:
        lines += [
            f"`covseg segment` on {'×'.join(map(str, seg['shape']))} int16 HU NIfTI "
            f"({seg['input_mb']} MB .nii.gz), checkpoint: {seg['checkpoint']}",
            "",
            "| run | exit | wall s (median) | all runs s | slices/s | peak RSS MB (max) "
            "| CPU user s | CPU sys s |",
            "|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for key, r in seg["runs"].items():
            runs = ", ".join(f"{w:.1f}" for w in r.get("wall_s_all", [r["wall_s"]]))
            lines.append(
                f"| {key} | {r['rc']} | {r['wall_s']:.1f} | {runs} | {r['slices_per_s']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {r['user_s']:.1f} | {r['sys_s']:.1f} |"
            )
        lines.append("")
    prep = res.get("prepare")
    if prep:
        lines += [
            f"`covseg prepare`, synthetic zenodo20: {prep['cases']} cases of "
            f"{prep['size']}×{prep['size']}×{prep['slices']} -> 256² slices: "
            f"{prep['wall_s']:.1f} s total, **{prep['seconds_per_case']:.2f} s/case**, "
            f"peak RSS {prep['peak_rss_mb']:.0f} MB (exit {prep['rc']})",
            "",
        ]
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
    """The project's targets with the measured figure and PASS/FAIL (n/a when not measured)."""
    out = []
    seg = (res.get("segment") or {}).get("runs", {})
    full_shape = res.get("segment", {}).get("shape") == [512, 512, 300]
    for key in ("cpu", "cpu_tta"):
        r = seg.get(key)
        ok = (
            None
            if r is None or not full_shape
            else (r["rc"] == 0 and r["wall_s"] <= TARGET_SEGMENT_S)
        )
        out.append(
            {
                "target": f"segment 512×512×300 {key} ≤ {TARGET_SEGMENT_S:.0f} s wall",
                "measured": "-"
                if r is None
                else f"{r['wall_s']:.1f} s"
                + ("" if full_shape else f" (quick volume {res['segment']['shape']})"),
                "ok": ok,
            }
        )
        ok = (
            None
            if r is None or not full_shape
            else r["peak_rss_mb"] <= TARGET_SEGMENT_RSS_GB * 1024
        )
        out.append(
            {
                "target": f"segment 512×512×300 {key} ≤ {TARGET_SEGMENT_RSS_GB} GB peak RSS",
                "measured": "-" if r is None else f"{r['peak_rss_mb'] / 1024:.2f} GB",
                "ok": ok,
            }
        )
    cpu = ((res.get("models") or {}).get("devices") or {}).get("cpu")
    if cpu:
        s = cpu["small"]["train_speedup_vs_monai_basicunet"]
        out.append(
            {
                "target": f"small trains ≥ {TARGET_SMALL_VS_BASICUNET}× faster per slice than BasicUNet (cpu)",
                "measured": f"{s:.2f}×",
                "ok": s >= TARGET_SMALL_VS_BASICUNET,
            }
        )
        for name in ("paper", "small"):
            fr = cpu[name].get("infer_fraction_of_matmul")
            out.append(
                {
                    "target": f"{name} inference ≥ {TARGET_INFER_OF_PEAK:.0%} of matmul GFLOP/s (cpu)",
                    "measured": "-" if fr is None else f"{100 * fr:.0f} %",
                    "ok": None if fr is None else fr >= TARGET_INFER_OF_PEAK,
                }
            )
    return out


# ------------------------------------------------------------------------------------ main
def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", required=True, type=Path, help="output JSON (all figures)")
    p.add_argument("--quick", action="store_true", help="small sizes, few iterations (sanity)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cpu: CPU only; cuda: CPU plus CUDA columns; auto (default): cuda when available",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (all CPUs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    torch.set_num_threads(max(1, args.threads))
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    devices = ["cpu", "cuda", "cuda-bf16"] if cuda else ["cpu"]
    cfg = settings(args.quick)
    res: dict[str, Any] = {
        "quick": args.quick,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "machine": machine_info(),
        "loadavg": {"start": loadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if res["loadavg"]["start"] and res["loadavg"]["start"] > 0.5 * res["machine"]["cpu_count"]:
        _log(f"WARNING: load average {res['loadavg']['start']} — timings will be distorted")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    # Results are written after every section, so a section that dies keeps the earlier ones.
    run_sections = [
        ("peak", lambda tmp: section_peak(cfg, devices)),
        ("models", lambda tmp: section_models(cfg, devices, res.get("peak") or {})),
        ("segment", lambda tmp: section_segment(cfg, devices, tmp)),
        ("prepare", lambda tmp: section_prepare(cfg, tmp)),
        (
            "profile",
            lambda tmp: section_profile(cfg, torch.device("cpu"), _side(args.json, "_profile.txt")),
        ),
    ]
    if cuda:
        run_sections.append(
            (
                "profile_cuda",
                lambda tmp: section_profile(
                    cfg, torch.device("cuda"), _side(args.json, "_profile_cuda.txt")
                ),
            )
        )
    wanted = set(sections) | ({"peak"} if "models" in sections else set())
    wanted |= {"profile_cuda"} if "profile" in sections else set()
    with tempfile.TemporaryDirectory(prefix="covseg-bench-") as tmp_name:
        for name, run in run_sections:
            if name not in wanted:
                continue
            _log(f"section {name} ...")
            res[name] = run(Path(tmp_name))
            res["loadavg"][name] = loadavg()
            write_results(res, args.json)
    write_results(res, args.json)
    print(res["markdown"])
    return 0


def section_peak(cfg: dict, devices: list[str]) -> dict[str, Any]:
    peak = {}
    for dev in dict.fromkeys("cuda" if d.startswith("cuda") else "cpu" for d in devices):
        peak[dev] = matmul_peak(torch.device(dev), cfg["matmul_n"], 2, cfg["iters"])
        _log(f"matmul {dev}: {peak[dev]['gflops']} GFLOP/s")
    return peak


def _side(json_path: Path, suffix: str) -> Path:
    return json_path.with_name(json_path.stem + suffix)


def write_results(res: dict[str, Any], json_path: Path) -> None:
    """The JSON and the Markdown tables of what has been measured so far."""
    res["targets"] = targets(res)
    res["markdown"] = markdown(res)
    json_path.write_text(json.dumps(res, indent=1))
    json_path.with_suffix(".md").write_text(res["markdown"])


if __name__ == "__main__":
    sys.exit(main())
