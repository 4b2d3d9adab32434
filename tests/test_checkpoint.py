"""Checkpoints: round trip, hash and version checks, train state without pickle."""

from __future__ import annotations

import json

import pytest
import torch

from _train_helpers import TINY
from covseg.checkpoint import (
    CALIBRATED_FORMAT,
    FORMAT,
    load_checkpoint,
    load_train_state,
    pretrained_path,
    save_checkpoint,
    save_train_state,
)
from covseg.errors import CheckpointError
from covseg.meta import CheckpointMeta
from covseg.models import build_model


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    path = save_checkpoint(tmp_path / "best.safetensors", model, CheckpointMeta(model_config=TINY))
    return model, path


def test_round_trip_rebuilds_the_same_network(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path)
    x = torch.rand(2, 1, 33, 47)
    with torch.inference_mode():
        assert torch.equal(model(x).infection, loaded(x).infection)
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["format"] == FORMAT and on_disk["postprocessing"]["threshold"] == 0.5
    assert meta.model_config == TINY and meta.postprocessing.threshold == 0.5
    assert meta.sha256 == on_disk["sha256"] and not loaded.training
    # the JSON path and the stem work too
    load_checkpoint(path.with_suffix(".json"))
    load_checkpoint(path.with_suffix(""))


def test_modified_weights_are_refused(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the recorded sha256"):
        load_checkpoint(path)


def test_edited_json_is_refused(saved):
    _, path = saved
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["sha256"] = "0" * 64
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"best\.safetensors: weights do not match"):
        load_checkpoint(path)


def test_edited_model_config_is_refused(saved):
    _, path = saved
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["model_config"]["encoder_channels"] = [9, 16, 24, 32, 48]
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit the model config"):
        load_checkpoint(path)


def test_future_format_names_the_version_needed(saved):
    _, path = saved
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta.update(format=CALIBRATED_FORMAT + 1, requires_covseg="9.1.0")
    side.write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"best\.json: checkpoint format 5 needs covseg >= 9\.1\.0"
    ):
        load_checkpoint(path)


def test_missing_sidecar_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.safetensors: no such checkpoint"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    (tmp_path / "half.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"half\.json: missing"):
        load_checkpoint(tmp_path / "half.safetensors")


def test_pretrained_absent_says_so(monkeypatch, tmp_path):
    import covseg.checkpoint as ck

    monkeypatch.setattr(ck, "__file__", str(tmp_path / "checkpoint.py"))
    with pytest.raises(CheckpointError, match="no pretrained model is shipped"):
        pretrained_path()


def test_train_state_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}, "n": 3}
    save_train_state(tmp_path / "s", state)
    back = load_train_state(tmp_path / "s")
    assert back["n"] == 3 and torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    st = {int(k): v for k, v in back["optimizer"]["state"].items()}
    assert torch.equal(st[0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert b"pickle" not in (tmp_path / "s.json").read_bytes()
