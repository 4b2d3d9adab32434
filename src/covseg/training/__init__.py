"""Training: the loop (:mod:`.loop`), resumable state and logs (:mod:`.state`), process groups
and threads (:mod:`.distributed`), losses (:mod:`.losses`) and the post-processing selection
(:mod:`.selection`)."""
