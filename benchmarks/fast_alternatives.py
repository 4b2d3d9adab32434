#!/usr/bin/env python
"""Candidates for the ``fast`` preset, timed against MONAI BasicUNet in the same process.

Every alternative tried while designing ``PRESETS["fast"]`` is listed in :data:`ALTERNATIVES`
(the shipped preset is ``fast``; ``small`` and ``paper`` are there for reference). For each one
the script builds the model as ``build_model`` does (channels-last) and alternates single steps
with a BasicUNet (``spatial_dims=2, in_channels=1, out_channels=1``, contiguous: its faster
format on this CPU, BENCHMARKS.md), so both see the same machine load; the figures are the
ratios of the median step times, which stay meaningful on a busy machine where absolute
slices/s do not.

- train step: forward, BCE on every head (ours: lung, aux, final), backward, Adam step;
- inference: ``torch.inference_mode()``; ours on ``fold_batchnorm(copy.deepcopy(model).eval())``
  as ``covseg segment`` runs it, BasicUNet in eval mode.

Batch 8, 256x256, ``torch.set_num_threads(2)`` (defaults)::

    .venv/bin/python benchmarks/fast_alternatives.py                    # all but paper
    .venv/bin/python benchmarks/fast_alternatives.py --only fast,small,paper --rounds 3

Accuracy screening of a candidate with the project's CLI (the candidate is registered as the
``fast`` preset in this process only)::

    .venv/bin/python benchmarks/fast_alternatives.py screen s2d -- cv --data prepared/medseg100 \\
        --out runs/screen_s2d --folds 5 --repeats 1 --fold 0 --repeat 0 --lung-gate soft \\
        --epochs 48 --batch-size 4 --lr 2e-3 --dice-loss 1 --device cpu --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from covseg.config import PRESETS, ModelConfig
from covseg.models import build_model, count_parameters
from covseg.models.blocks import fold_batchnorm

SMALL = PRESETS["small"]
#: The first ``fast`` preset (one-step refinement, 16 wide), the base of the s2d4 candidates.
S2D4_WIDE = PRESETS["fast4"].replace(refine_levels=1, refine_channels=16)

#: name -> (config, what it tries). ``fast`` is the shipped preset.
ALTERNATIVES: dict[str, tuple[ModelConfig, str]] = {
    "paper": (PRESETS["paper"], "reference: the paper's widths, full resolution"),
    "small": (SMALL, "reference: small preset, full resolution"),
    "s2d": (SMALL.replace(stem="s2d"), "small widths, space-to-depth stem: all at H/2"),
    "conv": (SMALL.replace(stem="conv"), "small widths, stride-2 3x3 conv stem (16 ch)"),
    "s2d_sep": (
        SMALL.replace(stem="s2d", separable=True),
        "s2d + depthwise-separable inception convs (factorised depthwise k x 1, 1 x k)",
    ),
    "s2d_sep_full": (
        SMALL.replace(stem="s2d", separable=True, factorize=False),
        "s2d + depthwise-separable inception convs (full k x k depthwise)",
    ),
    "conv_sep": (
        SMALL.replace(stem="conv", separable=True),
        "conv stem + depthwise-separable inception convs",
    ),
    "s2d4": (
        SMALL.replace(stem="s2d", stem_factor=4),
        "small widths, 4x4 space-to-depth stem: all at H/4, full-resolution refinement",
    ),
    "s2d4_wide": (
        S2D4_WIDE,
        "s2d4 with ~2x the widths at H/4 and a one-step 16-wide refinement (the first fast)",
    ),
    "s2d4_r2": (
        S2D4_WIDE.replace(refine_levels=2),
        "s2d4_wide with a two-step refinement (H/4 -> H/2 with a 2x2 space-to-depth image "
        "conv -> H)",
    ),
    "s2d4_r2w": (
        S2D4_WIDE.replace(refine_levels=2, refine_channels=24),
        "s2d4_r2 with a 24-wide refinement (= the fast4 preset)",
    ),
    "s2d4_r2x": (
        S2D4_WIDE.replace(refine_levels=2, refine_channels=32),
        "s2d4_r2 with a 32-wide refinement",
    ),
}
S2D = ALTERNATIVES["s2d"][0]
ALTERNATIVES["s2d_pf"] = (
    S2D.replace(fusion_inputs="paper"),
    "s2d, the fusion block fed [image, infection probability] only (the paper's inputs)",
)
ALTERNATIVES["s2d_r16"] = (S2D.replace(refine_channels=16), "s2d with a 16-wide refinement")
ALTERNATIVES["s2d_pf_r16"] = (
    S2D.replace(fusion_inputs="paper", refine_channels=16),
    "s2d_pf with a 16-wide refinement",
)
ALTERNATIVES["conv_pf_r16"] = (
    ALTERNATIVES["conv"][0].replace(fusion_inputs="paper", refine_channels=16),
    "s2d_pf_r16 with the stride-2 3x3 conv stem (16 ch, learned) instead of space-to-depth",
)
ALTERNATIVES["s2d_thin"] = (
    S2D.replace(
        encoder_channels=(12, 32, 64, 96, 160),
        lung_decoder_channels=(8, 12, 24, 32, 48),
        infection_decoder_channels=(12, 24, 48, 80, 128),
        fusion_channels=(12, 16, 8),
    ),
    "s2d with 12-wide H/2 levels (encoder, infection decoder, fusion) and a 12-wide lung level 1",
)
ALTERNATIVES["fast"] = (PRESETS["fast"], "the fast preset (= conv_pf_r16)")
ALTERNATIVES["fast4"] = (PRESETS["fast4"], "the fast4 preset (= s2d4_r2w; the shipped model)")
ALTERNATIVES["fast_h2"] = (
    PRESETS["fast4"].replace(refine_half_depth=2),
    "fast4 with a second 3x3 conv in the H/2 refinement step",
)
ALTERNATIVES["fast_lr"] = (
    PRESETS["fast4"].replace(lung_refine_channels=16),
    "fast4 with the lung logits refined too (two steps, 16 wide)",
)


def basic_unet() -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1)


def gflops(cfg: ModelConfig, size: int) -> float:
    """Forward GFLOP per slice (convolutions and matmuls), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(cfg)
        with FlopCounterMode(display=False) as count:
            model(torch.rand(1, cfg.in_channels, size, size))
    return count.get_total_flops() / 1e9


def _heads(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if t is not None]  # type: ignore[attr-defined]


def make_steps(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fold: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train step, inference step) closures for ``model``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = sum(F.binary_cross_entropy_with_logits(o, y) for o in _heads(model(x)))
        loss.backward()  # type: ignore[union-attr]
        opt.step()

    state: dict[str, torch.nn.Module] = {}

    def infer() -> None:
        if "eval" not in state:  # built once, after the training warm-up set BN statistics
            ev = copy.deepcopy(model).eval()
            state["eval"] = fold_batchnorm(ev) if fold else ev
        with torch.inference_mode():
            state["eval"](x)

    return train, infer


def _time(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(
    ours: Callable[[], None], ref: Callable[[], None], rounds: int, warmup: int
) -> tuple[float, float, float]:
    """Median seconds of ``ours`` and ``ref``, alternated step by step; and their ratio
    ``ref / ours`` (= our slices/s over the reference's)."""
    for _ in range(warmup):
        ref()
        ours()
    t_ours, t_ref = [], []
    for i in range(rounds):
        pair = [(t_ref, ref), (t_ours, ours)]
        for times, fn in pair if i % 2 == 0 else pair[::-1]:
            times.append(_time(fn))
    mo, mr = statistics.median(t_ours), statistics.median(t_ref)
    return mo, mr, mr / mo


def bench(names: list[str], batch: int, size: int, rounds: int, warmup: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.rand(batch, 1, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.5).float()
    ref = basic_unet()
    ref_train, ref_infer = make_steps(ref, x, y, fold=False)
    rows = []
    for name in names:
        cfg, what = ALTERNATIVES[name]
        torch.manual_seed(0)
        model = build_model(cfg)
        xl = x.contiguous(memory_format=torch.channels_last)
        train, infer = make_steps(model, xl, y, fold=True)
        r = rounds if name != "paper" else max(2, rounds // 3)
        w = warmup if name != "paper" else 1
        tr = alternate(train, ref_train, r, w)
        inf = alternate(infer, ref_infer, r, w)
        row = {
            "name": name,
            "what": what,
            "params": count_parameters(model),
            "gflop": gflops(cfg, size),
            "train_x": tr[2],
            "infer_x": inf[2],
            "train_s": tr[0],
            "ref_train_s": tr[1],
            "infer_s": inf[0],
            "ref_infer_s": inf[1],
        }
        rows.append(row)
        print(
            f"{name}: train x{row['train_x']:.2f} ({tr[0]:.2f} s vs {tr[1]:.2f} s), "
            f"infer x{row['infer_x']:.2f} ({inf[0]:.3f} s vs {inf[1]:.3f} s)",
            file=sys.stderr,
            flush=True,
        )
        del model, train, infer
    return rows


def table(rows: list[dict], ref_gflop: float) -> str:
    lines = [
        "| model | params | GFLOP/slice fwd | x BasicUNet FLOPs | train x BasicUNet "
        "| infer x BasicUNet | what |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['gflop']:.2f} | {r['gflop'] / ref_gflop:.2f} "
            f"| {r['train_x']:.2f} | {r['infer_x']:.2f} | {r['what']} |"
        )
    return "\n".join(lines)


def screen(name: str, cli_args: list[str]) -> int:
    """Run the covseg CLI with candidate ``name`` registered as the ``fast`` preset."""
    from covseg.cli import main

    PRESETS["fast"] = ALTERNATIVES[name][0]
    return main([*cli_args, "--preset", "fast"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "screen":
        rest = argv[2:]
        return screen(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [n for n in ALTERNATIVES if n != "paper"]
    p.add_argument("--only", default=",".join(default), help="comma-separated names")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=6, help="timed steps of each model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(ALTERNATIVES))
    if unknown:
        p.error(f"unknown alternative(s) {unknown}; known: {sorted(ALTERNATIVES)}")
    rows = bench(names, args.batch, args.size, args.rounds, args.warmup)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as count:
        basic_unet()(torch.rand(1, 1, args.size, args.size))
    ref_gflop = count.get_total_flops() / 1e9
    print(
        f"batch {args.batch}, {args.size}x{args.size}, {args.threads} threads; ratios of median "
        f"step times, alternated with BasicUNet ({ref_gflop:.2f} GFLOP/slice) in this process\n"
    )
    print(table(rows, ref_gflop))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
