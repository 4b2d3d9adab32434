from __future__ import annotations

import math

import pytest
import torch

from covseg.models import SegOutput
from covseg.training.losses import BifurcatedLoss, soft_dice_loss


def _bce(logit: float, y: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_weighted_bce_equals_hand_computation():
    lung = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    aux = torch.tensor([[[[-2.0, 1.0], [0.5, 0.0]]]])
    fin = torch.tensor([[[[1.0, 1.0], [-1.0, -3.0]]]])
    y_lung = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    y_inf = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])

    def mean_bce(logits, y):
        return (
            sum(
                _bce(a, b)
                for a, b in zip(logits.flatten().tolist(), y.flatten().tolist(), strict=True)
            )
            / 4
        )

    expected = (
        0.5 * mean_bce(lung, y_lung) + 1.0 * mean_bce(aux, y_inf) + 2.0 * mean_bce(fin, y_inf)
    )
    terms = BifurcatedLoss()(SegOutput(lung, aux, fin), y_lung, y_inf)
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)
    assert terms.lung.item() == pytest.approx(mean_bce(lung, y_lung), rel=1e-6)


def test_loss_without_heads_and_without_deep_supervision():
    fin = torch.zeros(1, 1, 2, 2)
    y = torch.ones(1, 1, 2, 2)
    single = BifurcatedLoss()(SegOutput(None, None, fin), None, y)
    assert single.total.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    no_ds = BifurcatedLoss(w_aux=0.0)(SegOutput(fin, fin, fin), y, y)
    assert no_ds.total.item() == pytest.approx(2.5 * math.log(2), rel=1e-6)


def test_soft_dice_term():
    logits = torch.full((1, 1, 2, 2), 50.0)  # p == 1 everywhere
    y = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # 1 - (2*2 + 1) / (4 + 2 + 1)
    assert soft_dice_loss(logits, y).item() == pytest.approx(1 - 5 / 7, rel=1e-5)
    with_dice = BifurcatedLoss(w_lung=0, w_aux=0, w_final=1, dice=1.0)
    base = BifurcatedLoss(w_lung=0, w_aux=0, w_final=1)
    out = SegOutput(None, None, logits)
    assert (with_dice(out, None, y).total - base(out, None, y).total).item() == pytest.approx(
        2 / 7, rel=1e-4
    )
