"""Evaluation: scoring only, it never trains. Metrics on confusion counts (:mod:`.metrics`), the
per-slice counts of scored cases (:mod:`.scores`), labelled cases read as ``segment`` reads them
(:mod:`.cases`), ``covseg evaluate`` (:mod:`.evaluate`), the robustness variants
(:mod:`.robustness`) and Table 2 of a cross-validation folder (:mod:`.report`).

Modules are imported where used. Studies that train and then score (cross-validation,
out-of-fold selection, run comparison) live in :mod:`covseg.studies`, above this package and
:mod:`covseg.training`; training scores with :mod:`.metrics` only."""
