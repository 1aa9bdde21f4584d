"""The ``preprocess`` task: validate the raw em_graphene_sim layout in ``raw_data_dir``, split it, and write the
training layout (``train.h5``, ``val.h5``, ``test.h5``, optional ``inference.h5``, ``dataset_card.json``) into
``data_dir``. The work is :func:`emdenoise.data.prepare.run.preprocess`; the raw files are read and checked by
:mod:`emdenoise.data.prepare.raw`.
"""

from __future__ import annotations

from pathlib import Path

from emdenoise.data.prepare.raw import one_line
from emdenoise.data.prepare.run import preprocess
from emdenoise.errors import InputError
from emdenoise.runtime.task import TaskContext


def run(ctx: TaskContext) -> None:
    raw_dir = Path(ctx.paths["raw_data_dir"])
    data_dir = Path(ctx.paths["data_dir"])
    if not raw_dir.is_dir():
        raise InputError.at(raw_dir, None, "raw data folder not found; run the download task first")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError.at(data_dir, None, f"cannot create the output folder ({one_line(exc)})") from None
    card = preprocess(raw_dir, data_dir, ctx.params.preprocess, ctx.log)
    norm = card.normalisation
    ctx.log.info(
        "normalisation (train): noisy mean %.4g std %.4g, clean mean %.4g std %.4g; PSNR data range R = %.4g",
        norm["noisy"]["mean"],
        norm["noisy"]["std"],
        norm["clean"]["mean"],
        norm["clean"]["std"],
        card.data_range,
    )
    ctx.log.info("wrote %s", data_dir)
