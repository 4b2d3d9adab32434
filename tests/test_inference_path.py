"""One inference path: the scores `evaluate` and `cv` publish are the scores of the masks that
`segment` writes, and the post-processing search scores exactly what `postprocess` produces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from covseg.checkpoint import save_checkpoint
from covseg.cli import main
from covseg.config import PostProcessing, Preprocessing
from covseg.data.geometry import volume_to_slices
from covseg.data.io import read_image
from covseg.data.prepare import prepare
from covseg.data.preprocess import normalize_intensity, resize_slices
from covseg.data.synthetic import make_phantom, write_synthetic_dataset
from covseg.evaluation.evaluate import evaluate
from covseg.evaluation.metrics import confusion, dice
from covseg.inference.postprocess import masks_from_probabilities, near_lungs
from covseg.meta import CheckpointMeta
from covseg.models import build_model
from covseg.training.selection import Item, select_postprocessing
from segment_tiny import SIZE, TINY


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random model whose head biases give some lung and more infection than lung, so
    that the lung restriction and the component filter both change the masks."""
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    hu = make_phantom(0, (SIZE, SIZE, 4))[0].transpose(2, 1, 0)
    x = torch.from_numpy(resize_slices(normalize_intensity(hu, "hu"), SIZE, mask=False))[:, None]
    with torch.no_grad():
        model.lung_head.bias -= torch.quantile(model(x).lung, 0.7)
        model.fusion.layers[-1].bias -= torch.quantile(model(x).infection, 0.6)
    meta = CheckpointMeta(
        model_config=TINY,
        preprocessing=Preprocessing(size=SIZE),
        postprocessing=PostProcessing(threshold=0.5, min_component=3, lung_margin_px=1),
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, meta)


def _mean_dice(preds: list[np.ndarray], truths: list[np.ndarray]) -> float:
    scores = [
        dice(*confusion(p[None], t[None], axes=(1, 2)))[0]
        for p, t in zip(preds, truths, strict=True)
    ]
    return float(np.mean(scores))


def test_segment_of_png_slices_scores_as_evaluate(ckpt, tmp_path):
    raw = write_synthetic_dataset(tmp_path / "raw", "slices", cases=2, slices=3, size=48)
    out = tmp_path / "out"
    assert main(["segment", str(raw / "images"), "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    preds, truths = [], []
    for img in sorted((raw / "images").glob("*.png")):
        preds.append(np.asarray(PILImage.open(out / f"{img.stem}_infection.png")) > 0)
        truths.append(np.asarray(PILImage.open(raw / "masks" / img.name)) > 0)
        # the restriction is active: infection never outside the written lungs
        lungs = np.asarray(PILImage.open(out / f"{img.stem}_lungs.png")) > 0
        assert not (preds[-1] & ~lungs).any()
    assert len(preds) == 6 and all(p.shape == (48, 48) for p in preds)
    result = evaluate(ckpt, raw, device="cpu")
    assert result["n_items"] == 6
    assert result["per_slice_mean"]["dice"] == pytest.approx(_mean_dice(preds, truths), abs=1e-6)


def test_segment_of_a_nifti_volume_scores_as_evaluate_of_its_prepared_form(ckpt, tmp_path):
    raw = write_synthetic_dataset(tmp_path / "raw", "zenodo20", cases=1, slices=5, size=40)
    scan = raw / "COVID-19-CT-Seg_20cases" / "coronacases_001.nii.gz"
    out = tmp_path / "out"
    assert main(["segment", str(scan), "--out", str(out), "--checkpoint", str(ckpt)]) == 0
    pred = volume_to_slices(read_image(out / "coronacases_001_infection.nii.gz")).astype(bool)
    truth = volume_to_slices(read_image(raw / "Infection_Mask" / "coronacases_001.nii.gz")) > 0
    prepared = prepare(raw, tmp_path / "prepared", size=SIZE)
    result = evaluate(ckpt, prepared, device="cpu")
    assert result["n_items"] == len(pred) == 5  # scored at the original 40 x 40, not 32 x 32
    expected = _mean_dice(list(pred), list(truth))
    assert result["per_slice_mean"]["dice"] == pytest.approx(expected, abs=1e-6)


def test_near_lungs_equals_a_disk_dilation():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    lung = rng.random((3, 41, 37)) > 0.97
    lung[2] = False
    for r in (1, 2, 5):
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        disk = (yy**2 + xx**2 <= r * r)[None]
        np.testing.assert_array_equal(near_lungs(lung, r), ndi.binary_dilation(lung, disk))
        where = rng.random(lung.shape) > 0.9
        np.testing.assert_array_equal(
            near_lungs(lung, r, where) & where, near_lungs(lung, r) & where
        )


def test_selection_scores_what_postprocess_makes():
    rng = np.random.default_rng(1)
    items = []
    for shape in ((4, 32, 32), (2, 48, 40)):  # two resolutions, model size 32
        truth = np.zeros(shape, bool)
        truth[:, 8:20, 6:18] = True
        inf = np.clip(truth * 0.6 + rng.random(shape) * 0.5, 0, 1).astype(np.float32)
        lung = np.zeros(shape, np.float32)
        lung[:, 4:26, 2:24] = 0.9
        items.append(Item(lung, inf, truth))
    sel = select_postprocessing(items, 32, min_components=(0, 4, 12), lung_margins=(2, 0, None))
    assert len(sel.scores) == 19 * 3 * 3 and sel.n_slices == 6
    for key in ("0.50/4/2", "0.30/0/none", "0.75/12/0", sel_key(sel)):
        t, mc, m = key.split("/")
        post = PostProcessing(float(t), int(mc), lung_margin_px=None if m == "none" else int(m))
        preds = [
            masks_from_probabilities(it.lung, it.infection, post, 32).infection for it in items
        ]
        scores = [
            dice(*confusion(p, it.truth, axes=(1, 2))) for p, it in zip(preds, items, strict=True)
        ]
        assert sel.scores[key] == pytest.approx(float(np.concatenate(scores).mean()), abs=1e-12)
    assert sel.dice == max(sel.scores.values())


def sel_key(sel) -> str:
    p = sel.postprocessing
    m = "none" if p.lung_margin_px is None else p.lung_margin_px
    return f"{p.threshold:.2f}/{p.min_component}/{m}"


def test_update_meta_after_an_interrupted_save_keeps_the_checkpoint_loadable(ckpt, tmp_path):
    """A save killed between writing the two-record JSON and renaming the weights: the JSON
    holds the new record and ``previous``; updating it must keep the record of the weights
    on disk (else the checkpoint is refused for good)."""
    import json
    import shutil

    from covseg.checkpoint import load_checkpoint, read_meta, update_meta

    dest = tmp_path / ckpt.name
    shutil.copy(ckpt, dest)
    shutil.copy(ckpt.with_suffix(".json"), dest.with_suffix(".json"))
    raw = json.loads(dest.with_suffix(".json").read_text())
    interrupted = {**raw, "sha256": "0" * 64, "epoch": 99, "previous": raw}
    dest.with_suffix(".json").write_text(json.dumps(interrupted))
    assert read_meta(dest).epoch == raw["epoch"]  # the on-disk weights' record, not epoch 99
    update_meta(dest, postprocessing=PostProcessing(threshold=0.3))
    _, meta = load_checkpoint(dest)
    assert meta.postprocessing.threshold == 0.3 and meta.sha256 == raw["sha256"]


def test_a_slice_wider_than_the_limit_is_refused_in_one_line(ckpt, tmp_path, capsys):
    from covseg.data.io import MAX_SIDE

    path = tmp_path / "wide.png"
    PILImage.fromarray(np.zeros((8, MAX_SIDE + 1), np.uint8)).save(path)
    out = tmp_path / "out"
    assert main(["segment", str(path), "--out", str(out), "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wide.png" in err[0] and f"{MAX_SIDE} px limit" in err[0]
    assert not out.exists() or not any(out.iterdir())
