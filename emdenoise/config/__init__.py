"""Configuration: the schema machinery with no dependencies (:mod:`~emdenoise.config.schema`) and the one
validated parameters schema, one section per task (:mod:`~emdenoise.config.params`)."""
