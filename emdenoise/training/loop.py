"""Training one model: :func:`train_model` (checkpoints, resume, the best epoch, the staged model files) and
:func:`publish` (the run's outputs put in place once every model has finished). The train task
(:mod:`emdenoise.tasks.train`, which describes the files written) and the study call it.

The engine by concern: :mod:`~emdenoise.training.data` (the pairs in memory, batches and crops),
:mod:`~emdenoise.training.optim` (optimisers, schedules, losses), :mod:`~emdenoise.training.step` (the train
step ``emdenoise bench`` times, one epoch, validation), :mod:`~emdenoise.training.record` (the train record).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from emdenoise import __version__, models
from emdenoise.config.params import TrainParams
from emdenoise.data.card import DatasetCard, pixel_range_or_none, pixel_size_or_none
from emdenoise.data.splits import load_split as load_split  # re-exported: tests patch and call it here
from emdenoise.errors import InputError
from emdenoise.inference import levels
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import modelfile
from emdenoise.layout import CHECKPOINT_FILE, DATASET_CARD_KEYS, LAST_MODEL_FILE, MODEL_FILE
from emdenoise.models import conditioning
from emdenoise.outputs import STAGING_DIR, Transaction, remove_staging
from emdenoise.runtime import device as devices
from emdenoise.runtime import distributed
from emdenoise.runtime.context import Runtime
from emdenoise.training import supervision as supervision
from emdenoise.training.data import TrainData as TrainData
from emdenoise.training.data import epoch_plan as epoch_plan
from emdenoise.training.data import gather as gather
from emdenoise.training.data import load_data as load_data
from emdenoise.training.data import resident
from emdenoise.training.optim import lr_factor as lr_factor
from emdenoise.training.record import TrainRecord
from emdenoise.training.step import TrainStep as TrainStep
from emdenoise.training.step import train_epoch as train_epoch
from emdenoise.training.step import validate, validation_deviation, validation_loss

METRICS_FILE = "train_metrics.json"

# train: keys that determine the result, hence the checkpoint fingerprint (device, precision, compile and
# num_workers are left out on purpose: a run may resume on another machine)
FINGERPRINT_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "lr_schedule",
    "loss",
    "seed",
    "max_train_images",
    "patch_size",
)
# keys that enter the fingerprint only when they differ from these defaults (checkpoints of supervised runs
# written before them keep resuming)
OPTIONAL_FINGERPRINT_KEYS = {
    "supervision": "clean",
    "blind_spot_fraction": None,
    "counts_per_unit": 0.0,
    "init_from": "none",
    "warmup_steps": 0,
    "ema": 0.0,
    "select_by": "psnr",
    "augment": "none",
    "condition": "none",
}
EpochHook = Callable[[int], None]
Card = DatasetCard | Mapping[str, Any]


def publish(records: Mapping[str, TrainRecord], model_dir: Path, metrics_path: Path) -> None:
    """Put the run's outputs in place once every model of ``records`` (name -> record) has finished: each
    model's staged files onto their names in ``model_dir/<name>/``, then ``train_metrics.json`` (the last
    model's record at the top, ``models`` holding every record), declared last. A model with nothing staged
    (finished by an earlier run, its files already in place) keeps its files."""
    docs = {name: record.to_json() for name, record in records.items()}
    with Transaction(resumable=True) as tx:
        for name in records:
            for file in (MODEL_FILE, LAST_MODEL_FILE):
                if tx.is_staged(model_dir / name / file):
                    tx.put(model_dir / name / file)
        tx.write_json(metrics_path, {**docs[list(docs)[-1]], "models": docs})
    for name in records:  # what else a killed run left there (a half-written temporary file)
        remove_staging(model_dir / name / STAGING_DIR)


def _card_json(card: Card) -> Mapping[str, Any]:
    return card.to_json() if isinstance(card, DatasetCard) else card


def data_fingerprint(card: Card) -> str:
    """Fingerprint of the data a model trains on: the dataset card's contract keys (image shape, split sizes,
    value ranges, normalisation, data range, source), not its creation time or folder, so re-running
    preprocess on the same raw data keeps checkpoints valid."""
    doc = _card_json(card)
    return modelfile.fingerprint({key: doc.get(key) for key in DATASET_CARD_KEYS})


def training_pixel_size(card: Card) -> float | None:
    """The model file's ``pixel_size`` (A/px of the training data): the dataset card's ``pixel_size_angstrom``,
    None when the card has none (or not a positive number)."""
    return pixel_size_or_none(_card_json(card).get("pixel_size_angstrom"))


def training_pixel_range(card: Card) -> list[float] | None:
    """The model file's ``pixel_size_range`` ([min, max] A/px of the training data): the dataset card's
    ``pixel_size_range_angstrom``, None when the card has none (data of one pixel size, or older cards)."""
    return pixel_range_or_none(_card_json(card).get("pixel_size_range_angstrom"))


def _optional_keys(train: TrainParams) -> list[str]:
    """The OPTIONAL_FINGERPRINT_KEYS that matter for this run (those off their defaults; the blind-spot
    fraction only for noise2void)."""
    keys = [
        k for k, default in OPTIONAL_FINGERPRINT_KEYS.items() if default is not None and getattr(train, k) != default
    ]
    if train.supervision == "noise2void":
        keys.append("blind_spot_fraction")
    return keys


def init_source(path_text: str, where: Any) -> Path:
    """The model file ``train.init_from`` names: ``zoo:NAME`` (a pretrained model of :mod:`emdenoise.zoo`) or a
    path; a missing one is refused in one line."""
    from emdenoise import zoo

    if path_text.startswith(zoo.PREFIX):
        return zoo.get(path_text, "train.init_from").model_file
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise InputError.at(where, "train.init_from", f"expected an existing model file or zoo:NAME, {path} not found")
    return path


def load_init(name: str, path_text: str, where: Any) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model ``train.init_from`` names, its meta data and its file: refused in one line when it holds
    another architecture than ``train.model``."""
    path = init_source(path_text, where)
    loaded, meta = modelfile.load_model(path)
    if meta["model"] != name:
        raise InputError.at(
            path,
            "model",
            f"expected a {name} model file for train.init_from (train.model is {name}), got {meta['model']}",
        )
    return loaded, meta, path


def init_options(name: str, train: TrainParams, meta: dict[str, Any] | None, log: Any) -> dict[str, Any]:
    """The architecture options of the run: those of the ``train.init_from`` model file when fine-tuning (its
    weights only fit them; the ``train:`` section's differing ones are named in a warning), else the section's."""
    options = models.options_from_train(name, train)
    if meta is None:
        return options
    if meta["options"] != options:
        log.warning(
            "%s: train.init_from sets the architecture options (%s)", name, _config_diff(options, meta["options"])
        )
    return dict(meta["options"])


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _more_epochs(old: dict, new: dict) -> bool:
    """Whether the training configuration ``new`` is ``old`` with more epochs (its checkpoint may go on)."""
    return {**old, "epochs": None} == {**new, "epochs": None} and new["epochs"] > old.get("epochs", new["epochs"])


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown difference"


# ---------------------------------------------------------------------------------------------- one model


class _Run:
    """One model's training: its configuration and fingerprint, the step, the model files' meta data."""

    def __init__(self, name: str, train: TrainParams, data: TrainData, card: Card, rt: Runtime, out_dir: Path):
        self.name, self.train, self.data, self.rt, self.out_dir = name, train, data, rt, out_dir
        self.card = _card_json(card)
        init = load_init(name, train.init_from, train.where) if train.init_from != "none" else None
        self.options = init_options(name, train, init[1] if init else None, rt.log)
        self.config = {
            "model": name,
            "options": self.options,
            **{k: getattr(train, k) for k in FINGERPRINT_KEYS},
            **{k: getattr(train, k) for k in _optional_keys(train)},
            "data_card": data_fingerprint(self.card),
        }
        self.fingerprint = modelfile.fingerprint(self.config)
        self.ckpt_path, self.stage = out_dir / CHECKPOINT_FILE, out_dir / STAGING_DIR
        self.data_range = float(self.card["data_range"])
        self.meta = self._meta()
        devices.seed_everything(train.seed)
        built = conditioning.build(name, self.options, train.condition, self.meta["normalisation"])
        if init is not None:
            conditioning.load_weights(built, init[0])
            rt.log.info("%s: starting from the weights of %s (train.init_from)", name, init[2])
        model = distributed.prepare(built, rt.world, rt.device)
        self.step = TrainStep(model, train, math.ceil(len(data) / train.batch_size) * train.epochs, rt)

    def fresh_record(self) -> TrainRecord:
        return TrainRecord(
            model=self.name,
            device=str(self.rt.device),
            precision=self.rt.precision,
            parameters=models.count_parameters(self.step.model),
            options=self.options,
            fingerprint=self.fingerprint,
            n_train=len(self.data),
            n_val=len(self.data.val),
            processes=self.rt.world.size,
            select_by=self.train.select_by,
        )

    def _meta(self) -> dict[str, Any]:
        """The model files' meta data (their metrics added per file)."""
        rt, train, sup = self.rt, self.train, self.data.supervisor
        # the targets' statistics de-normalise the output: the noisy ones when the targets are noisy frames
        targets = (("noisy", "noisy"), ("clean", "noisy" if sup.self_supervised else "clean"))
        return {
            "model": self.name,
            "options": self.options,
            "data_range": self.data_range,
            "normalisation": {
                side: {k: self.card["normalisation"][target][k] for k in ("mean", "std")} for side, target in targets
            },
            "pixel_size": training_pixel_size(self.card),
            "pixel_size_range": training_pixel_range(self.card),
            "supervision": self.data.supervision,
            "condition": train.condition,
            # frames of counts / dose (a dose per image recorded; counts / mean where the card says so: the
            # generator's STEM frames): denoise brings a user's frames to that level
            "input_units": self.card.get("input_units", levels.COUNTS_PER_DOSE) if self.card.get("has_dose") else None,
            "train_config": {
                **self.config,
                "fingerprint": self.fingerprint,
                "device": str(rt.device),
                "precision": rt.precision,
                "num_workers": train.num_workers,
                "resume": train.resume,
                "processes": rt.world.size,
                "emdenoise_version": __version__,
            },
        }

    def start(self) -> tuple[TrainRecord, int]:
        """The record so far and the first epoch to train: from the checkpoint when resuming (past the last
        epoch when it has finished), else afresh."""
        name, log, rt, path = self.name, self.rt.log, self.rt, self.ckpt_path
        if self.train.resume == "auto" and path.exists():
            info = modelfile.checkpoint_info(path)
            extended = info["fingerprint"] != self.fingerprint and _more_epochs(info["config"], self.config)
            if info["fingerprint"] != self.fingerprint and not extended:
                raise InputError.at(
                    path,
                    "fingerprint",
                    "expected a checkpoint of this training configuration, "
                    f"found one of another ({_config_diff(info['config'], self.config)}); set "
                    "train.resume: never to start afresh (deleting it) or use another model_dir",
                )
            if info["epoch"] >= self.train.epochs:
                state = modelfile.load_checkpoint(path, self.step.model)
                log.info(
                    "%s: already trained for %d epochs with this configuration (%s); nothing to do (set "
                    "train.resume: never to train again)",
                    *(name, self.train.epochs, path),
                )
                return TrainRecord.from_json(state["record"], path), info["epoch"] + 1
            if extended:
                log.info(
                    "%s: extending the run from %d to %d epochs (train.epochs; the learning-rate schedule goes "
                    "on along its %d-epoch curve)",
                    *(name, info["config"]["epochs"], self.train.epochs, self.train.epochs),
                )
            return self._resume()
        if rt.is_main:
            remove_staging(self.stage)  # what an earlier, unfinished run staged
            if path.exists():
                log.info(
                    "%s: starting afresh (train.resume: never): the first epoch replaces %s; the model files "
                    "are replaced when the run succeeds",
                    *(name, path),
                )
        return self.fresh_record(), 1

    def _resume(self) -> tuple[TrainRecord, int]:
        step, rt = self.step, self.rt
        state = modelfile.load_checkpoint(self.ckpt_path, step.model, step.optimizer, step.scheduler)
        devices.set_rng_state(state["rng"])
        if state.get("scaler"):
            step.scaler.load_state_dict(state["scaler"])
        step.averaged.load(state.get("ema"), step.model)
        record = TrainRecord.from_json(
            {**state["record"], "device": str(rt.device), "precision": rt.precision, "processes": rt.world.size},
            self.ckpt_path,
        )
        rt.log.info(
            "%s: resuming from %s after epoch %d of %d", self.name, self.ckpt_path, state["epoch"], self.train.epochs
        )
        return record, state["epoch"] + 1

    def epoch(self, pairs: TrainData, record: TrainRecord, epoch: int) -> TrainRecord:
        """Train and validate one epoch, write its files; return the record with it."""
        train, data, rt, step = self.train, self.data, self.rt, self.step
        row = train_epoch(step, pairs, train, epoch, f"{self.name} {epoch}/{train.epochs}")
        t_val = time.perf_counter()
        distributed.sync_buffers(step.model, rt.world)
        denoiser = Denoiser(step.averaged.model, self.meta, rt.device, rt.precision)
        val_psnr, val_ssim, val_band = validate(
            denoiser, data.val, self.data_range, train.batch_size, rt.world, training_pixel_size(self.card)
        )
        val_loss = validation_loss(denoiser, data.val_pairs, train.batch_size)
        val_deviation = validation_deviation(denoiser, data.val, train.batch_size) if rt.is_main else math.nan
        step.model.train()
        row.update(
            val_psnr=_finite(val_psnr),
            val_ssim=_finite(val_ssim),
            val_band_psnr=_finite(val_band),
            val_loss=_finite(val_loss),
            val_deviation=_finite(val_deviation),
            seconds=row["seconds"] + time.perf_counter() - t_val,
        )
        self._log_epoch(row, val_psnr, val_ssim, val_loss, val_deviation)
        last = epoch == train.epochs
        improved = record.improved(row, data.val.clean is not None) or len(data.val) == 0
        record = record.with_epoch(row, last, data.val.clean is not None, len(data.val) > 0)
        if rt.is_main:
            self._save(record, row, improved, last)
        return record

    def _log_epoch(self, row: dict, val_psnr: float, val_ssim: float, val_loss: float, deviation: float) -> None:
        psnr = "" if row["val_psnr"] is None else f", val PSNR {val_psnr:.2f} dB, SSIM {val_ssim:.4f}"
        if row.get("val_band_psnr") is not None:
            psnr += f", band PSNR {row['val_band_psnr']:.2f} dB"
        extra = ("" if row["val_loss"] is None else f", val loss ({self.data.supervisor.mode}) {val_loss:.5f}") + (
            "" if row["val_deviation"] is None else f", val deviance deviation {deviation:.4f}"
        )
        self.rt.log.info(
            "%s epoch %d/%d: train_loss %.5f%s%s, %.1f images/s, %.1f s, lr %.3g",
            *(self.name, row["epoch"], self.train.epochs, row["train_loss"], psnr, extra),
            *(row["images_per_s"], row["seconds"], row["lr"]),
        )

    def _save(self, record: TrainRecord, row: dict, improved: bool, last: bool) -> None:
        """Rank 0: the best and last model files staged, then the checkpoint (last: it marks the epoch as
        done, so a crash before it just redoes the epoch)."""
        step, epoch, weights = self.step, row["epoch"], self.step.averaged.model
        if improved:
            modelfile.save_model(
                self.stage / MODEL_FILE, weights, {**self.meta, "metrics": {**row, "best_epoch": epoch}}
            )
        if last:
            metrics = {**row, "best_epoch": record.best_epoch}
            modelfile.save_model(self.stage / LAST_MODEL_FILE, weights, {**self.meta, "metrics": metrics})
        state = {
            "model": self.name,
            "options": self.options,
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "config": self.config,
            "record": record.to_json(),
            "rng": devices.rng_state(),
            "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None,
            "ema": step.averaged.state(),
        }
        modelfile.save_checkpoint(self.ckpt_path, step.model, step.optimizer, step.scheduler, state)


def train_model(
    name: str,
    train: TrainParams,
    data: TrainData,
    card: Card,
    rt: Runtime,
    out_dir: Path,
    *,
    on_epoch_end: EpochHook | None = None,
) -> TrainRecord:
    """Train model ``name`` (resuming when allowed) on ``rt``: its checkpoint into ``out_dir``, its model files
    into ``out_dir/.staging/`` for :func:`publish` (rank 0 only); return its record. Every process of a
    torchrun run (``rt.world``) calls this alike. ``on_epoch_end(epoch)`` is called after each epoch's
    checkpoint is written."""
    run = _Run(name, train, data, card, rt, out_dir)
    record, start = run.start()
    if start > train.epochs:
        return record
    pairs = resident(data, rt.device)
    for epoch in range(start, train.epochs + 1):
        record = run.epoch(pairs, record, epoch)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    rt.log.info(
        "%s: best %s at epoch %s -> %s (staged until every model of the run has finished)",
        *(name, record.best_text, record.best_epoch, out_dir / MODEL_FILE),
    )
    return record
