"""Evaluation: metrics (:mod:`.metrics`), ``evaluate`` (:mod:`.evaluate`), cross-validation
(:mod:`.crossval`), out-of-fold selection (:mod:`.oof`), Table 2 (:mod:`.report`) and the
robustness variants (:mod:`.robustness`).

Modules are imported where used: ``crossval`` runs training, which itself scores with
``metrics``."""
