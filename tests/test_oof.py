"""Out-of-fold scoring (`covseg.studies.oof`): each run's own post-processing, one shared
selection, and the selection made on the other runs only, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from covseg.config import PostProcessing
from covseg.studies.oof import OOF, other_folds_scores, own_scores, select_on_oof, summary
from covseg.training.selection import Item

SIDE = 32


def _item(inside: float, ring: float) -> Item:
    """A 10x10 lesion with probability ``inside``, a separate 1-px frame of ``ring`` around it
    two pixels away (60 px, more than any candidate component size), 0 elsewhere; no lung head."""
    truth = np.zeros((1, SIDE, SIDE), bool)
    truth[0, 11:21, 11:21] = True
    prob = np.zeros((1, SIDE, SIDE), np.float32)
    prob[0, 8:24, 8:24] = ring
    prob[0, 9:23, 9:23] = 0.0
    prob[0, 11:21, 11:21] = inside
    return Item(None, prob, truth)


def _oof() -> OOF:
    """Run 0 (dataset ``m``) is confident only below 0.5; run 1 (dataset ``z``) has a ring of
    false positives at 0.4 and the lesion at 0.7."""
    oof = OOF()
    oof.items = [_item(0.3, 0.0), _item(0.7, 0.4)]
    oof.case_ids = ["fold0_rep0/m/a", "fold1_rep0/z/b"]
    oof.own = [PostProcessing(threshold=0.2), PostProcessing(threshold=0.5)]
    oof.model_size = SIDE
    return oof


def test_own_and_other_folds_selection_by_hand():
    oof = _oof()
    own = own_scores(oof)
    assert own["per_slice_mean"] == pytest.approx(1.0)  # each run's own threshold is perfect
    assert own["by_source"] == {
        "m": {"n_slices": 1, "per_slice_mean": pytest.approx(1.0)},
        "z": {"n_slices": 1, "per_slice_mean": pytest.approx(1.0)},
    }
    other = other_folds_scores(oof)
    # run 1 alone: every threshold in (0.4, 0.7] is perfect, the tie goes to the one nearest 0.5;
    # run 0 at 0.5 predicts nothing: Dice 0.
    assert other["chosen"]["fold0_rep0"]["threshold"] == 0.5
    # run 0 alone: every threshold <= 0.3 is perfect, nearest 0.5 is 0.3 (no component size:
    # ties go to the smallest); run 1 at 0.3 keeps the 60-px ring: Dice 200 / (200 + 60).
    assert other["chosen"]["fold1_rep0"]["threshold"] == 0.3
    assert other["chosen"]["fold1_rep0"]["min_component"] == 0
    ring = 16 * 16 - 14 * 14
    dice_z = 2 * 100 / (2 * 100 + ring)
    assert other["by_source"]["m"]["per_slice_mean"] == pytest.approx(0.0)
    assert other["by_source"]["z"]["per_slice_mean"] == pytest.approx(dice_z)
    assert other["per_slice_mean"] == pytest.approx(dice_z / 2)
    # selected on both runs together (the shipped model's rule): 0.3, which has seen run 0;
    # its score on the same slices is the optimistic one
    shared = summary(oof, select_on_oof(oof), other_folds=True)
    assert shared["selected"]["postprocessing"]["threshold"] == 0.3
    assert shared["selected"]["per_slice_mean"] == pytest.approx((1 + dice_z) / 2)
    assert shared["other_folds_selection"]["per_slice_mean"] == pytest.approx(dice_z / 2)


def test_other_folds_needs_two_runs_and_single_datasets_have_no_sources():
    oof = _oof()
    oof.items, oof.case_ids, oof.own = oof.items[:1], ["fold0_rep0/a"], oof.own[:1]
    assert other_folds_scores(oof) == {}
    assert "by_source" not in own_scores(oof)
    assert "other_folds_selection" not in summary(oof, select_on_oof(oof))
