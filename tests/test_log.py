"""Log lines while a progress bar is drawn: each on its own line, the bar redrawn below it."""

from __future__ import annotations

import io
import logging

from tqdm.auto import tqdm

from emdenoise.log import BarSafeHandler


def test_a_warning_during_a_progress_bar_gets_its_own_line():
    stream = io.StringIO()
    logger = logging.getLogger("emdenoise.test_log")
    handler = BarSafeHandler(stream)
    handler.setFormatter(logging.Formatter("[t] %(message)s"))
    logger.addHandler(handler)
    try:
        with tqdm(total=10, file=stream, mininterval=0, ncols=60, desc="bar") as bar:
            bar.update(3)
            logger.warning("pixel size unknown")
            bar.update(3)
    finally:
        logger.removeHandler(handler)
    before, after = stream.getvalue().split("[t] pixel size unknown\n")
    assert "30%" in before and before.endswith("\r")  # the bar was cleared: the line starts afresh
    assert "30%" in after and "60%" in after  # and drawn again below the message
