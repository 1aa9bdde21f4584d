"""``emdenoise bench``: training and inference speed against the original benchmark's loop.

:mod:`~emdenoise.bench.options` (the command's options, no torch), :mod:`~emdenoise.bench.settings` (what is
measured), :mod:`~emdenoise.bench.measure` (timing, peak memory, the plain loop's data path),
:mod:`~emdenoise.bench.training` and :mod:`~emdenoise.bench.inference` (plain and engine, each),
:mod:`~emdenoise.bench.run` (one model, every model, the JSON document and the command) and
:mod:`~emdenoise.bench.report` (the printed table).
"""
