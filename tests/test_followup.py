"""Follow-up of two scans: the report-level change (hand-computed numbers), masks brought onto
the first scan's grid by world coordinates whatever the second file's voxel order, and a rigid
registration that finds a known motion of the patient."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from covseg.data.synthetic import make_phantom
from covseg.errors import DataError
from covseg.followup import (
    compare_reports,
    mask_change,
    read_report,
    resample_onto,
    rigid_transform,
)


def _report(case: str, both, left, right, model="m1", threshold=0.5) -> dict:
    """A report's burden fields: (lung mL, infection mL, percent) per region."""
    fields = ("lung_volume_ml", "infection_volume_ml", "infection_percent")
    return {
        "case": case,
        "model_id": model,
        "threshold": threshold,
        **dict(zip(fields, both, strict=True)),
        "left": dict(zip(fields, left, strict=True)),
        "right": dict(zip(fields, right, strict=True)),
    }


def test_the_change_between_two_reports_region_by_region():
    before = _report(
        "jan", (4000.0, 800.0, 20.0), (1900.0, 300.0, 15.7895), (2100.0, 500.0, 23.8095)
    )
    after = _report("feb", (4100.0, 410.0, 10.0), (2000.0, 0.0, 0.0), (2100.0, 410.0, 19.5238))
    change = compare_reports(before, after)
    assert (change.before, change.after, change.notes) == ("jan", "feb", ())
    both, left, right = change.regions
    assert both.region == "both" and both.infection_ml == (800.0, 410.0)
    assert both.infection_change_ml == -390.0 and both.infection_change_relative == -0.4875
    assert both.percent_change == -10.0 and both.lung_ml == (4000.0, 4100.0)
    assert left.infection_change_ml == -300.0 and left.infection_change_relative == -1.0
    assert left.percent_change == pytest.approx(-15.7895)
    assert right.infection_change_ml == pytest.approx(-90.0)
    assert right.percent_change == pytest.approx(-4.2857)
    rows = change.to_rows()
    assert [r["region"] for r in rows] == ["both", "left", "right"]
    assert rows[0]["infection_ml_after"] == 410.0 and rows[1]["infected_percent_before"] == 15.7895
    assert json.loads(json.dumps(change.to_dict()))["regions"]["right"]["infection_ml"] == [
        500.0,
        410.0,
    ]


def test_no_infection_before_has_no_relative_change_and_other_models_are_noted():
    before = _report("a", (4000.0, 0.0, 0.0), (2000.0, 0.0, 0.0), (2000.0, 0.0, 0.0))
    after = _report("b", (4000.0, 40.0, 1.0), (2000.0, 40.0, 2.0), (2000.0, 0.0, 0.0), model="m2")
    change = compare_reports(before, after)
    assert change.regions[0].infection_change_relative is None
    assert change.regions[0].infection_change_ml == 40.0
    assert len(change.notes) == 1 and "different models (m1 and m2)" in change.notes[0]


def test_reports_without_volumes_or_fields_are_refused_by_case(tmp_path):
    ok = _report("a", (4000.0, 1.0, 0.1), (2000.0, 1.0, 0.1), (2000.0, 0.0, 0.0))
    picture = _report("slice_3", (None, None, 12.0), (None, None, 10.0), (None, None, 14.0))
    with pytest.raises(DataError, match="slice_3: the report has no volumes"):
        compare_reports(ok, picture)
    broken = {k: v for k, v in ok.items() if k != "left"} | {"case": "b"}
    with pytest.raises(DataError, match="b: the report lacks 'left'"):
        compare_reports(ok, broken)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"bad\.json: not a report"):
        read_report(tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"nope\.json: no such file"):
        read_report(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text(json.dumps(ok))
    assert read_report(tmp_path / "a.json") == ok


def test_a_mask_stored_in_another_voxel_order_and_field_lands_on_the_same_voxels():
    _, lung, infection = make_phantom(1, (24, 20, 6))
    affine = np.array([[0.8, 0, 0, -10], [0, 0.7, 0, 5], [0, 0, 2.5, 100], [0, 0, 0, 1]])
    # The second scan: the same anatomy, stored (S, L, P) and with three more rows in front.
    wider = np.pad(infection, ((0, 0), (3, 0), (0, 0)))
    wider_affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, -3], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    to_file = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(("S", "L", "P")))
    stored = apply_orientation(wider, to_file)
    stored_affine = wider_affine @ inv_ornt_aff(to_file, wider.shape)
    back = resample_onto(stored, stored_affine, infection.shape, affine)
    assert back.dtype == infection.dtype and np.array_equal(back, infection)
    # A patient 2.5 mm higher in the second scan: one slice up, the top slice out of reach.
    moved = np.eye(4)
    moved[2, 3] = 2.5
    up = resample_onto(stored, stored_affine, infection.shape, affine, transform=moved)
    assert np.array_equal(up[:, :, :-1], infection[:, :, 1:]) and not up[:, :, -1].any()
    assert lung.any()


def test_mask_change_counts_new_resolved_and_persisting_infection():
    before = np.zeros((4, 4, 2), np.uint8)
    after = np.zeros_like(before)
    before[0, :2, 0] = 1  # 2 voxels
    after[0, 1:4, 0] = 1  # 3 voxels, 1 shared
    change = mask_change(before, after, voxel_ml=0.5)
    assert change == {"new_ml": 1.0, "resolved_ml": 0.5, "persisting_ml": 0.5, "dice": 0.4}
    assert mask_change(before * 0, after * 0, 1.0)["dice"] == 1.0
    with pytest.raises(DataError, match="resample one onto the other"):
        mask_change(before, after[:2], 1.0)


def test_registration_finds_a_patient_who_moved_and_aligns_the_masks():
    pytest.importorskip("SimpleITK")
    hu, _, infection = make_phantom(2, (64, 64, 16))
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    # The second scan: the patient 6 mm to the left and 3 mm forward in the same scanner frame.
    shift = (-4, 2, 0)  # voxels along X (R->L: x mm decreases) and Y
    hu2 = np.roll(np.pad(hu, 8, constant_values=-1000), shift, axis=(0, 1, 2))[8:-8, 8:-8, 8:-8]
    inf2 = np.roll(np.pad(infection, 8), shift, axis=(0, 1, 2))[8:-8, 8:-8, 8:-8]
    transform = rigid_transform(hu, affine, hu2, affine)
    assert transform[:3, 3] == pytest.approx([-6.0, 3.0, 0.0], abs=0.75)
    assert transform[:3, :3] == pytest.approx(np.eye(3), abs=0.02)
    unaligned = mask_change(infection, inf2, 1.0)["dice"]
    aligned = resample_onto(inf2, affine, infection.shape, affine, transform=transform)
    assert mask_change(infection, aligned, 1.0)["dice"] > 0.9 > unaligned


def test_a_hair_of_motion_keeps_the_edge_slices():
    mask = np.zeros((6, 5, 4), np.uint8)
    mask[1:4, 1:3, [0, 3]] = 1  # infection in the first and the last slice only
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    for dz in (0.01, -0.01):  # what a registration of an unmoved patient finds
        moved = np.eye(4)
        moved[2, 3] = dz
        assert np.array_equal(resample_onto(mask, affine, mask.shape, affine, moved), mask)


def test_resampling_onto_the_same_grid_returns_the_mask_unchanged():
    mask = (np.random.default_rng(1).random((9, 8, 5)) > 0.7).astype(np.uint8)
    affine = np.diag([-0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = (10.0, -4.0, 30.0)
    same = resample_onto(mask, affine, mask.shape, affine)
    assert np.array_equal(same, mask) and same is not mask
    half = affine.copy()
    half[0, 3] += 0.7  # its voxel i+1 sits where the first scan's voxel i is (x step -0.7)
    assert np.array_equal(resample_onto(mask, half, mask.shape, affine)[:-1], mask[1:])
