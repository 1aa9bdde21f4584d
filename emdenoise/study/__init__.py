"""The study: the plan of cells (:mod:`~emdenoise.study.plan`), running them (:mod:`~emdenoise.study.run`), the
analysis and ``study.json`` record (:mod:`~emdenoise.study.summary`) and its report (:mod:`~emdenoise.study.report`)."""
