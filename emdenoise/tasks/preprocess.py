"""The ``preprocess``task (not written yet)."""

from emdenoise.errors import RuntimeFailure


def run(ctx) -> None:
    raise RuntimeFailure("the preprocess task is not implemented yet")
