"""The ``train``task (not written yet)."""

from emdenoise.errors import RuntimeFailure


def run(ctx) -> None:
    raise RuntimeFailure("the train task is not implemented yet")
