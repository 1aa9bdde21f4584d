"""Configuration: the one validated parameters schema (:mod:`~emdenoise.config.params`)."""
