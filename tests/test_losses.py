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


def test_per_slice_dice_term_is_the_mean_of_each_slices_term():
    # slice 0: a large lesion, predicted exactly; slice 1: a 1-pixel lesion, missed.
    y = torch.zeros(2, 1, 8, 8)
    y[0, 0, :4] = 1.0
    y[1, 0, 0, 0] = 1.0
    logits = torch.where(y[:1] > 0, 50.0, -50.0).repeat(2, 1, 1, 1)
    logits[1] = -50.0  # nothing predicted on slice 1
    eps = 1.0
    slice0 = 1 - (2 * 32 + eps) / (32 + 32 + eps)  # == 0
    slice1 = 1 - eps / (0 + 1 + eps)  # == 0.5
    per_slice = soft_dice_loss(logits, y, eps=eps, per_slice=True).item()
    assert per_slice == pytest.approx((slice0 + slice1) / 2, abs=1e-6)
    # the batch Dice hardly sees the missed small lesion (the pooled view the per-slice mode fixes)
    batch = soft_dice_loss(logits, y, eps=eps).item()
    assert batch == pytest.approx(1 - (2 * 32 + eps) / (32 + 33 + eps), abs=1e-6)
    assert per_slice > 10 * batch
    # per-sample weights: a weight-0 slice adds nothing
    w = torch.tensor([1.0, 0.0])
    assert soft_dice_loss(logits, y, weight=w, per_slice=True).item() == pytest.approx(
        slice0 / 2, abs=1e-6
    )


def test_per_slice_dice_penalises_false_infection_on_an_empty_slice():
    y = torch.zeros(1, 1, 8, 8)
    quiet = torch.full((1, 1, 8, 8), -50.0)
    noisy = quiet.clone()
    noisy[0, 0, 0, :3] = 50.0  # three false pixels
    assert soft_dice_loss(quiet, y, per_slice=True).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(noisy, y, per_slice=True).item() == pytest.approx(0.75, abs=1e-6)


def test_loss_dice_mode_is_checked_and_used():
    with pytest.raises(ValueError, match="dice_mode"):
        BifurcatedLoss(dice=1.0, dice_mode="pooled")
    y = torch.zeros(2, 1, 4, 4)
    y[0, 0, 0, 0] = 1.0
    logits = torch.full((2, 1, 4, 4), -50.0)
    out = SegOutput(None, None, logits)
    per_slice = BifurcatedLoss(w_lung=0, w_aux=0, w_final=1, dice=1.0, dice_mode="slice")
    batch = BifurcatedLoss(w_lung=0, w_aux=0, w_final=1, dice=1.0)
    bce = BifurcatedLoss(w_lung=0, w_aux=0, w_final=1)(out, None, y).infection.item()
    # per slice: (missed 1-pixel lesion 1 - 1/2 + empty slice 0) / 2; batch: 1 - 1/2
    assert per_slice(out, None, y).infection.item() == pytest.approx(bce + 0.25, abs=1e-4)
    assert batch(out, None, y).infection.item() == pytest.approx(bce + 0.5, abs=1e-4)
