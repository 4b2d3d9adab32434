"""Training and cross-validating on several prepared datasets at once (``--data A B``):
combined case ids, folds stratified by dataset, balanced sampling, per-head loss weights, and
Table 2 per dataset."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from _train_helpers import FAST
from covseg.cli import main
from covseg.data.dataset import CombinedDataset, PreparedDataset, open_prepared
from covseg.data.prepare import prepare
from covseg.data.splits import make_folds
from covseg.data.synthetic import write_synthetic_dataset
from covseg.errors import DataError
from covseg.models import SegOutput
from covseg.training.epoch import draw_items, head_weights
from covseg.training.losses import BifurcatedLoss, soft_dice_loss


def _hand_made(root, n_cases, n_slices=2, size=16, lung_mask="expert", prefix="p"):
    (root / "cases").mkdir(parents=True)
    cases = []
    for i in range(n_cases):
        cid = f"{prefix}{i}"
        lung = np.zeros((n_slices, size, size), np.uint8)
        lung[:, 4:12, 2:14] = 1
        np.savez_compressed(
            root / "cases" / f"{cid}.npz",
            image=np.full(lung.shape, i / 10, np.float16),
            lung=lung,
            infection=lung * 0,
        )
        cases.append(
            {"id": cid, "file": f"cases/{cid}.npz", "n_slices": n_slices, "lung_mask": lung_mask}
        )
    manifest = {"format": 1, "params": {"size": size, "rotate": 0}, "cases": cases}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_combined_dataset_prefixes_ids_and_reads_each_part(tmp_path):
    a = _hand_made(tmp_path / "alpha", 3)
    b = _hand_made(tmp_path / "beta", 2, n_slices=4, lung_mask="derived")
    data = open_prepared([a, b])
    assert isinstance(data, CombinedDataset)
    assert data.case_ids == ["alpha/p0", "alpha/p1", "alpha/p2", "beta/p0", "beta/p1"]
    assert data.sources()["beta/p1"] == "beta"
    # the same local id in two parts reads each part's own arrays
    assert float(data.load("alpha/p1")["image"][0, 0, 0]) == pytest.approx(0.1, abs=1e-3)
    assert data.load("beta/p1")["image"].shape == (4, 16, 16)
    assert len(data.items(["beta/p0"])) == 4
    assert data.resolve("beta/p1")[2] == "p1"
    assert data.manifest["params"]["size"] == 16
    assert isinstance(open_prepared([a]), PreparedDataset)
    with pytest.raises(DataError, match="no case"):
        data.case("gamma/p0")


def test_combined_dataset_refuses_same_names_and_sizes(tmp_path):
    a = _hand_made(tmp_path / "x" / "data", 2)
    b = _hand_made(tmp_path / "y" / "data", 2)
    with pytest.raises(DataError, match="named alike"):
        CombinedDataset([a, b])
    c = _hand_made(tmp_path / "big", 2, size=32)
    with pytest.raises(DataError, match="different sizes"):
        CombinedDataset([a, c])


def test_stratified_folds_share_every_source():
    ids = [f"big/c{i}" for i in range(20)] + [f"small/d{i}" for i in range(5)]
    strata = {c: c.split("/")[0] for c in ids}
    folds = make_folds(ids, 5, seed=1, strata=strata)
    for f in folds:
        per = Counter(strata[c] for c in f["test"])
        assert per == {"big": 4, "small": 1}
    assert sorted(c for f in folds for c in f["test"]) == sorted(ids)
    # one stratum: exactly the unstratified folds (splits of earlier runs stay valid)
    plain = [f"c{i}" for i in range(11)]
    assert make_folds(plain, 5, 3, dict.fromkeys(plain, "s")) == make_folds(plain, 5, 3)


def test_uneven_strata_keep_fold_sizes_within_one():
    ids = [f"a/{i}" for i in range(7)] + [f"b/{i}" for i in range(6)]
    folds = make_folds(ids, 5, seed=0, strata={c: c[0] for c in ids})
    sizes = [len(f["test"]) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_source_sampling_gives_each_dataset_an_equal_share(tmp_path):
    a = _hand_made(tmp_path / "alpha", 20, n_slices=5)  # 100 slices
    b = _hand_made(tmp_path / "beta", 2, n_slices=5)  # 10 slices
    data = CombinedDataset([a, b])
    items = data.items(data.case_ids)
    assert draw_items(data, items, "slices", 0) == items
    drawn = draw_items(data, items, "sources", 0)
    assert len(drawn) == len(items)
    share = Counter(c.split("/")[0] for c, _ in drawn)
    assert 40 <= share["beta"] <= 70  # about half, not 10 of 110
    assert drawn == draw_items(data, items, "sources", 0)
    assert drawn != draw_items(data, items, "sources", 1)
    single = PreparedDataset(a)
    one = single.items(single.case_ids)
    assert draw_items(single, one, "sources", 0) == one


def test_head_weights_follow_the_lung_mask_kind(tmp_path):
    a = _hand_made(tmp_path / "alpha", 1)
    b = _hand_made(tmp_path / "beta", 1, lung_mask="derived")
    data = CombinedDataset([a, b])
    cfg = FAST.replace(derived_lung_weight=0.25)
    assert head_weights(data, "alpha/p0", cfg) == (1.0, 1.0)
    assert head_weights(data, "beta/p0", cfg) == (1.0, 0.25)
    assert head_weights(data, "beta/p0", cfg, weight=0.5) == (0.5, 0.125)  # pseudo-labelled


def test_per_sample_weights_in_the_loss():
    torch.manual_seed(0)
    out = SegOutput(*(torch.randn(2, 1, 4, 4) for _ in range(3)))
    lung = (torch.rand(2, 1, 4, 4) > 0.5).float()
    inf = (torch.rand(2, 1, 4, 4) > 0.5).float()
    loss = BifurcatedLoss(dice=1.0)
    ones = torch.ones(2)
    plain = loss(out, lung, inf)
    same = loss(out, lung, inf, ones, ones)
    assert same.total.item() == pytest.approx(plain.total.item(), rel=1e-6)
    # a lung weight of 0 for every sample: the lung head adds nothing
    no_lung = loss(out, lung, inf, ones, torch.zeros(2))
    without = BifurcatedLoss(w_lung=0, dice=1.0)(out, lung, inf)
    assert no_lung.total.item() == pytest.approx(without.total.item(), rel=1e-6)
    # weight 0 on the second sample: its BCE terms vanish (the first sample's count half)
    first = SegOutput(*(t[:1] for t in out))
    only = BifurcatedLoss(w_lung=0.5, w_aux=0, w_final=1)
    w = torch.tensor([1.0, 0.0])
    got = only(out, lung, inf, w, w).total.item()
    assert got == pytest.approx(0.5 * only(first, lung[:1], inf[:1]).total.item(), rel=1e-6)
    # the weighted soft Dice: all-zero weights give 0, all ones the unweighted term
    assert soft_dice_loss(out.infection, inf, weight=torch.zeros(2)).item() == 0
    assert soft_dice_loss(out.infection, inf, weight=ones).item() == pytest.approx(
        soft_dice_loss(out.infection, inf).item(), rel=1e-6
    )


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    out = []
    for name, cases, seed in (("vol", 3, 0), ("pics", 2, 5)):
        raw = write_synthetic_dataset(
            root / f"raw_{name}", "zenodo20", cases, seed=seed, slices=4, size=32
        )
        out.append(prepare(raw, root / name, size=32))
    return out


def test_cv_over_two_datasets_reports_each(two_sources, tmp_path, capsys):
    a, b = two_sources
    cv = tmp_path / "cv"
    args = ["cv", "--data", str(a), str(b), "--out", str(cv), "--folds", "2", "--repeats", "1"]
    args += ["--preset", "small", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    args += ["--sampling", "sources", "--derived-lung-weight", "0.5", "--no-augment"]
    args += ["--robustness", "--augmentation", "robust", "--framing", "lungs"]
    # the tiny phantoms train the small preset in seconds at 32 px
    assert main([*args, "--patience", "0"]) == 0
    folds = json.loads((cv / "splits.json").read_text())["folds"]
    for f in folds:
        assert {c.split("/")[0] for c in f["test"]} == {"vol", "pics"}
    metrics = json.loads((cv / "fold0_rep0" / "test_metrics.json").read_text())
    assert set(metrics["cases"]) == set(folds[0]["test"])  # combined ids, this fold only
    meta = json.loads((cv / "fold0_rep0" / "last.json").read_text())
    assert " + " in meta["data"]["root"]
    assert meta["train_config"]["sampling"] == "sources"
    assert meta["preprocessing"]["framing"] == "lungs"  # validated so, and segment frames so
    assert main(["report", str(cv), "--no-panels"]) == 0
    report = json.loads((cv / "report.json").read_text())
    assert set(report["sources"]) == {"vol", "pics"}
    md = (cv / "report.md").read_text()
    assert "## Dataset vol" in md and "## Dataset pics" in md
    assert "### Robustness (pics)" in md
    rob = report["sources"]["pics"]["robustness"]["rows"]
    assert rob["plain"]["mean"] == pytest.approx(
        report["sources"]["pics"]["tables"]["per_slice_mean"]["rows"]["dice"]["mean"]
    )
    rows = (cv / "report.csv").read_text().splitlines()
    assert any(r.startswith("pics:per_slice_mean,dice,") for r in rows)
    assert any(r.startswith("vol:robustness:clahe,dice,") for r in rows)
    # each dataset's table is computed from its own slices only
    from covseg.evaluation.report import load_runs

    runs = load_runs(cv)
    own = runs[0][0].subset("pics").aggregate("per_slice_mean")["dice"]
    assert report["sources"]["pics"]["tables"]["per_slice_mean"]["rows"]["dice"]["folds"][
        0
    ] == pytest.approx(own)
    # rerunning with the datasets in another order is another data key: refused, not mixed
    capsys.readouterr()
    other = ["cv", "--data", str(b), str(a), *args[4:]]
    assert main([*other, "--patience", "0"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_loader_workers_draw_their_own_augmentation(tmp_path):
    import torch.utils.data

    from covseg.training.distributed import ProcessGroup
    from covseg.training.epoch import make_loader

    data = PreparedDataset(_hand_made(tmp_path / "same", 1, n_slices=8, size=32))
    for c in data.case_ids:  # every slice the same picture: only the augmentation differs
        data.load(c)["image"][:] = np.linspace(0, 1, 32, dtype=np.float16)[None, None, :]
    cfg = FAST.replace(augment=True, augmentation="robust", workers=2, batch_size=4)
    cpu = torch.device("cpu")
    loader = make_loader(data, data.items(data.case_ids), None, cfg, 7, 0, ProcessGroup(cpu), cpu)
    first, second = (b["image"] for b in loader)  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(first, second)
