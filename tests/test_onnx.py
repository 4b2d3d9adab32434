"""ONNX export: onnxruntime gives the torch model's three heads, for any batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from covseg.checkpoint import load_checkpoint
from covseg.cli import main
from covseg.config import to_dict
from segment_tiny import SIZE, save_tiny_checkpoint

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def test_onnx_matches_torch(tmp_path, capsys):
    torch.set_num_threads(1)
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "model.onnx"
    assert main(["export-onnx", "--checkpoint", str(ckpt), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "tiny.json",
        "tiny.safetensors",
    ]

    model, meta = load_checkpoint(ckpt)
    x = np.random.default_rng(0).random((3, 1, SIZE, SIZE), dtype=np.float32)  # batch 3 != 2
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {"image": x}), strict=True)
    )
    assert sorted(got) == ["infection", "infection_aux", "lung"]
    for name in got:
        expected = getattr(ref, name).numpy()
        assert got[name].shape == expected.shape == (3, 1, SIZE, SIZE)
        assert np.abs(got[name] - expected).max() < 1e-3, name

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["sha256"] == meta.sha256
    assert json.loads(props["postprocessing"]) == to_dict(meta.postprocessing)
    assert json.loads(props["preprocessing"])["size"] == SIZE


def test_export_refuses_a_tampered_checkpoint(tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    ckpt.write_bytes(ckpt.read_bytes()[:-1] + b"\0")
    assert main(["export-onnx", "--checkpoint", str(ckpt), str(tmp_path / "m.onnx")]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_onnxruntime_predictor_runs_every_side_it_is_called_with(tmp_path):
    """Lung framing calls the network at two sides (the scout's and the look's); the
    onnxruntime backend, whose graphs have a fixed side, must give torch's heads at both."""
    from covseg.inference.predict import Predictor

    torch.set_num_threads(1)
    model, _ = load_checkpoint(save_tiny_checkpoint(tmp_path / "tiny.safetensors"))
    onnx_run = Predictor(model, device="cpu", backend="onnxruntime", size=SIZE)
    torch_run = Predictor(model, device="cpu")
    rng = np.random.default_rng(1)
    for side in (SIZE, 2 * SIZE, SIZE):
        x = rng.random((3, side, side), dtype=np.float32)
        got, ref = onnx_run(x), torch_run(x)
        assert got.infection.shape == (3, side, side)
        np.testing.assert_allclose(got.infection, ref.infection, atol=1e-4)
        np.testing.assert_allclose(got.lung, ref.lung, atol=1e-4)
