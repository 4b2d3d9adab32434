"""The ``segment`` and ``prepare`` sections: ``covseg segment`` / ``covseg prepare`` in fresh
processes (wall time, peak RSS), and the segment target's reference, BasicUNet's bare forward."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_common import log

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
    log(f"segment: wrote {shape} in {time.perf_counter() - t0:.1f} s (not timed)")
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
                log(f"segment {key}: {runs[-1]}")
                if not use_tta:
                    # Alternate the order of the formats from run to run.
                    order = formats if i % 2 == 0 else formats[::-1]
                    refs.append(
                        reference_forward(dev, shape[2], ref_size, ref_batch, threads, order, tmp)
                    )
                    log(f"reference {dev}: {refs[-1]}")
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
    log(f"prepare: {r}")
    return {**p, "output_size": 256, **r}
