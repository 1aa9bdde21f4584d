"""The study's plan: cells (one model trained on the first N pairs), their training sections and fingerprints,
the checks of the inputs and what every cell shares (:class:`Setting`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from emdenoise import models
from emdenoise.config.params import StudyParams, TrainParams
from emdenoise.data.splits import Split
from emdenoise.errors import InputError
from emdenoise.evaluation.scorer import Scorer, Structure
from emdenoise.io import modelfile
from emdenoise.layout import CARD
from emdenoise.training import loop as training


@dataclass(frozen=True)
class Cell:
    """One model trained on the first ``size`` training pairs for ``epochs`` epochs."""

    model: str
    size: int
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.size}"


def cell_epochs(size: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Epochs for a cell of ``size`` pairs: ``epochs``, raised so that it makes at least ``min_steps`` steps."""
    steps_per_epoch = math.ceil(size / batch_size)
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def plan_cells(study: StudyParams) -> list[Cell]:
    """Every (model, size) cell, smallest size first (the cheap cells finish first), models in registry order."""
    return [
        Cell(name, size, cell_epochs(size, study.batch_size, study.epochs, study.min_steps))
        for size in sorted(study.train_sizes)
        for name in study.model_names()
    ]


def cell_train_section(train: TrainParams, study: StudyParams, cell: Cell) -> TrainParams:
    """The ``train:`` section a cell is trained with: the study's settings over the train section."""
    section: TrainParams = train.replace(
        model=[cell.model],
        epochs=cell.epochs,
        batch_size=study.batch_size,
        lr=study.lr,
        max_train_images=cell.size,
        patch_size=study.patch_size,
        seed=study.seed,
        device=study.device,
    )
    return section


def cell_config(cell: Cell, train: TrainParams, evaluation: dict[str, Any], data: str) -> dict[str, Any]:
    """What a cell's result depends on: the training configuration (as the training engine fingerprints it),
    the evaluation settings and the data. Device and precision are left out, as in training."""
    return {
        "model": cell.model,
        "train_size": cell.size,
        "options": models.options_from_train(cell.model, train),
        **{key: getattr(train, key) for key in training.FINGERPRINT_KEYS},
        "evaluation": evaluation,
        "data_card": data,
    }


@dataclass(frozen=True)
class CellJob:
    """A cell with its training section, configuration and the one fingerprint of its result."""

    cell: Cell
    train: TrainParams
    config: dict[str, Any]
    fingerprint: str

    @property
    def name(self) -> str:
        return self.cell.name


def check_inputs(study: StudyParams, card: dict[str, Any], data_dir: Path, where: str) -> None:
    """Training sizes and patch size that the data can honour, or a one-line InputError."""
    card_path = Path(data_dir) / CARD
    n_train = (card.get("splits") or {}).get("train", {}).get("n")
    if isinstance(n_train, bool) or not isinstance(n_train, int):
        raise InputError.at(
            card_path,
            "splits.train.n",
            f"expected the number of training pairs, got {n_train!r}; run the preprocess task again",
        )
    too_big = [size for size in study.train_sizes if size > n_train]
    if too_big:
        raise InputError.at(
            where,
            "study.train_sizes",
            f"expected sizes of at most {n_train} (the training pairs "
            f"in {data_dir}), got {', '.join(map(str, too_big))}",
        )
    shape = card.get("image_shape")
    if study.patch_size and isinstance(shape, list) and len(shape) == 2 and study.patch_size > min(shape):
        raise InputError.at(
            where, "study.patch_size", f"expected 0 or at most the image side {min(shape)}, got {study.patch_size}"
        )


@dataclass
class Setting:
    """What every cell shares: the parameters, the data, the device."""

    study: StudyParams
    train: TrainParams  # the train: section the cells' sections are made from
    tune_images: int  # test.tune_images: validation pairs the baselines are tuned on
    data_dir: Path
    card: dict[str, Any]
    test: Split
    device: torch.device
    precision: str
    log: logging.Logger
    where: str  # the parameters file, for messages
    generalisation: Split | None = None  # data_dir/generalisation.h5, scored beside the test split
    structure: Structure = Structure()
    pixel_size: float | None = None  # the dataset card's pixel_size_angstrom

    def scorer(self, split: Split) -> Scorer:
        return Scorer(split, self.data_range, [], self.structure, self.pixel_size)

    @property
    def data_range(self) -> float:
        return float(self.card["data_range"])  # checked by load_card: a number > 0

    @property
    def evaluation(self) -> dict[str, Any]:
        """The evaluation settings a result depends on."""
        return {
            "max_test_images": self.study.max_test_images,
            "n_test": len(self.test),
            "dose_bins": self.study.dose_bins,
            "structure": self.structure.settings(),
            "n_generalisation": len(self.generalisation) if self.generalisation is not None else 0,
        }

    @cached_property
    def data_fingerprint(self) -> str:
        return training.data_fingerprint(self.card)

    @cached_property
    def train_data(self) -> training.TrainData:
        """The first (largest training size) pairs of the train split and the val split, read once, when the
        first cell trains; a cell takes its first N (:meth:`cell_data`)."""
        largest = self.train.replace(max_train_images=max(self.study.train_sizes), patch_size=self.study.patch_size)
        return training.load_data(self.data_dir, largest, self.card["normalisation"], self.where)

    def cell_data(self, size: int) -> training.TrainData:
        """The first ``size`` training pairs (views of :attr:`train_data`, no copy) and the val split."""
        return self.train_data.first(size)

    def job(self, cell: Cell) -> CellJob:
        train = cell_train_section(self.train, self.study, cell)
        config = cell_config(cell, train, self.evaluation, self.data_fingerprint)
        return CellJob(cell, train, config, modelfile.fingerprint(config))
