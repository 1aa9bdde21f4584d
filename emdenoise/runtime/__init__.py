"""Where code runs: device and precision (:mod:`~emdenoise.runtime.device`), several processes under torchrun
(:mod:`~emdenoise.runtime.distributed`)."""
