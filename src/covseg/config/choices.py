"""The named choices of covseg's settings: each tuple lists the values a field or a CLI flag
accepts (the dataclasses check against them; argparse offers them)."""

from __future__ import annotations

__all__ = [
    "AUGMENTATIONS",
    "BACKENDS",
    "DEVICES",
    "FRAMINGS",
    "INPUT_NORMS",
    "INTENSITY_RULES",
    "ONNX_OPSETS",
    "ROBUSTNESS_VARIANTS",
]

#: The intensity rules of :func:`covseg.data.preprocess.normalize_intensity`: Hounsfield units;
#: 8-bit pictures or windowed volumes; floats already scaled to ``[0, 1]``; DICOM stored values
#: without the rescale intercept (``HU + 1024``).
INTENSITY_RULES = ("hu", "uint8", "unit", "hu1024")

#: How a :class:`~covseg.inference.predict.Predictor` runs the network (``--backend``):
#: PyTorch fp32, PyTorch with bf16 autocast, or ONNX Runtime (CPU).
BACKENDS = ("torch", "torch-bf16", "onnxruntime")
#: How the network looks at a slice (:mod:`covseg.inference.framing`): the whole slice, or
#: cropped to the lungs that a cheap scout look at the whole slice found.
FRAMINGS = ("full", "lungs")
#: Where training and inference run (``--device``): ``auto`` picks CUDA when available.
DEVICES = ("auto", "cpu", "cuda")
#: The training augmentations (:data:`covseg.data.augment.PROFILES`, ``--augmentation``).
AUGMENTATIONS = ("basic", "robust", "robust_lungs", "robust_clahe_first")
#: The network's first step (``ModelConfig.input_norm``, ``--input-norm``): none, or a per-slice
#: histogram equalisation.
INPUT_NORMS = ("none", "equalize")
#: The ONNX opsets ``export-onnx`` writes (first, last): below 10 the TorchScript exporter cannot
#: express the network's slicing and bilinear upsampling; 20 is the last it knows
#: (``torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET``, torch 2.13).
ONNX_OPSETS = (10, 20)
#: ``segment --overlay`` values: ``auto`` (volumes only, and none above :data:`OVERLAY_AUTO_MAX`
#: cases), ``none``, ``all``.
OVERLAYS = ("auto", "none", "all")
#: Above this many cases ``--overlay auto`` draws no overlay at all.
OVERLAY_AUTO_MAX = 50

#: The variants of ``evaluate --robustness`` (:data:`covseg.evaluation.robustness.VARIANTS`), in
#: table order: as read; cropped to the lungs; zoomed out; another window; two display gammas;
#: adaptive histogram equalisation.
ROBUSTNESS_VARIANTS = (
    "plain",
    "crop_lungs",
    "zoom_out",
    "window",
    "gamma_0.7",
    "gamma_1.4",
    "clahe",
)
