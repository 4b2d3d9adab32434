"""Training: the loop (:mod:`.loop`), one epoch (:mod:`.epoch`), the validation slices and the
post-processing chosen on them (:mod:`.validation`), resumable state and logs (:mod:`.state`),
process groups and threads (:mod:`.distributed`), losses (:mod:`.losses`), the post-processing
search (:mod:`.selection`) and ensembles of runs (:mod:`.ensemble`)."""
