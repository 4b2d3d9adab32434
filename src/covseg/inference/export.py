"""Export a checkpoint to ONNX: the three logit heads, a dynamic batch axis.

The input is ``image`` ``(B, 1, S, S)`` float32 in ``[0, 1]`` with ``S`` the checkpoint's
preprocessing size; the outputs are the logits ``lung``, ``infection_aux`` and ``infection``, each
``(B, 1, S, S)`` (apply a sigmoid, then the threshold recorded in the model's metadata). The side is
fixed because the network pads to a multiple of 16 with amounts that tracing freezes; resize
slices to ``S`` as ``covseg segment`` does.

The ONNX file's metadata (``metadata_props``) carries the post-processing (threshold, minimum
component size, lung margin: apply :func:`covseg.inference.postprocess.postprocess` to the
probabilities for the masks ``segment`` writes), the preprocessing and the sha256 of the source
weights.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covseg.config import to_dict
from covseg.config.choices import ONNX_OPSETS
from covseg.errors import CheckpointError, CovsegError

__all__ = ["OUTPUT_NAMES", "Heads", "export_onnx", "heads_module", "trace_onnx"]

log = logging.getLogger(__name__)

#: Output names of the exported graph, in order.
OUTPUT_NAMES = ("lung", "infection_aux", "infection")


class Heads(nn.Module):
    """The model with a plain tuple output (ONNX has no NamedTuple)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out.lung, out.infection_aux, out.infection


def export_onnx(
    checkpoint: str | Path, out: str | Path, *, opset: int = 17, size: int | None = None
) -> Path:
    """Write an ONNX model of a checkpoint.

    Args:
        checkpoint: ``.safetensors``/``.json`` checkpoint (hash-checked), or ``"pretrained"``.
        out: the ``.onnx`` file (written to a temporary name, then renamed).
        opset: ONNX opset version.
        size: input side; default the checkpoint's ``preprocessing.size`` (else 256).

    Returns:
        ``out``.

    Raises:
        CheckpointError: the checkpoint fails its checks, or its model lacks a head (the
            single-task U-Net baseline has no lung and no auxiliary head).
        CovsegError: ``opset`` outside :data:`~covseg.config.choices.ONNX_OPSETS`.
    """
    import onnx

    if not ONNX_OPSETS[0] <= opset <= ONNX_OPSETS[1]:
        raise CovsegError(
            f"--opset {opset}: the model exports with opsets {ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}"
        )

    from covseg.checkpoint import load_checkpoint, resolve_checkpoint

    src = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(src)
    side = int(size or meta.preprocessing.size)
    wrapped = heads_module(model)
    dummy = torch.zeros(2, 1, side, side)
    with torch.inference_mode():
        if any(t is None for t in wrapped(dummy)):
            raise CheckpointError(f"{src}: ONNX export needs a model with all three heads")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        # The TorchScript exporter: the dynamo one needs more time and memory and gives the
        # same graph for this static-control-flow network. The padding branch it warns about is
        # constant for the fixed side, hence the filter.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            trace_onnx(wrapped, dummy, tmp, opset)
        proto = onnx.load(tmp)
        post = meta.postprocessing
        props = {
            "covseg_version": meta.covseg_version,
            "sha256": meta.model_id,
            "threshold": json.dumps(post.threshold),
            "min_component": json.dumps(post.min_component),
            "postprocessing": json.dumps(to_dict(post)),
            "preprocessing": json.dumps({**meta.preprocessing.to_record(), "size": side}),
        }
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("%s: ONNX model of %s (input (B, 1, %d, %d))", out, src, side, side)
    return out


def heads_module(model: nn.Module) -> Heads:
    """``model`` in eval mode with a plain ``(lung, infection_aux, infection)`` tuple output."""
    return Heads(model).eval()


def trace_onnx(model: nn.Module, dummy: torch.Tensor, path: Any, opset: int = 17) -> None:
    """Export ``model`` (from :func:`heads_module`) with a dynamic batch axis to ``path`` (a file
    name or a binary buffer)."""
    torch.onnx.export(
        model,
        (dummy,),
        path,
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={n: {0: "batch"} for n in ("image", *OUTPUT_NAMES)},
        opset_version=opset,
        dynamo=False,
    )
