"""The ``download`` task: fill ``raw_data_dir`` with em_graphene_sim (or the synthetic stand-in) and a MANIFEST.

``download.source`` is parsed by :func:`emdenoise.data.acquire.sources.parse_source` (synthetic, stfc, osn,
minibatch, an
S3 or zip URL, a local folder or zip); the work is :func:`emdenoise.data.acquire.run.download`. The CLI holds the
folder lock of ``raw_data_dir`` (:func:`emdenoise.lock.hold`) for the whole run, so a second download into the
same folder stops at once (exit code 3).
"""

from __future__ import annotations

from pathlib import Path

from emdenoise.data.acquire.run import download
from emdenoise.data.acquire.sources import parse_source
from emdenoise.errors import RuntimeFailure
from emdenoise.runtime.task import TaskContext


def run(ctx: TaskContext) -> None:
    params = ctx.params.download
    raw_dir = Path(ctx.paths["raw_data_dir"])
    source = parse_source(params.source, params.endpoint, ctx.where)
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(f"{raw_dir}: cannot create raw_data_dir ({exc.strerror or exc})") from None
    ctx.log.info("source: %s -> %s", source.describe(), raw_dir)
    download(source, params, raw_dir, ctx.log)
