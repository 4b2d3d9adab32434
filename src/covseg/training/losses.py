"""The paper's loss: weighted binary cross-entropy over the three heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from covseg.models.bifurcated import SegOutput

__all__ = ["BifurcatedLoss", "LossTerms", "soft_dice_loss", "volume_loss"]


@dataclass
class LossTerms:
    """The total and each head's (unweighted) term, for logging. Absent heads are ``None``."""

    total: torch.Tensor
    lung: torch.Tensor | None
    infection_aux: torch.Tensor | None
    infection: torch.Tensor


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1.0,
    weight: torch.Tensor | None = None,
    per_slice: bool = False,
) -> torch.Tensor:
    """``1 - soft Dice``, ``(B, 1, H, W)`` logits and targets in {0, 1}.

    By default over the whole batch (one Dice of all its pixels: the surrogate of the pooled
    metric). With ``per_slice``, each slice's own ``1 - soft Dice`` is averaged instead: the
    surrogate of the per-slice mean Dice (:mod:`covseg.evaluation.metrics`), where a slice with
    an empty truth scores 1 only if nothing is predicted — with ``eps = 1`` such a slice's term
    is ``1 - 1 / (sum(p) + 1)``, so a few pixels of false infection already cost most of it.

    With per-sample ``weight`` ``(B,)``: batch mode counts each sample's pixels with its weight
    in the overlap and the sums and scales the term by the mean weight (a batch of weight-0
    samples adds nothing; all ones is the unweighted loss); per-slice mode takes the batch mean
    of weight x each slice's term.
    """
    p = torch.sigmoid(logits)
    if per_slice:
        inter = (p * target).flatten(1).sum(1)
        terms = 1 - (2 * inter + eps) / (p.flatten(1).sum(1) + target.flatten(1).sum(1) + eps)
        if weight is None:
            return terms.mean()
        return (terms * weight.to(terms.dtype)).mean()
    if weight is None:
        inter = (p * target).sum()
        return 1 - (2 * inter + eps) / (p.sum() + target.sum() + eps)
    w = weight.reshape(-1, *([1] * (logits.dim() - 1))).to(p.dtype)
    inter = (w * p * target).sum()
    return weight.mean() * (1 - (2 * inter + eps) / ((w * p).sum() + (w * target).sum() + eps))


def volume_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Each slice's relative error of the soft infected area, averaged over the batch.

    ``|sum(p) - sum(y)| / (sum(p) + sum(y) + 1)`` per slice (``p = sigmoid(logits)``): 0 when
    the predicted and true areas agree whatever the overlap, towards 1 when one is much larger
    than the other, 0 for an empty slice predicted empty. It penalises the error of the
    infection burden (an area summed over slices) directly, which Dice and BCE reward only
    through the overlap.

    Args:
        logits: ``(B, 1, H, W)`` logits.
        target: ``(B, 1, H, W)`` targets in {0, 1}.
        weight: per-sample weights ``(B,)``: the batch mean of weight x each slice's term.
    """
    pred = torch.sigmoid(logits).flatten(1).sum(1)
    true = target.flatten(1).sum(1)
    terms = (pred - true).abs() / (pred + true + 1)
    if weight is None:
        return terms.mean()
    return (terms * weight.to(terms.dtype)).mean()


def _bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean BCE; with per-sample ``weight``, the batch mean of weight x each sample's mean."""
    if weight is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    per_sample = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_sample.flatten(1).mean(1) * weight.to(per_sample.dtype)).mean()


class BifurcatedLoss(nn.Module):
    """``w_lung * BCE(lung) + w_aux * BCE(aux) + w_final * BCE(final)``.

    The paper's weights are 0.5 / 1 / 2 (the authors' code used 1 / 1 / 2). Heads that the model
    does not predict (``None``) contribute nothing; ``w_aux = 0`` is the "no deep supervision"
    ablation. An optional soft-Dice term (off by default) is added to each infection head.

    Args:
        w_lung: weight of the lung head.
        w_aux: weight of the infection decoder's (deep-supervision) head.
        w_final: weight of the fusion block's final infection head.
        dice: weight of the soft-Dice term added to both infection heads (0 = off).
        dice_mode: ``"batch"`` (one Dice over the batch's pixels) or ``"slice"`` (the mean of
            each slice's Dice term, the surrogate of the per-slice mean metric).
        volume: weight of :func:`volume_loss` added to the final infection head (the one whose
            masks are measured; 0 = off).

    Per-sample weights (``forward``'s ``weight`` for the infection heads, ``lung_weight`` for
    the lung head; ``(B,)``, default 1) make each term the batch mean of weight x the sample's
    term: pseudo-labelled slices count less, a derived or missing lung mask less or not at all.

    Shape:
        ``out`` holds ``(B, 1, H, W)`` logits; ``lung`` and ``infection`` are ``(B, 1, H, W)``
        targets in {0, 1} (float).
    """

    def __init__(
        self,
        w_lung: float = 0.5,
        w_aux: float = 1.0,
        w_final: float = 2.0,
        dice: float = 0.0,
        dice_mode: str = "batch",
        volume: float = 0.0,
    ) -> None:
        super().__init__()
        if dice_mode not in ("batch", "slice"):
            raise ValueError(f"BifurcatedLoss: unknown dice_mode {dice_mode!r}")
        self.w_lung, self.w_aux, self.w_final, self.dice = w_lung, w_aux, w_final, dice
        self.dice_mode, self.volume = dice_mode, volume

    def _infection_term(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        term = _bce(logits, target, weight)
        if self.dice > 0:
            term = term + self.dice * soft_dice_loss(
                logits, target, weight=weight, per_slice=self.dice_mode == "slice"
            )
        return term

    def forward(
        self,
        out: SegOutput,
        lung: torch.Tensor | None,
        infection: torch.Tensor,
        weight: torch.Tensor | None = None,
        lung_weight: torch.Tensor | None = None,
    ) -> LossTerms:
        final = self._infection_term(out.infection, infection, weight)
        if self.volume > 0:
            final = final + self.volume * volume_loss(out.infection, infection, weight)
        total = self.w_final * final
        lung_term = aux_term = None
        if out.lung is not None and lung is not None:
            lung_term = _bce(out.lung, lung, lung_weight)
            total = total + self.w_lung * lung_term
        if out.infection_aux is not None:
            aux_term = self._infection_term(out.infection_aux, infection, weight)
            total = total + self.w_aux * aux_term
        return LossTerms(total, lung_term, aux_term, final)
