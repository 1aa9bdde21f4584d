"""``emdenoise bench``: training and inference speed against the original benchmark's loop
(:mod:`~emdenoise.bench.run`)."""
