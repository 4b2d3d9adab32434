from __future__ import annotations

import math

import pytest
import torch

from covseg.models import SegOutput
from covseg.training.losses import BifurcatedLoss, soft_dice_loss, volume_loss


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


def test_volume_term_is_the_relative_area_error_per_slice_by_hand():
    big = 20.0  # logits that make sigmoid 0 or 1 to float precision
    target = torch.zeros(3, 1, 4, 4)
    target[0, 0, :2] = 1  # 8 px
    target[1, 0, 0, :2] = 1  # 2 px
    logits = torch.full((3, 1, 4, 4), -big)
    logits[0, 0, 2:] = big  # 8 px, none overlapping: the right area, the wrong place
    logits[1, 0, :, :3] = big  # 12 px for 2 true
    # slice 2: empty truth, empty prediction
    by_hand = [0 / 17, 10 / 15, 0 / 1]
    assert volume_loss(logits, target).item() == pytest.approx(sum(by_hand) / 3, abs=1e-5)
    w = torch.tensor([1.0, 0.0, 1.0])  # a weight-0 slice adds nothing
    assert volume_loss(logits, target, w).item() == pytest.approx(0.0, abs=1e-5)


def test_volume_term_pulls_the_predicted_area_towards_the_true_one():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :2, :] = 1  # 16 px
    logits = torch.zeros(1, 1, 8, 8, requires_grad=True)  # 32 px of soft area: too much
    volume_loss(logits, target).backward()
    assert logits.grad is not None and bool((logits.grad > 0).all())  # lowering every logit helps


def test_loss_adds_the_volume_term_to_the_final_head_only():
    torch.manual_seed(0)
    out = SegOutput(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8))
    lung = (torch.rand(2, 1, 8, 8) > 0.5).float()
    inf = (torch.rand(2, 1, 8, 8) > 0.7).float()
    plain = BifurcatedLoss()(out, lung, inf)
    with_volume = BifurcatedLoss(volume=0.5)(out, lung, inf)
    extra = 0.5 * volume_loss(out.infection, inf)
    assert with_volume.infection.item() == pytest.approx((plain.infection + extra).item())
    assert with_volume.infection_aux.item() == pytest.approx(plain.infection_aux.item())
    assert with_volume.total.item() == pytest.approx((plain.total + 2.0 * extra).item())


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_train_config_refuses_a_negative_or_nan_volume_weight(bad):
    from covseg.config import TrainConfig

    with pytest.raises(ValueError, match="volume"):
        TrainConfig(volume=bad)


def test_a_train_config_saved_before_the_volume_term_reads_back_without_it():
    from dataclasses import asdict

    from covseg.config import TrainConfig
    from covseg.config.serialize import from_dict

    old = asdict(TrainConfig(dice=1.0, dice_mode="slice"))
    del old["volume"]
    assert from_dict(TrainConfig, old) == TrainConfig(dice=1.0, dice_mode="slice")


def test_training_with_the_volume_term_records_it_and_logs_a_finite_loss(tmp_path):
    import csv

    from _train_helpers import FAST, TINY, prepared_phantoms
    from covseg.checkpoint import read_meta
    from covseg.training.loop import train

    data = prepared_phantoms(tmp_path, cases=3, slices=4, size=32)
    run = train(TINY, FAST.replace(epochs=1, volume=0.5), data, tmp_path / "run")
    assert read_meta(run / "last.safetensors").train_config.volume == 0.5
    rows = list(csv.DictReader((run / "log.csv").read_text().splitlines()))
    assert math.isfinite(float(rows[-1]["loss"]))
