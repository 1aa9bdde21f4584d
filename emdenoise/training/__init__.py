"""Training: the loop, checkpoints and resume (:mod:`~emdenoise.training.loop`) and the training targets of every
supervision mode (:mod:`~emdenoise.training.supervision`)."""
