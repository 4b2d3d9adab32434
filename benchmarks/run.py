#!/usr/bin/env python
"""covseg benchmarks: every figure of BENCHMARKS.md from one command, on one machine.

    python benchmarks/run.py --json benchmarks/results.json          # full (make bench)
    python benchmarks/run.py --json /tmp/quick.json --quick           # sanity run, < 2 min idle

Measured in one run (each section can be picked with ``--sections``):

- ``peak``: fp32 matmul GFLOP/s (the achievable peak) and the theoretical peak from lscpu flags;
- ``models``: FLOPs per slice (FlopCounterMode), training throughput (forward + backward + Adam
  step) and inference throughput (eval, ``torch.inference_mode``) of the ``fast`` (when
  ``PRESETS`` has it), ``small`` and ``paper`` presets and of two MONAI peers (``BasicUNet``;
  ``UNet`` of about the small preset's size), each with its ratio to BasicUNet: BasicUNet is
  measured before and after every other model (interleaved) and the ratio uses the mean of the
  two;
- ``segment``: ``covseg segment`` end to end on a synthetic 512x512x300 HU NIfTI, wall time and
  peak RSS of the subprocess (``getrusage`` of the child, exact), alternating with its
  reference, MONAI BasicUNet's bare forward passes over the same 300 slices at 256² (fresh
  process, only the forward loop timed); ratio segment wall / reference; ``--tta`` too
  (``--no-segment-tta`` skips it);
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
TARGET_FAST_VS_BASICUNET = 3.0  # train and infer slices/s, 256², batch 8, 2 threads
TARGET_SEGMENT_VS_REFERENCE = 0.6  # segment wall / bare BasicUNet forward over the same slices
TARGET_SEGMENT_RSS_GB = 2.0
TARGET_INFER_OF_PEAK = 0.5
TARGET_CONDITIONS = {"size": 256, "batch": 8, "threads": 2}  # where the model targets are defined

# Our presets, in table order; a preset missing from covseg.config.PRESETS is skipped.
OUR_PRESETS = ("fast", "fast4", "small", "paper")
REFERENCE = "monai_basicunet"  # every ratio is against this model, measured in the same run
PEERS = ("monai_basicunet", "monai_unet")
# Measured in the first round only: one training step of `paper` takes ~25 s on 2 CPU cores,
# and none of the targets rests on it.
MEASURED_ONCE = ("paper",)


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
def our_models() -> tuple[str, ...]:
    """The covseg presets benchmarked: those of ``OUR_PRESETS`` that ``PRESETS`` defines."""
    from covseg.config import PRESETS

    return tuple(name for name in OUR_PRESETS if name in PRESETS)


def model_zoo() -> dict[str, Callable[[], nn.Module]]:
    """The benchmarked networks (ours as ``build_model`` returns them: channels-last)."""
    from monai.networks.nets import BasicUNet, UNet

    from covseg.config import PRESETS
    from covseg.models import build_model

    zoo: dict[str, Callable[[], nn.Module]] = {
        name: (lambda name=name: build_model(PRESETS[name])) for name in our_models()
    }
    return zoo | {
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
    if name in our_models():
        from covseg.training.losses import BifurcatedLoss

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
    name: str,
    device: torch.device,
    cfg: dict,
    fmt: str,
    amp: torch.dtype | None,
    parts: tuple[str, ...] = ("train", "infer"),
) -> dict[str, Any]:
    """Training and/or inference throughput of one model on one device / memory format."""
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
    out: dict[str, Any] = {"params": params, "memory_format": fmt}

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
        if not isinstance(out, torch.Tensor):
            out = type(out)(*[t.float() if t is not None else None for t in out])
        loss_fn(out, y).backward()
        opt.step()

    if "train" in parts:
        model.train()
        tr = median_seconds(train_step, device, cfg["warmup"], cfg["iters"])
        out |= {"train_slices_per_s": round(b / tr["median_s"], 3), "train_step": tr}
    if "infer" in parts:
        model.eval()
        if name in our_models():
            # What `covseg segment` runs: batch norm folded into the convolutions.
            from covseg.models.blocks import fold_batchnorm

            fold_batchnorm(model)

        def infer_step() -> None:
            with torch.inference_mode(), autocast:
                model(x)

        inf = median_seconds(infer_step, device, cfg["warmup"], cfg["iters"])
        out |= {"infer_slices_per_s": round(b / inf["median_s"], 3), "infer_step": inf}
    return out


def _peer_formats(
    device: torch.device, cfg: dict, amp: torch.dtype | None, dev_key: str
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """The faster memory format of each MONAI peer, for training and for inference separately.

    One throw-away measurement per format (``cfg["peer_formats"]``); skipped when only one
    format is benchmarked (``--quick``). Returns ``({peer: {"train": fmt, "infer": fmt}}, raw)``.
    """
    chosen: dict[str, dict[str, str]] = {}
    raw: dict[str, Any] = {}
    for peer in PEERS:
        formats = cfg["peer_formats"]
        if len(formats) == 1:
            chosen[peer] = {"train": formats[0], "infer": formats[0]}
            continue
        runs = {fmt: bench_model(peer, device, cfg, fmt, amp) for fmt in formats}
        raw[peer] = {
            fmt: {k: r[f"{k}_slices_per_s"] for k in ("train", "infer")} for fmt, r in runs.items()
        }
        chosen[peer] = {
            k: max(formats, key=lambda f: runs[f][f"{k}_slices_per_s"]) for k in ("train", "infer")
        }
        _log(f"{dev_key} {peer} formats (selection, not used for ratios): {raw[peer]}")
    return chosen, raw


def _measure(
    name: str,
    device: torch.device,
    cfg: dict,
    amp: torch.dtype | None,
    peer_fmt: dict[str, dict[str, str]],
    dev_key: str,
) -> dict[str, Any]:
    """One training + inference measurement of ``name`` in its memory format(s)."""
    if name not in peer_fmt:
        r = bench_model(name, device, cfg, "channels_last", amp)
    elif (ft := peer_fmt[name]["train"]) == (fi := peer_fmt[name]["infer"]):
        r = bench_model(name, device, cfg, ft, amp)
    else:
        r = bench_model(name, device, cfg, ft, amp, parts=("train",))
        r |= bench_model(name, device, cfg, fi, amp, parts=("infer",))
        r["memory_format"] = f"train {ft}, infer {fi}"
    _log(
        f"{dev_key} {name} [{r['memory_format']}]: train {r['train_slices_per_s']} sl/s, "
        f"infer {r['infer_slices_per_s']} sl/s"
    )
    return r


def _median_of_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's row from its interleaved rounds: the median of each figure over the rounds.

    The ratio is the median of the per-round ratios (each against the BasicUNet measurements
    right around that round's measurement), not a ratio of medians; every round's figures are
    kept under ``"rounds"``.
    """
    entry = dict(rounds[0])
    for k in ("train", "infer"):
        for key in (
            f"{k}_slices_per_s",
            f"{k}_reference_slices_per_s",
            f"{k}_speedup_vs_{REFERENCE}",
        ):
            entry[key] = round(statistics.median(r[key] for r in rounds), 3)
        entry.pop(f"{k}_step", None)
    entry["rounds"] = [
        {
            key: r[key]
            for k in ("train", "infer")
            for key in (f"{k}_slices_per_s", f"{k}_speedup_vs_{REFERENCE}", f"{k}_step")
        }
        for r in rounds
    ]
    return entry


def _per_round(entry: dict[str, Any], k: str) -> str:
    """``"3.27, 3.38, 1.90"``: the ``k`` ("train"/"infer") ratio of every round of one row."""
    return ", ".join(f"{r[f'{k}_speedup_vs_{REFERENCE}']:.2f}" for r in entry.get("rounds") or [])


def section_models(cfg: dict, devices: list[str], peak: dict[str, Any]) -> dict[str, Any]:
    """Throughput of every model, and its ratio to BasicUNet measured right around it.

    Interleaved: ``R0, M1, R1, M2, R2, ...`` where ``R`` is a BasicUNet measurement and ``Mi``
    every other model in turn; the ratio of ``Mi`` is its slices/s over the mean of ``R(i-1)``
    and ``Ri`` (the BasicUNet figures just before and just after it), so a machine that speeds
    up or slows down over minutes shifts both sides of a ratio alike. The sequence is repeated
    ``cfg["rounds"]`` times (``MEASURED_ONCE`` models only in the first) and each row is the
    median over its rounds (``_median_of_rounds``): on a shared VM one bracket can be off by 2x.
    BasicUNet's own row is the mean of all its measurements (ratio 1 by definition); their
    spread is reported.
    """
    results: dict[str, Any] = {"batch": cfg["batch"], "size": cfg["size"], "devices": {}}
    flops: dict[str, dict[str, float]] = {}
    names = list(model_zoo())
    for name in names:
        flops[name] = count_flops(name, cfg["size"])
        _log(f"flops {name}: {flops[name]}")
    results["flops_per_slice"] = flops
    results["reference"] = REFERENCE
    for dev_key in devices:
        device = torch.device("cuda" if dev_key.startswith("cuda") else "cpu")
        amp = torch.bfloat16 if dev_key == "cuda-bf16" else None
        peer_fmt, selection = _peer_formats(device, cfg, amp, dev_key)

        args = (device, cfg, amp, peer_fmt, dev_key)
        refs = [_measure(REFERENCE, *args)]
        rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names if n != REFERENCE}
        for rnd in range(cfg["rounds"]):
            for name in rounds:
                if rnd and name in MEASURED_ONCE:
                    continue
                entry = _measure(name, *args)
                refs.append(_measure(REFERENCE, *args))
                for k in ("train", "infer"):
                    ref = (refs[-2][f"{k}_slices_per_s"] + refs[-1][f"{k}_slices_per_s"]) / 2
                    entry[f"{k}_reference_slices_per_s"] = round(ref, 3)
                    entry[f"{k}_speedup_vs_{REFERENCE}"] = round(
                        entry[f"{k}_slices_per_s"] / ref, 3
                    )
                rounds[name].append(entry)
        per_model: dict[str, Any] = {name: _median_of_rounds(rs) for name, rs in rounds.items()}
        ref_entry = dict(refs[-1])
        for k in ("train", "infer"):
            vals = [r[f"{k}_slices_per_s"] for r in refs]
            ref_entry[f"{k}_slices_per_s"] = round(statistics.mean(vals), 3)
            ref_entry[f"{k}_reference_slices_per_s"] = ref_entry[f"{k}_slices_per_s"]
            ref_entry[f"{k}_speedup_vs_{REFERENCE}"] = 1.0
            ref_entry[f"{k}_reference_all"] = vals
        ref_entry.pop("train_step", None)
        ref_entry.pop("infer_step", None)
        ref_entry["reference_measurements"] = refs
        per_model[REFERENCE] = ref_entry
        per_model = {name: per_model[name] for name in names}  # table order
        for name, entry in per_model.items():
            f = flops[name]
            entry["infer_gflops"] = round(f["gflop_fwd"] * entry["infer_slices_per_s"], 1)
            entry["train_gflops"] = round(f["gflop_train"] * entry["train_slices_per_s"], 1)
            mm = (peak.get(dev_key) or peak.get(device.type) or {}).get("gflops")
            if mm:
                entry["infer_fraction_of_matmul"] = round(entry["infer_gflops"] / mm, 3)
                entry["train_fraction_of_matmul"] = round(entry["train_gflops"] / mm, 3)
            # Plain ratio to MONAI UNet (not interleaved; for reference only).
            unet = per_model["monai_unet"]
            for k in ("train", "infer"):
                entry[f"{k}_speedup_vs_monai_unet"] = round(
                    entry[f"{k}_slices_per_s"] / unet[f"{k}_slices_per_s"], 3
                )
        results["devices"][dev_key] = per_model
        results.setdefault("peer_formats", {})[dev_key] = {
            "chosen": peer_fmt,
            "selection": selection,
        }
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


def measured_run(cmd: list[str], tmp: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; ``{rc, wall_s, peak_rss_mb, user_s, sys_s, ...}``."""
    report = tmp / f"run_{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-c", _WRAPPER, str(report), *cmd], check=True, env=env)
    res = json.loads(report.read_text())
    res["wall_s"] = round(res["wall_s"], 3)
    res["peak_rss_mb"] = round(res["peak_rss_mb"], 1)
    if res["rc"] == 0:
        res.pop("stderr_tail")
    return res


def benchmark_checkpoint(tmp: Path) -> tuple[Path | str, str]:
    """The shipped model when present, else a random-init small-preset checkpoint (256 px)."""
    from covseg.checkpoint import pretrained_path, save_checkpoint
    from covseg.config import PRESETS
    from covseg.errors import CheckpointError
    from covseg.meta import CheckpointMeta
    from covseg.models import build_model

    try:
        pretrained_path()
        return "pretrained", "shipped model (covseg/pretrained/model.safetensors)"
    except CheckpointError:
        pass
    torch.manual_seed(0)
    meta = CheckpointMeta(model_config=PRESETS["small"])
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


# The reference of the segment target: MONAI BasicUNet (2-D defaults, eval, inference_mode)
# forward passes over the scan's slice count at the model's input size, batch 8, in a fresh
# process; only the forward loop is timed (after one untimed warm-up batch), once per memory
# format. argv: out.json device slices size batch threads formats(comma-separated)
_REFERENCE_FORWARD = """
import json, sys, time
out, dev, n, size, batch, threads, formats = sys.argv[1:8]
n, size, batch, threads = int(n), int(size), int(batch), int(threads)
import torch
from monai.networks.nets import BasicUNet
torch.set_num_threads(threads)
device = torch.device(dev)
sync = (lambda: torch.cuda.synchronize(device)) if device.type == 'cuda' else (lambda: None)
torch.manual_seed(0)
x = torch.rand(n, 1, size, size)
res = {'threads': torch.get_num_threads(), 'forward_s': {}}
for fmt in formats.split(','):
    mf = torch.channels_last if fmt == 'channels_last' else torch.contiguous_format
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1)
    net = net.to(device).eval().to(memory_format=mf)
    with torch.inference_mode():
        net(x[:batch].to(device).contiguous(memory_format=mf))
        sync()
        t = time.perf_counter()
        for i in range(0, n, batch):
            net(x[i:i + batch].to(device).contiguous(memory_format=mf))
        sync()
        res['forward_s'][fmt] = time.perf_counter() - t
    del net
json.dump(res, open(out, 'w'))
"""


def reference_forward(
    dev: str, slices: int, size: int, batch: int, threads: int, formats: list[str], tmp: Path
) -> dict[str, Any]:
    """One fresh-process run of ``_REFERENCE_FORWARD``: forward seconds per memory format."""
    report = tmp / f"ref_{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-c", _REFERENCE_FORWARD, str(report), dev, str(slices), str(size)]
    cmd += [str(batch), str(threads), ",".join(formats)]
    proc = measured_run(cmd, tmp, env=_child_env(threads))
    if proc["rc"] != 0:
        raise RuntimeError(f"reference forward failed: {proc.get('stderr_tail')}")
    child = json.loads(report.read_text())
    return {
        "forward_s": {k: round(v, 3) for k, v in child["forward_s"].items()},
        "threads": child["threads"],
        "process_wall_s": proc["wall_s"],
        "peak_rss_mb": proc["peak_rss_mb"],
    }


def _child_env(threads: int) -> dict[str, str]:
    """The environment of the segment and reference processes: ``--threads`` threads, and
    transparent huge pages as ``covseg segment`` sets them (``setdefault``: an explicit
    ``THP_MEM_ALLOC_ENABLE`` in the environment applies to both)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return env


def _median_run(runs: list[dict[str, Any]], slices: int) -> dict[str, Any]:
    """The median run by wall time; peak RSS is the largest of all runs, rc the worst."""
    r = dict(sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2])
    r["wall_s_all"] = [x["wall_s"] for x in runs]
    r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
    r["rc"] = max(x["rc"] for x in runs)
    r["slices_per_s"] = round(slices / r["wall_s"], 2)
    return r


def section_segment(
    cfg: dict, devices: list[str], tmp: Path, threads: int, tta: bool
) -> dict[str, Any]:
    """``covseg segment`` (fresh processes) and its reference, BasicUNet's bare forward.

    The plain runs alternate with the reference runs (segment, reference, segment, ...), so
    both see the same machine; the ``--tta`` runs (optional) follow.
    """
    shape = tuple(cfg["segment_shape"])
    vol = tmp / "scan.nii.gz"
    t0 = time.perf_counter()
    write_volume(shape, vol)  # type: ignore[arg-type]
    _log(f"segment: wrote {shape} in {time.perf_counter() - t0:.1f} s (not timed)")
    ckpt, ckpt_desc = benchmark_checkpoint(tmp)
    ref_size, ref_batch = cfg["reference_size"], 8
    out: dict[str, Any] = {
        "shape": list(shape),
        "input_mb": round(vol.stat().st_size / 2**20, 1),
        "checkpoint": ckpt_desc,
        "threads": threads,
        "runs": {},
        "reference": {},
    }
    env = _child_env(threads)
    formats = list(cfg["reference_formats"])
    for dev in dict.fromkeys("cuda" if d.startswith("cuda") else "cpu" for d in devices):
        for use_tta in (False, True) if tta else (False,):
            key = f"{dev}{'_tta' if use_tta else ''}"
            cmd = [sys.executable, "-m", "covseg", "segment", str(vol), "--out"]
            cmd += [str(tmp / f"seg_{key}"), "--checkpoint", str(ckpt), "--device", dev]
            cmd += ["--tta"] if use_tta else []
            runs, refs = [], []
            for i in range(cfg["segment_runs"]):
                shutil.rmtree(tmp / f"seg_{key}", ignore_errors=True)
                runs.append(measured_run(cmd, tmp, env=env))
                _log(f"segment {key}: {runs[-1]}")
                if not use_tta:
                    # Alternate the order of the formats from run to run.
                    order = formats if i % 2 == 0 else formats[::-1]
                    refs.append(
                        reference_forward(dev, shape[2], ref_size, ref_batch, threads, order, tmp)
                    )
                    _log(f"reference {dev}: {refs[-1]}")
            out["runs"][key] = _median_run(runs, shape[2])
            if refs:
                per_fmt = {
                    fmt: {
                        "forward_s_all": [r["forward_s"][fmt] for r in refs],
                        "median_s": round(statistics.median(r["forward_s"][fmt] for r in refs), 3),
                    }
                    for fmt in formats
                }
                best = min(formats, key=lambda f: per_fmt[f]["median_s"])
                out["reference"][dev] = {
                    "what": "MONAI BasicUNet (2-D defaults) forward passes only, eval, "
                    "inference_mode, fresh process, 1 untimed warm-up batch",
                    "slices": shape[2],
                    "size": ref_size,
                    "batch": ref_batch,
                    "threads": refs[0]["threads"],
                    "formats": per_fmt,
                    "memory_format": best,
                    "forward_s": per_fmt[best]["median_s"],
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in refs),
                    "process_wall_s_all": [r["process_wall_s"] for r in refs],
                }
        ref = out["reference"].get(dev)
        for key in (dev, f"{dev}_tta"):
            if ref and key in out["runs"]:
                r = out["runs"][key]
                r["vs_reference"] = round(r["wall_s"] / ref["forward_s"], 3)
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
    from covseg.models import build_model
    from covseg.training.losses import BifurcatedLoss

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
                        f"- {name}: train {_per_round(e, 'train')}; infer {_per_round(e, 'infer')}"
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
                    + (f"; rounds {_per_round(e, k)})" if len(e.get("rounds") or []) > 1 else ")")
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
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads (default: all CPUs); also OMP_NUM_THREADS of the segment and "
        "reference processes",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="times the interleaved model sequence is repeated; rows are medians (default: 3, "
        "--quick 1)",
    )
    p.add_argument(
        "--segment-tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time `covseg segment --tta` (default on; --no-segment-tta skips it)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    args.threads = max(1, args.threads)
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    devices = ["cpu", "cuda", "cuda-bf16"] if cuda else ["cpu"]
    cfg = settings(args.quick)
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit(f"--rounds {args.rounds}: must be at least 1")
        cfg["rounds"] = args.rounds
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
        (
            "segment",
            lambda tmp: section_segment(cfg, devices, tmp, args.threads, args.segment_tta),
        ),
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
