"""The settings of ``covseg serve``: one frozen dataclass, filled from the command line."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from covseg.data.io.archive import MAX_UNZIPPED_BYTES, MAX_ZIP_FILES
from covseg.errors import CovsegError

__all__ = ["ServeConfig", "is_loopback"]


@dataclass(frozen=True)
class ServeConfig:
    """Where the viewer listens, which model it runs and what it accepts.

    Args:
        host: address to bind; a loopback address keeps the server private to this machine.
        port: TCP port (``0``: any free port, logged at startup).
        checkpoint: ``"pretrained"`` or a ``.safetensors`` checkpoint (as ``covseg segment``).
        data_dir: keep uploads and results in ``data_dir/<job id>/`` (not removed on exit);
            ``None``: a private temporary folder, removed on exit.
        max_upload_bytes: the largest upload accepted; enforced while the upload streams in.
        max_unzipped_bytes: the most bytes a zipped DICOM series may extract to.
        max_zip_files: the most files a zipped DICOM series may hold.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (as ``covseg segment``).
        batch_size: slices per forward pass (as ``covseg segment``).
        job_timeout: seconds a job may run; a longer one is stopped between two batches of
            slices, and fails with a message saying so.
        probabilities: write each case's calibrated infection probability (``segment
            --probabilities``): a download, and what the page's threshold slider re-thresholds.

    Raises:
        CovsegError: a port outside ``0..65535`` or a non-positive limit.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    checkpoint: str = "pretrained"
    data_dir: str | Path | None = None
    max_upload_bytes: int = 2048 << 20
    max_unzipped_bytes: int = MAX_UNZIPPED_BYTES
    max_zip_files: int = MAX_ZIP_FILES
    device: str = "auto"
    batch_size: int = 8
    job_timeout: float = 600.0
    probabilities: bool = True

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not 0 <= self.port <= 65535:
            raise CovsegError(f"--port {self.port}: must be 0..65535")
        names = ("max_upload_bytes", "max_unzipped_bytes", "max_zip_files", "batch_size")
        for name in (*names, "job_timeout"):
            if not getattr(self, name) >= 1:  # NaN too
                raise CovsegError(f"{name} must be positive, got {getattr(self, name)}")

    def replace(self, **changes: object) -> ServeConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def private(self) -> bool:
        """The server listens on a loopback address only."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` and ``::1``; any other name or address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
