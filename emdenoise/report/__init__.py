"""The reports: :mod:`~emdenoise.report.tables` (the one markdown-table writer and the number formatting),
:mod:`~emdenoise.report.figures` (bare Agg figures, PNG writing), :mod:`~emdenoise.evaluation.report` (the
test task's ``results.md`` and figures) and :mod:`~emdenoise.study.report` (the study's ``report.md`` and
figures). They turn the metrics the engines computed into text and pictures; they compute no metric.
"""
