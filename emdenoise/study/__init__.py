"""The study: plan, cells and analysis (:mod:`~emdenoise.study.run`) and its report (:mod:`~emdenoise.study.report`)."""
