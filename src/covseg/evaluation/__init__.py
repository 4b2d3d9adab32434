"""Evaluation: metrics (:mod:`.metrics`), ``evaluate`` (:mod:`.evaluate`), cross-validation
(:mod:`.crossval`), out-of-fold selection (:mod:`.oof`) and Table 2 (:mod:`.report`).

Modules are imported where used: ``crossval`` runs training, which itself scores with
``metrics``."""
