"""Evaluation: metrics (:mod:`~emdenoise.evaluation.metrics`), the consistency check
(:mod:`~emdenoise.evaluation.consistency`), scoring every row (:mod:`~emdenoise.evaluation.run`) and the test report
(:mod:`~emdenoise.evaluation.report`)."""
