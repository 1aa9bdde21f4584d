"""The train record: what training one model produced (its size, where it ran, a row per epoch, the best epoch),
kept in the checkpoint and written into ``train_metrics.json`` (see :mod:`emdenoise.tasks.train`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from emdenoise.errors import InputError

TRAIN_RECORD_FORMAT = "emdenoise-train-record/1"


@dataclass(frozen=True)
class TrainRecord:
    """One model's training. ``epochs``: one row per finished epoch (``epoch``, ``train_loss``, ``val_psnr``,
    ``val_ssim``, ``val_loss``, ``val_deviation``, ``images_per_s``, ``seconds``, ``lr``); the best epoch is
    the one with the highest val PSNR, or val band PSNR with ``select_by: band_psnr`` (the lowest val loss on
    noisy-only data, the last one without val)."""

    model: str
    device: str
    precision: str
    parameters: int
    options: dict[str, Any]
    fingerprint: str
    n_train: int
    n_val: int
    epochs: tuple[dict[str, Any], ...] = ()
    best_epoch: int | None = None
    best_val_psnr: float | None = None
    complete: bool = False
    processes: int = 1
    best_val_loss: float | None = None
    select_by: str = "psnr"
    best_val_band_psnr: float | None = None
    format: str = TRAIN_RECORD_FORMAT

    def to_json(self) -> dict[str, Any]:
        """The record as JSON: the keys of ``train_metrics.json``'s ``models`` entries, plus ``format``."""
        doc = asdict(self)
        doc["epochs"] = [dict(row) for row in self.epochs]
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], path: str | Path = "train record") -> TrainRecord:
        """The record ``doc`` (of a checkpoint or ``train_metrics.json`` at ``path``; records written before the
        format version have none and read as version 1)."""
        if not isinstance(doc, Mapping):
            raise InputError.at(path, "record", f"expected a JSON object, got {type(doc).__name__}")
        version = doc.get("format", TRAIN_RECORD_FORMAT)
        if version != TRAIN_RECORD_FORMAT:
            raise InputError.at(path, "record.format", f"expected {TRAIN_RECORD_FORMAT!r}, got {version!r}")
        names = {f.name for f in fields(cls)}
        missing = sorted({"model", "fingerprint", "n_train", "n_val"} - set(doc))
        if missing:
            raise InputError.at(path, f"record.{missing[0]}", "expected a train record with this key, missing")
        values = {k: v for k, v in doc.items() if k in names}
        values["epochs"] = tuple(dict(row) for row in doc.get("epochs") or ())
        return cls(**values)

    def with_epoch(self, row: dict[str, Any], last: bool, has_clean_val: bool, has_val: bool) -> TrainRecord:
        """This record with the epoch ``row`` added (``last``: the run's final epoch), the best epoch updated."""
        improved = self.improved(row, has_clean_val) or not has_val
        best: dict[str, Any] = {}
        if improved:
            best = {
                "best_epoch": row["epoch"],
                "best_val_psnr": row["val_psnr"],
                "best_val_band_psnr": row.get("val_band_psnr"),
                "best_val_loss": row["val_loss"],
            }
        return replace(self, epochs=(*self.epochs, row), complete=last, **best)

    def improved(self, row: Mapping[str, Any], has_clean_val: bool) -> bool:
        """Whether ``row`` beats the best epoch so far: a higher val PSNR (val band PSNR with ``select_by:
        band_psnr``), or (noisy-only val data, no clean images) a lower val loss; the first epoch always does."""
        if self.best_epoch is None:
            return True
        if not has_clean_val:
            return row["val_loss"] is not None and row["val_loss"] < (self.best_val_loss or math.inf)
        band = self.select_by == "band_psnr"
        value, best = (
            row.get("val_band_psnr" if band else "val_psnr"),
            self.best_val_band_psnr if band else self.best_val_psnr,
        )
        return value is not None and value > (-math.inf if best is None else best)

    @property
    def best_text(self) -> str:
        if self.select_by == "band_psnr" and self.best_val_band_psnr is not None:
            return f"val band PSNR {self.best_val_band_psnr:.2f} dB"
        if self.best_val_psnr is not None:
            return f"val PSNR {self.best_val_psnr:.2f} dB"
        return f"val loss {self.best_val_loss}"
