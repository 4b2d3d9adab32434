"""Studies: the work that trains and then scores, above :mod:`covseg.training` and
:mod:`covseg.evaluation`. Repeated k-fold cross-validation (:mod:`.crossval`), the out-of-fold
predictions of a finished one and the post-processing chosen on them (:mod:`.oof`), and several
cross-validation folders compared side by side (:mod:`.compare`).

Modules are imported where used."""
