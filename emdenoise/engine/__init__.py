"""The engines every task calls: training (:mod:`~emdenoise.engine.training`), evaluation
(:mod:`~emdenoise.engine.evaluation`), inference with tiling (:mod:`~emdenoise.engine.tiling`), the classical
baselines, the metrics, devices and precision (:mod:`~emdenoise.engine.runtime`), several processes
(:mod:`~emdenoise.engine.distributed`) and the speed benchmark (:mod:`~emdenoise.engine.bench`)."""
