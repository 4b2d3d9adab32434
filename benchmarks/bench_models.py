"""The ``peak`` and ``models`` sections: matmul GFLOP/s, and every network's FLOPs and
throughput with its ratio to BasicUNet measured right around it (interleaved)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench_common import log, median_seconds

# Our presets, in table order; a preset missing from covseg.config.PRESETS is skipped.
OUR_PRESETS = ("fast", "fast4", "small", "paper")
REFERENCE = "monai_basicunet"  # every ratio is against this model, measured in the same run
PEERS = ("monai_basicunet", "monai_unet")
# Measured in the first round only: one training step of `paper` takes ~25 s on 2 CPU cores,
# and none of the targets rests on it.
MEASURED_ONCE = ("paper",)


# ------------------------------------------------------------------------------------ peak
def section_peak(cfg: dict, devices: list[str]) -> dict[str, Any]:
    """Achieved matmul GFLOP/s per device type (the denominator of "infer % of matmul")."""
    peak = {}
    for dev in dict.fromkeys("cuda" if d.startswith("cuda") else "cpu" for d in devices):
        peak[dev] = matmul_peak(torch.device(dev), cfg["matmul_n"], 2, cfg["iters"])
        log(f"matmul {dev}: {peak[dev]['gflops']} GFLOP/s")
    return peak


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
        log(f"{dev_key} {peer} formats (selection, not used for ratios): {raw[peer]}")
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
    log(
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
        log(f"flops {name}: {flops[name]}")
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
