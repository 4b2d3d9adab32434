"""The ``profile`` section: torch.profiler of one small-preset training step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench_common import sync


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
        sync(device)
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
