"""The ``download``task (not written yet)."""

from emdenoise.errors import RuntimeFailure


def run(ctx) -> None:
    raise RuntimeFailure("the download task is not implemented yet")
