"""Running a network: batches of ``[0, 1]`` slices in, probabilities of every head out.

The one place where logits become probabilities (sigmoid, flip TTA averaged on probabilities),
kept apart from the network and from post-processing (MONAI's ``Inferer`` habit).
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from covseg.config import BACKENDS
from covseg.errors import CovsegError
from covseg.models.blocks import fold_batchnorm

__all__ = ["BACKENDS", "Predictor", "Probabilities", "predict_probabilities", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other values pass through.

    Raises:
        CovsegError: ``"cuda"`` asked for where no CUDA device is available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CovsegError("--device cuda: no CUDA device is available")
    return dev


class Probabilities(NamedTuple):
    """Head probabilities of ``(N, S, S)`` slices, float32 ``(N, S, S)``.

    ``lung`` is ``None`` for a model without a lung head (the single-task U-Net baseline).
    """

    lung: np.ndarray | None
    infection: np.ndarray


def predict_probabilities(
    model: nn.Module,
    images01: np.ndarray,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    tta: bool = False,
    precision: str = "fp32",
) -> Probabilities:
    """Lung and final-infection probabilities of slices, with a PyTorch model.

    Args:
        model: a network returning :class:`~covseg.models.SegOutput` logits; run in eval mode
            on ``device`` (where it must already be), its train/eval mode restored afterwards.
        images01: ``(N, S, S)`` intensities in ``[0, 1]``, any float dtype.
        batch_size: slices per forward pass.
        device: where the model is.
        tta: average with the predictions of the left-right flipped slices.
        precision: ``"fp32"``, or ``"bf16"`` (autocast; on CPUs with AVX-512 BF16 or AMX).

    Returns:
        :class:`Probabilities`.
    """
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    bf16 = precision == "bf16"

    def forward(batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        t = torch.from_numpy(batch)[:, None].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(t)
        lung = None if out.lung is None else torch.sigmoid(out.lung.float())[:, 0].cpu().numpy()
        return lung, torch.sigmoid(out.infection.float())[:, 0].cpu().numpy()

    try:
        with torch.inference_mode():
            return _batched(forward, images01, batch_size, tta)
    finally:
        model.train(was_training)


def _batched(
    forward: Callable[[np.ndarray], tuple[np.ndarray | None, np.ndarray]],
    images01: np.ndarray,
    batch_size: int,
    tta: bool,
) -> Probabilities:
    """Batches through ``forward`` (``(B, S, S)`` -> head probabilities); flip TTA averages the
    probabilities of the slices and of their left-right mirror images."""
    x = np.asarray(images01, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected (N, S, S) slices, got shape {x.shape}")
    lung_out: np.ndarray | None = None
    inf_out = np.empty(x.shape, dtype=np.float32)
    for i in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[i : i + batch_size])
        lung, inf = forward(batch)
        if tta:
            f_lung, f_inf = forward(np.ascontiguousarray(batch[..., ::-1]))
            inf = 0.5 * (inf + f_inf[..., ::-1])
            if lung is not None and f_lung is not None:
                lung = 0.5 * (lung + f_lung[..., ::-1])
        inf_out[i : i + len(batch)] = inf
        if lung is not None:
            if lung_out is None:
                lung_out = np.empty(x.shape, dtype=np.float32)
            lung_out[i : i + len(batch)] = lung
    return Probabilities(lung_out, inf_out)


class Predictor:
    """A network prepared for inference: a private copy in eval mode with batch norm folded
    into the convolutions (~10 % of a CPU forward pass at full resolution, BENCHMARKS.md), on
    its device, channels-last. The caller's model is left as it is.

    Args:
        model: the trained network.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        batch_size: slices per forward pass (peak memory grows with it, not with the scan).
        tta: flip test-time augmentation.
        backend: ``"torch"`` (fp32), ``"torch-bf16"`` (bf16 autocast) or ``"onnxruntime"``
            (the model exported to ONNX in memory at ``size``, run by ONNX Runtime on the CPU
            with torch's thread count).
        size: the input side (``onnxruntime`` only: the graph is exported at this side up
            front, and once more for each other side it is called with, such as the scout of
            lung framing).

    Raises:
        CovsegError: ``batch_size < 1``, CUDA asked for without one, an unknown backend,
            ``onnxruntime`` without the package or on CUDA.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        tta: bool = False,
        backend: str = "torch",
        size: int = 256,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CovsegError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
        if backend not in BACKENDS:
            raise CovsegError(f"--backend: unknown {backend!r} (choose from {', '.join(BACKENDS)})")
        self.device = resolve_device(device)
        self.model = fold_batchnorm(copy.deepcopy(model).eval()).to(
            self.device, memory_format=torch.channels_last
        )
        self.batch_size = batch_size
        self.tta = bool(tta)
        self.backend = backend
        self.has_lung_head = getattr(getattr(model, "cfg", None), "model", "bifurcated") != "unet"
        self._sessions: dict[int, Any] = {}
        if backend == "onnxruntime":
            if self.device.type != "cpu":
                raise CovsegError("--backend onnxruntime runs on the CPU (use --device cpu)")
            self._sessions[int(size)] = _onnx_session(self.model, int(size))

    def __call__(self, images01: np.ndarray) -> Probabilities:
        """Head probabilities of ``(N, S, S)`` slices with this predictor's settings."""
        if self.backend != "onnxruntime":
            return predict_probabilities(
                self.model,
                images01,
                batch_size=self.batch_size,
                device=self.device,
                tta=self.tta,
                precision="bf16" if self.backend == "torch-bf16" else "fp32",
            )
        side = int(np.shape(images01)[-1])
        if side not in self._sessions:
            self._sessions[side] = _onnx_session(self.model, side)
        session = self._sessions[side]

        def forward(batch: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
            lung, _, inf = session.run(None, {"image": batch[:, None]})
            return _sigmoid(lung[:, 0]) if self.has_lung_head else None, _sigmoid(inf[:, 0])

        return _batched(forward, images01, self.batch_size, self.tta)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (np.tanh(0.5 * x.astype(np.float32)) + 1.0)).astype(np.float32)


def _onnx_session(model: nn.Module, size: int):
    """An ONNX Runtime session of ``model`` (three heads, dynamic batch, side ``size``)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CovsegError(
            "--backend onnxruntime needs the onnxruntime package (pip install 'covseg[onnx]')"
        ) from None
    from covseg.inference.export import heads_module, trace_onnx

    if not getattr(model, "cfg", None) or model.cfg.model == "unet":  # type: ignore[union-attr]
        raise CovsegError("--backend onnxruntime needs a bifurcated model (three heads)")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace_onnx(heads_module(model), torch.zeros(2, 1, size, size), buf)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
