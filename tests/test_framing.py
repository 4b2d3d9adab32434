"""Lung framing (covseg.inference.framing): a scout finds the lungs, the look is at their crop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from covseg.checkpoint import load_checkpoint
from covseg.config import Preprocessing
from covseg.data.preprocess import resize_back, resize_slices
from covseg.errors import DataError
from covseg.inference.framing import MIN_SCALE, crop_box, framed_probabilities, lung_boxes
from covseg.inference.predict import Probabilities
from covseg.inference.segmenter import Segmenter

S = 64


class BlobNet:
    """A stand-in network that sees what a real one sees: lungs are the bright-ish pixels
    (> 0.2); infection is the brightest pixels (> 0.8), but only in 4-connected blobs of at
    least ``min_px`` pixels *of its input*: a lesion shown small is missed."""

    def __init__(self, min_px: int = 12, min_lung_px: int = 0) -> None:
        self.min_px, self.min_lung_px = min_px, min_lung_px
        self.inputs: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> Probabilities:
        self.inputs.append(x.copy())
        lung = (x > 0.2).astype(np.float32)
        if self.min_lung_px:  # lungs shown smaller than this are missed too
            for i, sl in enumerate(x > 0.2):
                lab, n = ndi.label(sl)
                sizes = ndi.sum(sl, lab, range(1, n + 1))
                lung[i] = np.isin(lab, 1 + np.flatnonzero(sizes >= self.min_lung_px))
        inf = np.zeros_like(x)
        for i, sl in enumerate(x > 0.8):
            lab, n = ndi.label(sl)
            sizes = ndi.sum(sl, lab, range(1, n + 1))
            keep = np.isin(lab, 1 + np.flatnonzero(sizes >= self.min_px))
            inf[i] = keep
        return Probabilities(lung, inf)


def slice_with_lungs(h: int, w: int, scale: float) -> np.ndarray:
    """A dark slice with two lungs (0.5) and one lesion (1.0) in the right lung, the whole
    drawing shrunk about the centre by ``scale``."""
    rr, cc = np.mgrid[0:h, 0:w]
    y, x = (rr - h / 2) / (scale * h), (cc - w / 2) / (scale * w)
    img = np.zeros((h, w), np.float32)
    for cx in (-0.2, 0.2):
        img[((x - cx) / 0.15) ** 2 + (y / 0.3) ** 2 < 1] = 0.5
    img[((x - 0.2) / 0.04) ** 2 + (y / 0.04) ** 2 < 1] = 1.0
    return img


def test_crop_box_floor_and_aspect():
    mask = np.zeros((1, 100, 200), bool)
    mask[0, 48:52, 98:102] = True  # a speck of lung
    r0, r1, c0, c1 = crop_box(mask, margin=0.08, min_scale=MIN_SCALE)
    assert (r1 - r0, c1 - c0) == (50, 100)  # at least half of each side, the slice's aspect
    assert r0 <= 48 and r1 >= 52 and c0 <= 98 and c1 >= 102
    # without the floor the box hugs the speck plus the margin: 8 % of the side per border
    r0, r1, c0, c1 = crop_box(mask, margin=0.08)
    assert r1 - r0 == 20 and c1 - c0 == 40
    assert crop_box(np.zeros((1, 100, 200), bool), min_scale=0.5) == (0, 100, 0, 200)


def test_lung_boxes_in_the_slices_own_pixels():
    lung = np.zeros((3, S, S), np.float32)
    lung[0, 20:40, 10:50] = 0.9  # lungs: a box
    lung[2] = 0.9  # lungs everywhere: the whole slice, no box
    boxes = lung_boxes(lung, (128, 256))
    assert boxes[1] is None and boxes[2] is None  # no lungs / the whole slice
    r0, r1, c0, c1 = boxes[0]
    # the box of the 64-grid scaled by 2 (rows) and 4 (columns) holds the lungs' extent
    assert r0 <= 40 and r1 >= 80 and c0 <= 40 and c1 >= 200
    assert 0 <= r0 < r1 <= 128 and 0 <= c0 < c1 <= 256
    assert abs((r1 - r0) / 128 - (c1 - c0) / 256) < 0.02  # the slice's aspect ratio


def test_full_framing_is_one_look_at_the_whole_slice():
    net = BlobNet()
    x = slice_with_lungs(96, 128, 0.9)[None]
    probs = framed_probabilities(net, x, S, "full")
    assert len(net.inputs) == 1
    expect = resize_back(net(resize_slices(x, S, mask=False)).infection, (96, 128), mask=False)
    np.testing.assert_array_equal(probs.infection, expect)
    assert probs.infection.shape == probs.lung.shape == (1, 96, 128)


def test_lungs_framing_finds_a_lesion_that_a_zoomed_out_frame_shows_too_small():
    """The user-level promise: a loosely framed scan (lungs small in the picture) gets the
    lesion that the whole-slice look misses, and a well framed one is left as it was."""
    small = slice_with_lungs(128, 128, 0.45)[None]  # lungs at less than half the frame
    full = framed_probabilities(BlobNet(), small, S, "full").infection > 0.5
    net = BlobNet()
    framed = framed_probabilities(net, small, S, "lungs").infection > 0.5
    assert not full.any()  # the lesion is 6 px at 64^2: under the network's 12
    truth = small > 0.8
    assert framed.any() and (framed & truth).sum() >= 0.5 * truth.sum()
    assert not (framed & ~ndi.binary_dilation(truth, iterations=3)).any()
    # the look was at the crop, magnified (about 2x) and lungs still inside
    assert len(net.inputs) == 2
    assert (net.inputs[1] > 0.2).mean() > 3 * (net.inputs[0] > 0.2).mean()
    # a slice framed about like the crop already: the lesion found either way, as well
    big = slice_with_lungs(128, 128, 1.0)[None]
    truth = big > 0.8
    for framing in ("full", "lungs"):
        pred = framed_probabilities(BlobNet(), big, S, framing).infection > 0.5
        assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.85, framing


def test_lungs_too_small_for_the_scout_get_a_look_at_their_box():
    """A frame so loose that the half-size scout misses the lungs: the whole-slice look finds
    them, and one more look at their box finds the lesion (as with a full-size first look)."""
    x = slice_with_lungs(128, 128, 0.45)[None]  # each lung about 115 px at 64^2, 29 at 32^2
    net = BlobNet(min_lung_px=60)
    framed = framed_probabilities(net, x, S, "lungs")
    assert [a.shape for a in net.inputs] == [(1, S // 2, S // 2), (1, S, S), (1, S, S)]
    assert (net.inputs[2] > 0.2).mean() > 3 * (net.inputs[1] > 0.2).mean()  # magnified
    truth = x > 0.8
    found = framed.infection > 0.5
    assert (found & truth).sum() >= 0.5 * truth.sum()
    assert (framed.lung > 0.5).sum() >= 0.8 * (x > 0.2).sum()
    # lungs the scout does see: no third look
    net = BlobNet(min_lung_px=60)
    framed_probabilities(net, slice_with_lungs(128, 128, 1.0)[None], S, "lungs")
    assert len(net.inputs) == 2

    class FillsTheScout(BlobNet):  # the scout sees lungs in the whole frame, the look does not
        def __call__(self, x: np.ndarray) -> Probabilities:
            probs = super().__call__(x)
            if x.shape[-1] < S:
                probs.lung[...] = 1.0  # type: ignore[index]
            return probs

    # a scout that takes the whole frame for lung (an equalised picture at 128^2 can fool it):
    # the whole-slice look finds the real lungs, and the lesion is looked at in their box
    net = FillsTheScout()
    x = slice_with_lungs(128, 128, 0.45)[None]
    found = framed_probabilities(net, x, S, "lungs").infection > 0.5
    assert [a.shape[-1] for a in net.inputs] == [S // 2, S, S]
    assert (found & (x > 0.8)).sum() >= 0.5 * (x > 0.8).sum()


def test_lungs_framing_is_per_slice_and_skips_slices_without_lungs():
    x = np.stack([slice_with_lungs(80, 80, s) for s in (0.45, 0.7)] + [np.zeros((80, 80))])
    x = x.astype(np.float32)
    together = framed_probabilities(BlobNet(), x, S, "lungs")
    for i in range(3):
        alone = framed_probabilities(BlobNet(), x[i : i + 1], S, "lungs")
        np.testing.assert_allclose(alone.infection[0], together.infection[i], atol=1e-6)
        np.testing.assert_allclose(alone.lung[0], together.lung[i], atol=1e-6)
    net = BlobNet()
    framed_probabilities(net, x, S, "lungs")
    # a scout at half the side (a quarter of the pixels), then one full-size look per slice
    assert [a.shape for a in net.inputs] == [(3, S // 2, S // 2), (3, S, S)]
    # the slice without lungs: its look is at the whole slice, exactly as with "full"
    full = framed_probabilities(BlobNet(), x, S, "full")
    np.testing.assert_array_equal(together.infection[2], full.infection[2])
    np.testing.assert_array_equal(together.lung[2], full.lung[2])


def test_models_without_a_lung_head_and_bad_framings():
    def no_lungs(x: np.ndarray) -> Probabilities:
        return Probabilities(None, np.full_like(x, x.shape[-1] / 100))  # tells the input side

    out = framed_probabilities(no_lungs, np.zeros((2, 40, 50), np.float32), S, "lungs")
    assert out.lung is None and out.infection.shape == (2, 40, 50)
    np.testing.assert_allclose(out.infection, S / 100, rtol=1e-6)  # the full-size look's

    class Counted:
        has_lung_head = False
        calls = 0

        def __call__(self, x: np.ndarray) -> Probabilities:
            self.calls += 1
            return no_lungs(x)

    net = Counted()
    framed_probabilities(net, np.zeros((2, 40, 50), np.float32), S, "lungs")
    assert net.calls == 1  # a predictor known to have no lung head: no scout
    with pytest.raises(ValueError, match="framing"):
        framed_probabilities(no_lungs, np.zeros((1, 8, 8), np.float32), S, "crop")


def test_framing_is_stored_in_the_checkpoint_and_overridable(checkpoint, tmp_path):
    from covseg.checkpoint import save_checkpoint

    assert Preprocessing.from_record({"size": 64}).framing == "full"  # checkpoints made before
    pre = Preprocessing(size=64, framing="lungs")
    assert Preprocessing.from_record(pre.to_record()) == pre
    with pytest.raises(ValueError, match="framing"):
        Preprocessing(framing="zoom")
    model, meta = load_checkpoint(checkpoint)
    assert Segmenter(model, meta, device="cpu").framing == meta.preprocessing.framing == "full"
    lungs = meta.replace(preprocessing=Preprocessing(size=meta.preprocessing.size, framing="lungs"))
    save_checkpoint(tmp_path / "lungs.safetensors", model, lungs)
    seg = Segmenter.from_checkpoint(tmp_path / "lungs.safetensors", device="cpu")
    assert seg.framing == "lungs"
    assert Segmenter(model, lungs, device="cpu", framing="full").framing == "full"
    with pytest.raises(DataError, match="framing"):
        Segmenter(model, meta, device="cpu", framing="zoom")


def test_segment_and_prepared_paths_share_the_framing(checkpoint):
    """`segment` (raw slices) and `evaluate`/training on prepared slices compute the same
    probabilities of the same normalised slices, with either framing."""
    model, meta = load_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    x = np.stack([slice_with_lungs(meta.preprocessing.size, meta.preprocessing.size, 0.5)] * 2)
    x = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1).astype(np.float32)
    for framing in ("full", "lungs"):
        seg = Segmenter(model, meta, device="cpu", framing=framing)
        raw = (x * 255).round().astype(np.uint8)
        lung = np.zeros(raw.shape, np.uint8)
        inf = np.zeros(raw.shape, np.uint8)
        seg.segment_slices(raw, lung, inf, rule="uint8")
        masks = seg.segment_prepared(raw.astype(np.float32) / 255)
        np.testing.assert_array_equal(inf, masks.infection)


def test_the_report_says_which_framing_made_the_masks(checkpoint):
    model, meta = load_checkpoint(checkpoint)
    vol = (slice_with_lungs(96, 80, 0.5) * 255).astype(np.uint8)
    for framing in ("full", "lungs"):
        seg = Segmenter(model, meta, device="cpu", framing=framing)
        result = seg.predict_volume(vol)
        assert result.report.to_dict()["framing"] == framing
        assert result.infection.shape == result.lungs.shape == vol.shape
