#!/usr/bin/env python
"""Training throughput of the small preset at the shipped recipe's batch size (4), 256², in the
current process: the quick A/B used for single changes (BENCHMARKS.md, "Segment speed, step by
step"). Prints slices/s of 5 steps after 2 warm-up.

    .venv/bin/python benchmarks/train_step.py                       # current tree
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python benchmarks/train_step.py # with huge pages
    PYTHONPATH=/path/to/old/checkout/src .venv/bin/python benchmarks/train_step.py
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from covseg.config import PRESETS
from covseg.models import build_model


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = build_model(PRESETS["small"]).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(4, 1, 256, 256)
    y = (torch.rand(4, 1, 256, 256) > 0.5).float()

    def step() -> None:
        loss = sum(F.binary_cross_entropy_with_logits(o, y) for o in model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    rate = 20 / (time.perf_counter() - t0)
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    print(f"small, batch 4, 256²: {rate:.2f} train slices/s (THP_MEM_ALLOC_ENABLE={thp})")


if __name__ == "__main__":
    main()
