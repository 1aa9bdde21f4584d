"""Evaluation: metrics (:mod:`~emdenoise.evaluation.metrics`), the consistency check
(:mod:`~emdenoise.evaluation.consistency`, its lattice test :mod:`~emdenoise.evaluation.spectral`), the advice
it drives (:mod:`~emdenoise.evaluation.advice`), the per-image scorer (:mod:`~emdenoise.evaluation.scorer`), the
one timed loop over any method (:mod:`~emdenoise.evaluation.run`), the typed records
(:mod:`~emdenoise.evaluation.records`) and the test report (:mod:`~emdenoise.evaluation.report`)."""
