"""Convolution blocks: conv-BN-ReLU, the U-Net double conv, and the paper's inception block."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ConvBNReLU",
    "DoubleConv",
    "HistogramEqualize",
    "InceptionBlock",
    "SeparableMaxPool",
    "channels_last",
    "fold_batchnorm",
]


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` (``(B, C, H, W)``) in channels-last memory format, unambiguously so for ``C == 1``.

    A one-channel tensor is contiguous in both formats and ``Tensor.contiguous`` keeps the
    NCHW strides; ``torch.cat`` then falls back to NCHW for the whole result and every following
    convolution converts it back (measured: 4 full-resolution copies per fusion block). The view
    returned here has channels-last strides over the same memory.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return t  # memory formats mean nothing in an exported graph; as_strided would not export
    if t.dim() == 4 and t.shape[1] == 1:
        t = t.contiguous()
        h, w = t.shape[-2:]
        return t.as_strided(t.shape, (h * w, 1, w, 1))
    return t.contiguous(memory_format=torch.channels_last)


class ConvBNReLU(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU`` with "same" padding for any kernel size and dilation.

    The layout is always ``[conv(s)..., BN, ReLU]`` with the BN right after the last conv, which
    :func:`fold_batchnorm` relies on.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: odd kernel size.
        dilation: dilation rate; padding is ``dilation * (kernel - 1) // 2`` so that the spatial
            size is kept (divided by ``stride``).
        factorize: a kernel larger than 3 as ``k x 1`` then ``1 x k``.
        separable: depthwise-separable: a depthwise ``k x k`` conv (``k x 1`` then ``1 x k``
            with ``factorize``) on ``in_ch`` channels, then a pointwise ``1 x 1`` conv to
            ``out_ch`` (MobileNet); ``kernel == 1`` stays a plain conv.
        stride: stride of the (first) conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        dilation: int = 1,
        factorize: bool = False,
        separable: bool = False,
        stride: int = 1,
    ) -> None:
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        pad = dilation * (kernel - 1) // 2
        if separable and kernel > 1:
            if factorize and kernel > 3:
                convs: list[nn.Module] = [
                    nn.Conv2d(
                        in_ch,
                        in_ch,
                        (kernel, 1),
                        (stride, 1),
                        (pad, 0),
                        dilation,
                        groups=in_ch,
                        bias=False,
                    ),
                    nn.Conv2d(
                        in_ch,
                        in_ch,
                        (1, kernel),
                        (1, stride),
                        (0, pad),
                        dilation,
                        groups=in_ch,
                        bias=False,
                    ),
                ]
            else:
                convs = [
                    nn.Conv2d(in_ch, in_ch, kernel, stride, pad, dilation, groups=in_ch, bias=False)
                ]
            convs.append(nn.Conv2d(in_ch, out_ch, 1, bias=False))
        elif factorize and kernel > 3:
            # k x k as k x 1 then 1 x k (Inception-v3): same receptive field, 2k/k^2 the FLOPs.
            convs = [
                nn.Conv2d(in_ch, out_ch, (kernel, 1), (stride, 1), (pad, 0), dilation, bias=False),
                nn.Conv2d(out_ch, out_ch, (1, kernel), (1, stride), (0, pad), dilation, bias=False),
            ]
        else:
            convs = [nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation, bias=False)]
        super().__init__(*convs, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SeparableMaxPool(nn.Module):
    """``k x k`` max-pool, stride 1, same padding, computed as ``1 x k`` then ``k x 1``.

    Max is separable, so the result equals ``nn.MaxPool2d(k, 1, k // 2)`` exactly; on the CPU it
    is ~10x faster at full resolution. Without autograd (inference) each 1-D pass is done by
    in-place maxima of shifted views instead: ``max_pool2d`` also writes int64 indices, and the
    shifted maxima are ~1.2-1.5x faster on the full-resolution tensors (same result, bit for bit).
    """

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.kernel = kernel
        pad = kernel // 2
        self.rows = nn.MaxPool2d((1, kernel), stride=1, padding=(0, pad))
        self.cols = nn.MaxPool2d((kernel, 1), stride=1, padding=(pad, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Traced graphs (ONNX) take the pooling path: in-place maxima of views do not trace.
        if (torch.is_grad_enabled() and x.requires_grad) or torch.jit.is_tracing():
            return self.cols(self.rows(x))
        return _shifted_max(_shifted_max(x, 3, self.kernel // 2), 2, self.kernel // 2)


def _shifted_max(x: torch.Tensor, dim: int, radius: int) -> torch.Tensor:
    """Max over ``[i - radius, i + radius]`` along ``dim`` (borders: the window is clipped)."""
    n = x.shape[dim]
    out = x.clone(memory_format=torch.preserve_format)
    for s in range(1, min(radius, n - 1) + 1):
        a = out.narrow(dim, s, n - s)
        torch.maximum(a, x.narrow(dim, 0, n - s), out=a)
        b = out.narrow(dim, 0, n - s)
        torch.maximum(b, x.narrow(dim, s, n - s), out=b)
    return out


class DoubleConv(nn.Sequential):
    """The U-Net block: two 3x3 ``ConvBNReLU``. Input ``(B, in_ch, H, W)`` -> ``(B, out_ch, H, W)``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class InceptionBlock(nn.Module):
    """The multi-scale dilated inception block (paper Fig. 2).

    Four parallel branches, each with ``filters // 2`` channels:

    a) two ``k_a`` convs without dilation (paper: 3x3, 3x3);
    b) two ``k_b`` convs with dilation ``d_rate`` (paper: 5x5, 5x5; authors' code 7x7, 5x5);
    c) two ``k_c`` convs with dilation ``d_rate`` (paper: 9x9, 9x9; authors' code 9x9, 7x7);
    d) 7x7 max-pool, stride 1, same padding, then a 1x1 conv to ``filters // 2`` channels
       (the paper does not give the pool branch's width; the 1x1 projection keeps every branch
       at ``filters // 2`` as the paper states).

    The branches and the block input are concatenated (the input concatenation is from the
    authors' code; the paper is silent), then fused to ``filters`` channels as in the authors'
    code: dropout, dilated 3x3 conv to ``1.5 * filters``, dilated 3x3 conv to ``filters``.

    Args:
        in_ch: input channels.
        filters: output channels ``F``.
        d_rate: dilation of branches b, c and of the fusion convs.
        kernels: the three kernel pairs ``((a1, a2), (b1, b2), (c1, c2))``.
        dropout: dropout probability before the fusion convs (authors: 0.07). Channel-wise
            (``Dropout2d``): element-wise dropout's random mask costs ~6 % of a CPU training
            step at full resolution for no known benefit at p = 0.07.
        factorize: compute kernels larger than 3 as ``k x 1`` then ``1 x k`` (the efficient
            variant; not in the paper).
        separable: depthwise-separable branch and fusion convs (see :class:`ConvBNReLU`; not in
            the paper).

    Shape:
        ``(B, in_ch, H, W) -> (B, filters, H, W)``.
    """

    def __init__(
        self,
        in_ch: int,
        filters: int,
        d_rate: int = 1,
        kernels: tuple[tuple[int, int], ...] = ((3, 3), (5, 5), (9, 9)),
        dropout: float = 0.07,
        factorize: bool = False,
        separable: bool = False,
    ) -> None:
        super().__init__()
        half = max(1, filters // 2)
        dilations = (1, d_rate, d_rate)
        self.branches = nn.ModuleList(
            nn.Sequential(
                ConvBNReLU(in_ch, half, k1, d, factorize, separable),
                ConvBNReLU(half, half, k2, d, factorize, separable),
            )
            for (k1, k2), d in zip(kernels, dilations, strict=True)
        )
        self.pool = nn.Sequential(SeparableMaxPool(7), ConvBNReLU(in_ch, half, kernel=1))
        cat_ch = 4 * half + in_ch
        mid = (3 * filters + 1) // 2
        self.fuse = nn.Sequential(
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            ConvBNReLU(cat_ch, mid, 3, d_rate, separable=separable),
            ConvBNReLU(mid, filters, 3, d_rate, separable=separable),
        )
        self.out_channels = filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [branch(x) for branch in self.branches]
        parts += [self.pool(x), channels_last(x)]
        return self.fuse(torch.cat(parts, dim=1))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` of :class:`ConvBNReLU` into the convolution before it.

    Inference only: the model is changed in place (and returned) and must not be trained
    afterwards. Outputs equal the unfolded model's to float rounding (~1e-6); measured on the
    CPU it removes the batch-norm passes over the full-resolution tensors (benchmarks/).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in model.modules():
        # ConvBNReLU is [conv(s)..., BN, ReLU]; a folded block has an Identity where BN was.
        if isinstance(block, ConvBNReLU) and isinstance(block[-2], nn.BatchNorm2d):
            bn = block[-2]
            if bn.training or bn.running_mean is None:
                raise ValueError("fold_batchnorm needs an eval-mode model with running statistics")
            block[-3] = fuse_conv_bn_eval(block[-3], bn)
            block[-2] = nn.Identity()
    return model


class HistogramEqualize(nn.Module):
    """Per-slice histogram equalisation: each pixel becomes its value's mid-rank in its slice.

    The input's ``[0, 1]`` range is cut into ``bins`` equal bins; a pixel in bin ``k`` becomes
    ``(#pixels in bins < k + #pixels in bin k / 2) / #pixels``, computed per slice and channel.
    So a strictly monotone change of intensity that keeps distinct bins distinct (a window that
    clips nothing, a gamma, a min-max stretch) gives the same output, ties get one value (a flat
    background stays flat; a constant slice becomes 0.5), and the output fills ``[0, 1]``
    whatever window, gamma or equalisation the picture came with. Values outside ``[0, 1]`` count
    as 0 or 1, NaN as 0. It has no parameters and no gradient to its input, and it is made of
    ops that export to ONNX (scatter-add, cumulative sum, gather), computed in float32 whatever
    the input's dtype. It depends on the field of view: padding a slice with air changes its
    histogram, so a zoomed-out slice is not equalised like the same slice uncropped.

    Args:
        bins: number of histogram bins; 1024 keeps the 256 levels of an 8-bit picture apart
            and bins a ``[-1250, 250]`` HU window at about 1.5 HU.

    Shape:
        ``(B, C, H, W)`` -> the same, in the input's dtype.
    """

    def __init__(self, bins: int = 1024) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"HistogramEqualize: bins must be >= 2, got {bins}")
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.detach().float().reshape(b * c, h * w)
        flat = torch.where(torch.isnan(flat), torch.zeros_like(flat), flat)  # not an index
        idx = (flat.clamp(0, 1) * self.bins).floor().clamp(max=self.bins - 1).long()
        hist = torch.zeros(b * c, self.bins, dtype=torch.float32, device=x.device)
        hist = hist.scatter_add(1, idx, torch.ones_like(flat))
        mid_rank = torch.cumsum(hist, dim=1) - 0.5 * hist
        out = torch.gather(mid_rank, 1, idx) / float(h * w)
        return out.reshape(b, c, h, w).to(x.dtype)

    def extra_repr(self) -> str:
        return f"bins={self.bins}"
