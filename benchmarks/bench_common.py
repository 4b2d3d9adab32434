"""What every benchmark section shares: sizes, the machine, timing, and the log line."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ settings
def settings(quick: bool) -> dict[str, Any]:
    """Sizes and iteration counts; ``quick`` shrinks everything for a sanity run."""
    if quick:
        return {
            "size": 128,
            "batch": 2,
            "warmup": 1,
            "iters": 2,
            "rounds": 1,
            "matmul_n": 1024,
            "segment_shape": (128, 128, 24),
            "segment_runs": 1,
            "reference_size": 128,
            "reference_formats": ("contiguous", "channels_last"),
            "prepare": {"cases": 2, "slices": 8, "size": 64},
            "peer_formats": ("contiguous",),
        }
    return {
        "size": 256,
        "batch": 8,
        "warmup": 2,
        "iters": 5,
        "rounds": 3,
        "matmul_n": 4096,
        "segment_shape": (512, 512, 300),
        "segment_runs": 3,
        "reference_size": 256,
        "reference_formats": ("contiguous", "channels_last"),
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
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict:
    """Median (and min/max) seconds of ``step`` over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "iters": iters,
    }


# ------------------------------------------------------------------------------------- log
def log(msg: str) -> None:
    """One time-stamped progress line on stderr (stdout carries the Markdown tables)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
