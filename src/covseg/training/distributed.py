"""The process group of a ``torchrun`` job (or a single process), and CPU thread settings."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

__all__ = ["ProcessGroup", "cpu_threads", "torch_threads"]


class ProcessGroup:
    """Rank, world size and whether this process writes files (rank 0).

    Under ``torchrun`` (``WORLD_SIZE > 1``) a process group is initialised (NCCL on CUDA, gloo
    on the CPU) unless one already is; :meth:`close` destroys only a group made here.
    """

    def __init__(self, device: torch.device) -> None:
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.main = self.rank == 0

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def close(self) -> None:
        if self.owned:
            dist.destroy_process_group()


def cpu_threads(requested: int) -> int:
    """``requested`` torch threads, or (0) all cores divided among the local processes."""
    if requested:
        return requested
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads; the previous number is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
