"""Training augmentation: the basic profile unchanged, the robust profile's re-framing and
re-windowing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from covseg.data.augment import PROFILES, AugmentConfig, make_augment

S = 64
# Only the transform under test (geometry and intensity of the basic profile off).
OFF = {"flip": False, "rotate_deg": 0, "scale": 0, "intensity": 0, "prob": 1.0}


def _sample(box: tuple[int, int, int, int] = (12, 44, 8, 56), seed: int = 0) -> dict:
    """A textured image in [0.2, 0.8] with a rectangular lung and an infection inside it."""
    g = torch.Generator().manual_seed(seed)
    r0, r1, c0, c1 = box
    image = 0.2 + 0.6 * torch.rand(1, S, S, generator=g)
    lung = torch.zeros(1, S, S)
    lung[:, r0:r1, c0:c1] = 1
    infection = torch.zeros(1, S, S)
    infection[:, r0 + 2 : (r0 + r1) // 2, c0 + 2 : (c0 + c1) // 2] = 1
    return {"image": image, "lung": lung, "infection": infection, "case": "c", "index": 3}


def _box(m: torch.Tensor) -> tuple[int, int, int, int]:
    rows = torch.nonzero(m[0].any(dim=1)).flatten()
    cols = torch.nonzero(m[0].any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _basic_reference(cfg: AugmentConfig, seed: int):
    """The augmentation as it was before the robust profile (the old fields only)."""
    from monai.transforms import (
        Compose,
        Lambdad,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
    )

    keys = ["image", "lung", "infection"]
    modes = ["bilinear", "nearest", "nearest"]
    ts: list = []
    if cfg.flip:
        ts.append(RandFlipd(keys=keys, prob=cfg.prob, spatial_axis=1))
    if cfg.rotate_deg > 0 or cfg.scale > 0:
        rad = float(cfg.rotate_deg) * 3.141592653589793 / 180
        ts.append(
            RandAffined(
                keys=keys,
                prob=cfg.prob,
                rotate_range=(rad,),
                scale_range=(cfg.scale, cfg.scale),
                mode=modes,
                padding_mode="zeros",
            )
        )
    if cfg.intensity > 0:
        ts.append(RandScaleIntensityd(keys="image", factors=cfg.intensity, prob=cfg.prob))
        g = (max(0.1, 1 - cfg.intensity), 1 + cfg.intensity)
        ts.append(RandAdjustContrastd(keys="image", gamma=g, prob=cfg.prob))
    ts.append(Lambdad(keys="image", func=lambda t: torch.clamp(torch.as_tensor(t), 0.0, 1.0)))
    compose = Compose(ts)
    compose.set_random_state(seed=seed)

    def augment(sample: dict) -> dict:
        out = compose({k: sample[k] for k in keys})
        res = {k: torch.as_tensor(out[k]).float() for k in keys}
        for k in ("lung", "infection"):
            res[k] = (res[k] > 0.5).float()
        return {k: v.as_tensor() if hasattr(v, "as_tensor") else v for k, v in res.items()}

    return augment


@pytest.mark.parametrize("cfg", [AugmentConfig(), AugmentConfig(prob=1.0, scale=0.2)])
@pytest.mark.parametrize("seed", [0, 5])
def test_defaults_reproduce_the_basic_augmentation(cfg, seed):
    assert PROFILES["basic"] == AugmentConfig()
    new, ref = make_augment(cfg, seed=seed), _basic_reference(cfg, seed)
    for i in range(6):
        s = _sample(seed=i)
        a, b = new(s), ref(s)
        for k in ("image", "lung", "infection"):
            assert torch.equal(a[k], b[k]), (k, i)


def _run(aug, n: int = 12) -> list[dict]:
    return [aug(_sample(seed=i)) for i in range(n)]


@pytest.mark.parametrize("profile", ["robust", "robust_lungs"])
def test_robust_profile_keeps_masks_aligned_and_is_seeded(profile):
    out = _run(make_augment(PROFILES[profile], seed=3))
    for o in out:
        for k in ("image", "lung", "infection"):
            assert o[k].shape == (1, S, S) and o[k].dtype == torch.float32
            assert type(o[k]) is torch.Tensor
        for k in ("lung", "infection"):
            assert set(torch.unique(o[k]).tolist()) <= {0.0, 1.0}
        assert float((o["infection"] * (1 - o["lung"])).sum()) == 0  # same geometry
        assert float(o["image"].min()) >= 0 and float(o["image"].max()) <= 1
        assert (o["case"], o["index"]) == ("c", 3)
    # the lung area varies: the slices are re-framed
    assert len({int(o["lung"].sum()) for o in out}) > 3
    again = _run(make_augment(PROFILES[profile], seed=3))
    keys = ("image", "lung", "infection")
    assert all(torch.equal(a[k], b[k]) for a, b in zip(out, again, strict=True) for k in keys)
    other = _run(make_augment(PROFILES[profile], seed=4))
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(out, other, strict=True))


def test_crop_lungs_fills_the_frame_with_the_lungs():
    aug = make_augment(AugmentConfig(**OFF, crop_lungs_prob=1.0), seed=0)
    for seed in range(4):
        s = _sample((24, 40, 22, 42), seed=seed)  # lungs in a small central box
        o = aug(s)
        r0, r1, c0, c1 = _box(o["lung"])
        assert (r1 - r0) >= 0.7 * S and (c1 - c0) >= 0.7 * S
        assert float((o["infection"] * (1 - o["lung"])).sum()) == 0
    empty = _sample()
    empty["lung"] = torch.zeros(1, S, S)
    empty["infection"] = torch.zeros(1, S, S)
    assert torch.equal(aug(empty)["image"], empty["image"])  # no lungs: no crop


def test_robust_lungs_profile_frames_most_slices_at_the_lungs():
    """``robust_lungs`` shows the lungs filling the frame (as a look at their box does) in many
    more slices than ``robust``, and differs from it in nothing else."""

    def filled(profile: str) -> float:
        aug = make_augment(PROFILES[profile], seed=0)
        boxes = [_box(aug(_sample((24, 40, 22, 42), seed=i))["lung"]) for i in range(60)]
        return sum((r1 - r0) >= 0.7 * S and (c1 - c0) >= 0.7 * S for r0, r1, c0, c1 in boxes) / 60

    assert filled("robust_lungs") >= filled("robust") + 0.25
    assert dataclasses.replace(PROFILES["robust_lungs"], crop_lungs_prob=0.25) == PROFILES["robust"]


def test_every_augmentation_setting_has_a_profile():
    from covseg.config import AUGMENTATIONS

    assert tuple(PROFILES) == AUGMENTATIONS


def test_zoom_out_shrinks_and_pads_with_air():
    aug = make_augment(AugmentConfig(**OFF, zoom_range=(0.5, 0.5)), seed=1)
    s = _sample()
    o = aug(s)
    assert float(o["lung"].sum()) == pytest.approx(float(s["lung"].sum()) / 4, rel=0.05)
    air = o["image"][0] == s["image"].min()
    assert int(air.all(dim=1).sum()) >= S // 2 - 1  # whole rows of padding
    assert int(air.all(dim=0).sum()) >= S // 2 - 1  # and whole columns


def test_zoom_in_keeps_an_off_centre_lung():
    aug = make_augment(AugmentConfig(**OFF, zoom_range=(2.0, 2.0)), seed=2)
    for seed in range(3):
        s = _sample((4, 32, 2, 26), seed=seed)  # a lung in the top-left corner
        o = aug(s)
        assert float(o["lung"].sum()) >= 0.95 * 4 * float(s["lung"].sum())


def test_vflip_flips_up_down():
    aug = make_augment(AugmentConfig(**OFF, vflip=True), seed=0)
    s = _sample((4, 30, 8, 56))
    o = aug(s)
    for k in ("image", "lung", "infection"):
        assert torch.equal(o[k], torch.flip(s[k], dims=[1]))


@pytest.mark.parametrize(
    "change",
    [
        {"window_prob": 1.0},
        {"gamma_range": (0.6, 1.7)},
        {"clahe_prob": 1.0},
        {"minmax_prob": 1.0},
        {"noise_std": 0.05},
        {"blur_sigma": 1.0},
        {"jpeg_prob": 1.0},
    ],
)
def test_intensity_changes_touch_the_image_only(change):
    aug = make_augment(AugmentConfig(**OFF, **change), seed=0)
    changed = 0
    for i in range(10):  # noise and blur come with probability 0.2
        s = _sample(seed=i)
        o = aug(s)
        assert torch.equal(o["lung"], s["lung"]) and torch.equal(o["infection"], s["infection"])
        assert float(o["image"].min()) >= 0 and float(o["image"].max()) <= 1
        changed += not torch.allclose(o["image"], s["image"], atol=1e-3)
    assert changed > 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="zoom_range"):
        AugmentConfig(zoom_range=(0.0, 2.0))
    with pytest.raises(ValueError, match="window_prob"):
        AugmentConfig(window_prob=1.5)


def test_clahe_first_equalises_the_picture_before_it_is_framed():
    """``clahe_first``: the CLAHE step sees the whole picture (as a picture's producer
    equalised it), and the framing then zooms the equalised picture; without it, the framed
    picture is equalised (other tiles, other contrast)."""
    zoom = {**OFF, "zoom_range": (0.5, 0.5)}
    s = _sample()
    equalised = make_augment(AugmentConfig(**OFF, clahe_prob=1.0), seed=0)(s)
    want = make_augment(AugmentConfig(**zoom), seed=0)({**s, "image": equalised["image"]})
    first = make_augment(AugmentConfig(**zoom, clahe_prob=1.0, clahe_first=True), seed=0)(s)
    last = make_augment(AugmentConfig(**zoom, clahe_prob=1.0), seed=0)(s)
    torch.testing.assert_close(first["image"], want["image"])
    assert torch.equal(first["lung"], want["lung"])
    assert not torch.allclose(last["image"], want["image"], atol=1e-2)
    assert (
        dataclasses.replace(PROFILES["robust_clahe_first"], clahe_first=False) == PROFILES["robust"]
    )
