"""The train record as a typed record (emdenoise.training.record): JSON round trip, old records, best epoch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from emdenoise.errors import InputError
from emdenoise.training.record import TRAIN_RECORD_FORMAT, TrainRecord


def _row(epoch: int, psnr: float | None, loss: float | None = None) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "val_psnr": psnr, "val_ssim": 0.5, "val_loss": loss, "lr": 0.1}


def _record() -> TrainRecord:
    return TrainRecord("sciml_ae", "cpu", "fp32", 10, {"depth": 2}, "abc", n_train=8, n_val=2)


def test_best_epoch_follows_val_psnr_and_the_record_round_trips():
    record = _record()
    for epoch, psnr in ((1, 20.0), (2, 25.0), (3, 22.0)):
        record = record.with_epoch(_row(epoch, psnr), last=epoch == 3, has_clean_val=True, has_val=True)
    assert (record.best_epoch, record.best_val_psnr, record.complete) == (2, 25.0, True)
    doc = record.to_json()
    assert doc["format"] == TRAIN_RECORD_FORMAT and [r["epoch"] for r in doc["epochs"]] == [1, 2, 3]
    assert TrainRecord.from_json(doc) == record


def test_noisy_only_val_picks_the_lowest_val_loss_and_no_val_the_last_epoch():
    record = _record()
    for epoch, loss in ((1, 0.5), (2, 0.3), (3, 0.4)):
        record = record.with_epoch(_row(epoch, None, loss), False, has_clean_val=False, has_val=True)
    assert record.best_epoch == 2 and record.best_val_loss == 0.3
    record = _record()
    for epoch in (1, 2):
        record = record.with_epoch(_row(epoch, None), False, has_clean_val=True, has_val=False)
    assert record.best_epoch == 2


def test_a_record_written_before_the_format_version_reads_as_version_1():
    doc = _record().to_json()
    del doc["format"], doc["best_val_loss"]
    assert TrainRecord.from_json(doc) == _record()
    with pytest.raises(InputError, match="ckpt.h5: record.format: expected"):
        TrainRecord.from_json({**doc, "format": "emdenoise-train-record/9"}, "ckpt.h5")
    with pytest.raises(InputError, match="ckpt.h5: record.fingerprint"):
        TrainRecord.from_json({k: v for k, v in doc.items() if k != "fingerprint"}, "ckpt.h5")


def test_select_by_band_psnr_picks_the_epoch_with_the_best_lattice_band():
    record = replace(_record(), select_by="band_psnr")
    for epoch, psnr, band in ((1, 20.0, 18.0), (2, 25.0, 17.0), (3, 22.0, 19.0)):
        row = {**_row(epoch, psnr), "val_band_psnr": band}
        record = record.with_epoch(row, last=epoch == 3, has_clean_val=True, has_val=True)
    assert (record.best_epoch, record.best_val_band_psnr, record.best_val_psnr) == (3, 19.0, 22.0)
    assert "band PSNR 19.00" in record.best_text
    assert TrainRecord.from_json(record.to_json()) == record
