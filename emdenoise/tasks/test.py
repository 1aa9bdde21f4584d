"""The ``test``task (not written yet)."""

from emdenoise.errors import RuntimeFailure


def run(ctx) -> None:
    raise RuntimeFailure("the test task is not implemented yet")
