"""Ensembles: the mean of the members' probabilities, one checkpoint that every path takes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _train_helpers import FAST, TINY, prepared_phantoms, tiny_checkpoint
from covseg.checkpoint import (
    CALIBRATED_FORMAT,
    ENSEMBLE_FORMAT,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from covseg.cli import main
from covseg.config import Preprocessing
from covseg.errors import CheckpointError, DataError
from covseg.inference.segmenter import Segmenter
from covseg.meta import CheckpointMeta
from covseg.models import build_model
from covseg.models.ensemble import Ensemble
from covseg.training.ensemble import ensemble
from covseg.training.loop import train

#: A second architecture (other widths): ensembles may mix presets.
WIDE = TINY.replace(
    encoder_channels=(8, 16, 32, 32, 48), infection_decoder_channels=(8, 16, 16, 24, 32)
)


def _pair(tmp_path):
    a, _ = tiny_checkpoint(tmp_path / "a.safetensors")
    torch.manual_seed(1)
    b = save_checkpoint(
        tmp_path / "b.safetensors",
        build_model(WIDE).eval(),
        CheckpointMeta(model_config=WIDE, preprocessing=Preprocessing(size=32)),
    )
    return a, b


def test_the_ensemble_is_the_mean_of_the_probabilities():
    torch.manual_seed(0)
    members = [build_model(TINY).eval(), build_model(WIDE).eval()]
    ens = Ensemble(members).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        outs = [m(x) for m in members]
        got = ens(x)
    for head in ("lung", "infection_aux", "infection"):
        want = torch.stack([torch.sigmoid(getattr(o, head)) for o in outs]).mean(0)
        torch.testing.assert_close(torch.sigmoid(getattr(got, head)), want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="at least two"):
        Ensemble(members[:1])
    with pytest.raises(ValueError, match="one kind"):
        Ensemble([members[0], build_model(TINY.replace(model="unet"))])


def test_an_ensemble_checkpoint_round_trips_and_segments(tmp_path):
    a, b = _pair(tmp_path)
    meta = ensemble([a, b], tmp_path / "ens.safetensors")
    on_disk = json.loads((tmp_path / "ens.json").read_text())
    assert on_disk["format"] == ENSEMBLE_FORMAT and len(on_disk["ensemble"]) == 2
    assert "not chosen" in on_disk["postprocessing_source"]
    assert [m["sha256"] for m in on_disk["metrics"]["members"]] == [
        read_meta(a).sha256,
        read_meta(b).sha256,
    ]
    model, loaded = load_checkpoint(tmp_path / "ens.safetensors")
    assert isinstance(model, Ensemble) and loaded.members == (TINY, WIDE) == meta.members
    # the same masks as the ensemble built in memory from the members
    ref = Ensemble([load_checkpoint(a)[0], load_checkpoint(b)[0]])
    hu = np.random.default_rng(0).uniform(-1000, 200, (3, 40, 40)).astype(np.float32)
    got = Segmenter(model, loaded, device="cpu").predict_volume(hu)
    want = Segmenter(ref, loaded, device="cpu").predict_volume(hu)
    assert got.lungs.any() and got.infection.any()
    np.testing.assert_array_equal(got.infection, want.infection)
    np.testing.assert_array_equal(got.lungs, want.lungs)


def test_an_ensemble_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from covseg.inference.export import export_onnx

    a, b = _pair(tmp_path)
    ensemble([a, b], tmp_path / "ens.safetensors")
    onnx_path = export_onnx(tmp_path / "ens.safetensors", tmp_path / "ens.onnx")
    model, _ = load_checkpoint(tmp_path / "ens.safetensors")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        want = model(x)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    lung, aux, inf = sess.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(inf, want.infection.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(lung, want.lung.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(aux, want.infection_aux.numpy(), atol=1e-3, rtol=1e-3)


def test_ensemble_json_is_checked(tmp_path):
    a, b = _pair(tmp_path)
    ensemble([a, b], tmp_path / "ens.safetensors")
    side = tmp_path / "ens.json"
    record = json.loads(side.read_text())
    one = {**record, "ensemble": record["ensemble"][:1]}
    side.write_text(json.dumps(one))
    with pytest.raises(CheckpointError, match="ensemble"):
        read_meta(side)
    swapped = {**record, "ensemble": record["ensemble"][::-1]}
    side.write_text(json.dumps(swapped))
    with pytest.raises(CheckpointError, match="first member"):
        read_meta(side)
    # a reader that knows only format 2 is told what to upgrade to
    newer = {**record, "format": CALIBRATED_FORMAT + 1, "requires_covseg": "9.0"}
    side.write_text(json.dumps(newer))
    with pytest.raises(CheckpointError, match=r"needs covseg >= 9\.0"):
        read_meta(side)


def test_bad_members_are_refused_and_nothing_is_written(tmp_path):
    a, b = _pair(tmp_path)
    out = tmp_path / "ens.safetensors"
    with pytest.raises(CheckpointError, match="at least two"):
        ensemble([a], out)
    with pytest.raises(CheckpointError, match="is one of the members"):
        ensemble([a, b], a)
    with pytest.raises(CheckpointError, match="given twice"):
        ensemble([a, b, a.with_suffix(".json")], out)
    big = save_checkpoint(
        tmp_path / "big.safetensors",
        build_model(TINY),
        CheckpointMeta(model_config=TINY, preprocessing=Preprocessing(size=64)),
    )
    with pytest.raises(CheckpointError, match="size is 64"):
        ensemble([a, big], out)
    ensemble([a, b], tmp_path / "e1.safetensors")
    with pytest.raises(CheckpointError, match="already an ensemble"):
        ensemble([a, tmp_path / "e1.safetensors"], out)
    # members without a recorded training run cannot have their post-processing chosen
    with pytest.raises(DataError, match="no recorded training run"):
        ensemble([a, b], out, data_root=tmp_path)
    assert not list(tmp_path.glob("ens*"))


def test_cli_ensemble_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    a, _ = _pair(tmp_path)
    out = tmp_path / "ens.safetensors"
    assert main(["ensemble", str(a), str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.safetensors: no such checkpoint" in err
    assert main(["ensemble", str(a), str(a), "--out", str(tmp_path / "e.onnx")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "e.onnx").exists()


@pytest.mark.slow
def test_ensemble_of_two_runs_chooses_its_post_processing_on_their_validation(tmp_path, capsys):
    data = prepared_phantoms(tmp_path, cases=4, slices=6, size=32)
    cfg = FAST.replace(epochs=3, batch_size=4, lr=5e-3, fold=0, folds=4)
    ra = train(TINY, cfg, data, tmp_path / "cv" / "a")
    rb = train(WIDE, cfg.replace(epochs=2), data, tmp_path / "cv" / "b")
    out = tmp_path / "ens.safetensors"
    argv = ["ensemble", str(ra / "best.safetensors"), str(rb / "best.safetensors")]
    assert main([*argv, "--out", str(out), "--data", str(data), "--framing", "lungs"]) == 0
    assert "2 members, framing lungs" in capsys.readouterr().out
    meta = read_meta(out)
    a = read_meta(ra / "best.safetensors")
    assert meta.postprocessing_source == a.postprocessing_source  # "chosen on N validation slices"
    assert 0 <= meta.metrics["val_dice_postprocessed"] <= 1
    assert meta.preprocessing.framing == "lungs" and meta.data.test_cases == a.data.test_cases
    # a member trained with another validation split is refused
    rc = train(TINY, cfg.replace(epochs=1, seed=7), data, tmp_path / "cv" / "c")
    with pytest.raises(DataError, match="validation split seed"):
        ensemble([ra / "best.safetensors", rc / "best.safetensors"], out, data_root=data)
    # ... and so is one trained on other cases (another fold)
    rd = train(TINY, cfg.replace(epochs=1, fold=1), data, tmp_path / "cv" / "d")
    with pytest.raises(DataError, match="other cases"):
        ensemble([ra / "best.safetensors", rd / "best.safetensors"], out, data_root=data)
