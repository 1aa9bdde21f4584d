"""The study engine: the plan of cells, running a cell with the training and evaluation engines, the classical
baselines scored once, results kept on disk by fingerprint, and the analysis (the best baseline, the smallest
training size that beats it, the ``study.json`` summary).

A *cell* is one model trained on the first N pairs of the train split. The train split is read once, with the
largest N of the study (:meth:`Setting.train_data`); each cell trains on its first N pairs
(:func:`emdenoise.training.loop.train_model`, checkpoints and resume included) into
``cells/<model>-<N>/<model>/``, its files are committed with :func:`emdenoise.training.loop.publish`
(``cells/<model>-<N>/train_metrics.json`` beside them), and the best-on-val weights are scored on the test split
(:func:`emdenoise.evaluation.run.run_model`). A cell's result depends on one fingerprint: the training
configuration, the evaluation settings and the data (:class:`CellJob`); a kept ``result.json`` with the same
fingerprint is not computed again. The task :mod:`emdenoise.tasks.study` describes the outputs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from emdenoise import __version__, models
from emdenoise.config.params import StudyParams, TrainParams
from emdenoise.data.splits import Split, load_split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.evaluation import run as evaluation
from emdenoise.io import modelfile
from emdenoise.layout import CARD, MODEL_FILE
from emdenoise.log import progress
from emdenoise.outputs import write_json_atomic
from emdenoise.report.tables import is_number
from emdenoise.training import loop as training

STUDY_FORMAT = "emdenoise-study/1"
RESULT_FILE = "result.json"
CELLS_DIR = "cells"
BASELINES_DIR = "baselines"


# --------------------------------------------------------------------------------------------------------------
# The plan: cells, their training settings, their fingerprints
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Analysis: the best baseline and the smallest size that beats it
# --------------------------------------------------------------------------------------------------------------


def best_baseline(methods: Mapping[str, Mapping[str, Any]]) -> tuple[str, float] | None:
    """The classical row with the highest mean PSNR, as (name, psnr); None when there is none."""
    scored = [
        (row["psnr_mean"], name)
        for name, row in methods.items()
        if row.get("kind") == "classical" and is_number(row.get("psnr_mean"))
    ]
    if not scored:
        return None
    psnr, name = max(scored)
    return name, float(psnr)


def smallest_winning_size(psnr_by_size: Mapping[int, float | None], target: float | None) -> int | None:
    """The smallest training size whose mean PSNR is strictly above ``target`` (None: never, or no target)."""
    if target is None or not is_number(target):
        return None
    wins = [size for size, psnr in psnr_by_size.items() if psnr is not None and is_number(psnr) and psnr > target]
    return min(wins) if wins else None


# --------------------------------------------------------------------------------------------------------------
# Results kept on disk
# --------------------------------------------------------------------------------------------------------------


def read_result(path: Path, fingerprint: str, log: logging.Logger) -> dict[str, Any] | None:
    """A finished result at ``path`` computed with the configuration ``fingerprint``, else None."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); computing it again", path, exc.__class__.__name__)
        return None
    if not isinstance(result, dict) or result.get("status") != "done":
        return None
    if result.get("fingerprint") != fingerprint:
        log.info("%s: computed with another configuration; computing it again", path)
        return None
    return result


def _per_image(row: evaluation.Row) -> dict[str, list[float | None]]:
    return {"psnr": [evaluation.finite(v) for v in row.psnr], "ssim": [evaluation.finite(v) for v in row.ssim]}


def _row_summary(scorer: evaluation.Scorer, name: str, n_bins: int) -> dict[str, Any]:
    """The evaluation summary of a row (structure metrics included), plus its mean PSNR per dose bin (None
    without dose)."""
    summary = scorer.summary(name)
    dose = scorer.split.dose
    row = scorer.rows[name]
    summary["psnr_by_dose"] = None if dose is None else evaluation.dose_bins(dose, {name: row}, n_bins)["methods"][name]
    return summary


# --------------------------------------------------------------------------------------------------------------
# What every cell shares
# --------------------------------------------------------------------------------------------------------------


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
    structure: evaluation.Structure = evaluation.Structure()
    pixel_size: float | None = None  # the dataset card's pixel_size_angstrom

    def scorer(self, split: Split) -> evaluation.Scorer:
        return evaluation.Scorer(split, self.data_range, [], self.structure, self.pixel_size)

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
        data = self.train_data
        return dataclasses.replace(data, noisy=data.noisy[:size], clean=data.clean[:size])

    def job(self, cell: Cell) -> CellJob:
        train = cell_train_section(self.train, self.study, cell)
        config = cell_config(cell, train, self.evaluation, self.data_fingerprint)
        return CellJob(cell, train, config, modelfile.fingerprint(config))


# --------------------------------------------------------------------------------------------------------------
# One cell, the baselines, every cell
# --------------------------------------------------------------------------------------------------------------


def _train_summary(record: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    epochs = record.get("epochs") or []
    return {
        "parameters": record.get("parameters"),
        "n_train": record.get("n_train"),
        "n_val": record.get("n_val"),
        "device": record.get("device"),
        "precision": record.get("precision"),
        "best_epoch": record.get("best_epoch"),
        "best_val_psnr": record.get("best_val_psnr"),
        "final_train_loss": epochs[-1]["train_loss"] if epochs else None,
        "images_per_s": statistics.median(e["images_per_s"] for e in epochs) if epochs else None,
        "seconds": sum(e["seconds"] for e in epochs),
        "wall_seconds_this_run": wall_seconds,
        "epochs": epochs,
    }


def run_cell(job: CellJob, setting: Setting, cell_dir: Path) -> dict[str, Any]:
    """Train (resuming or skipping what the cell's checkpoint already holds) and evaluate one cell."""
    cell, log = job.cell, setting.log
    result: dict[str, Any] = {
        "cell": cell.name,
        "model": cell.model,
        "train_size": cell.size,
        "epochs": cell.epochs,
        "fingerprint": job.fingerprint,
        "config": job.config,
    }
    t0 = time.perf_counter()
    record = training.train_model(
        cell.model,
        job.train,
        setting.cell_data(cell.size),
        setting.card,
        setting.data_range,
        setting.device,
        setting.precision,
        cell_dir / cell.model,
        log,
    )
    training.publish({cell.model: record}, cell_dir, cell_dir / training.METRICS_FILE)
    result["train"] = _train_summary(record, time.perf_counter() - t0)

    scorer = setting.scorer(setting.test)
    t1 = time.perf_counter()
    denoiser = evaluation.load_model(cell_dir / cell.model / MODEL_FILE, setting.device, setting.precision)
    args = (setting.device, setting.precision, setting.study.batch_size, log, denoiser)
    evaluation.run_model(cell.name, cell_dir / cell.model / MODEL_FILE, scorer, *args)
    row = scorer.rows[cell.name]
    result["test"] = _row_summary(scorer, cell.name, setting.study.dose_bins)
    if setting.generalisation is not None:
        other = setting.scorer(setting.generalisation)
        evaluation.run_model(cell.name, cell_dir / cell.model / MODEL_FILE, other, *args)
        result["generalisation"] = _row_summary(other, cell.name, setting.study.dose_bins)
    result["test"]["device"], result["test"]["precision"] = str(setting.device), setting.precision
    result["evaluation_seconds"] = time.perf_counter() - t1
    result["per_image"] = _per_image(row)
    result["status"] = "done"
    return result


def run_baselines(names: list[str], setting: Setting, out_dir: Path) -> dict[str, Any]:
    """Score the noisy input and each classical baseline (tuned on val) on the test images, once; kept in
    ``out_dir/baselines/result.json`` by fingerprint."""
    config = {
        "baselines": names,
        "tune_images": setting.tune_images,
        "evaluation": setting.evaluation,
        "data_card": setting.data_fingerprint,
    }
    fingerprint = modelfile.fingerprint(config)
    path = out_dir / BASELINES_DIR / RESULT_FILE
    kept = read_result(path, fingerprint, setting.log)
    if kept is not None:
        setting.log.info("baselines: kept from a previous run (%s)", path)
        return kept

    test, n_bins, batch = setting.test, setting.study.dose_bins, setting.study.batch_size
    scorer = setting.scorer(test)
    other = setting.scorer(setting.generalisation) if setting.generalisation is not None else None
    evaluation.score_input(scorer, batch)
    if other is not None:
        evaluation.score_input(other, batch)
    if names:
        val = load_split(setting.data_dir, "val", setting.tune_images)
        if len(val) == 0:
            raise InputError.at(
                setting.data_dir / "val.h5",
                "study.baselines",
                "expected validation pairs to tune "
                "the baselines on, found none; set preprocess.val_fraction > 0 and preprocess "
                "again, or set study.baselines: none",
            )
        for name in names:
            tuned = evaluation.run_baseline(name, val, scorer, setting.data_range, batch, setting.log)
            if other is not None:
                evaluation.score_baseline(tuned, other, batch)
    result = {
        "fingerprint": fingerprint,
        "config": config,
        "status": "done",
        "methods": {name: _row_summary(scorer, name, n_bins) for name in scorer.rows},
        "per_image": {name: _per_image(row) for name, row in scorer.rows.items()},
    }
    if other is not None:
        result["generalisation"] = {name: _row_summary(other, name, n_bins) for name in other.rows}
    write_json_atomic(path, result)
    return result


def run_cells(
    cells: list[Cell],
    setting: Setting,
    out_dir: Path,
    after_cell: Callable[[list[dict[str, Any]], list[dict[str, Any]]], object],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every cell in turn: kept when ``cells/<name>/result.json`` has its fingerprint, else trained and
    evaluated, its result written atomically. A cell that fails at run time (diverged, out of memory) is
    recorded as failed and the others go on. ``after_cell(results, failed)`` is called after each computed
    cell but the last (for partial reports). Returns (finished results, failed results)."""
    log = setting.log
    results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for i, cell in enumerate(progress(cells, total=len(cells), desc="study", unit="cell"), 1):
        cell_dir = out_dir / CELLS_DIR / cell.name
        job = setting.job(cell)
        result = read_result(cell_dir / RESULT_FILE, job.fingerprint, log)
        if result is not None:
            log.info(
                "cell %d/%d %s: kept from a previous run (PSNR %.2f dB)",
                i,
                len(cells),
                cell.name,
                result["test"]["psnr_mean"],
            )
            results.append(result)
            continue
        log.info(
            "cell %d/%d %s: training on %d pairs for %d epochs, then testing",
            i,
            len(cells),
            cell.name,
            cell.size,
            cell.epochs,
        )
        try:
            result = run_cell(job, setting, cell_dir)
        except RuntimeFailure as exc:  # a diverged or out-of-memory cell: note it, go on with the others
            log.error("cell %s failed: %s", cell.name, exc.message)
            result = {
                "cell": cell.name,
                "model": cell.model,
                "train_size": cell.size,
                "epochs": cell.epochs,
                "fingerprint": job.fingerprint,
                "status": "failed",
                "error": exc.message,
            }
        write_json_atomic(cell_dir / RESULT_FILE, result)
        if result["status"] == "done":
            log.info(
                "cell %d/%d %s: PSNR %.2f dB, SSIM %.4f, %.1f images/s",
                i,
                len(cells),
                cell.name,
                result["test"]["psnr_mean"],
                result["test"]["ssim_mean"],
                result["test"]["images_per_s"] or math.nan,
            )
        (results if result["status"] == "done" else failed).append(result)
        if i < len(cells):
            after_cell(results, failed)
    return results, failed


# --------------------------------------------------------------------------------------------------------------
# study.json
# --------------------------------------------------------------------------------------------------------------


def hardware(device: torch.device) -> dict[str, Any]:
    """Where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "emdenoise": __version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _model_summary(by_size: dict[int, dict[str, Any]], sizes: list[int], target: float | None) -> dict[str, Any]:
    """One model's numbers over its finished cells (``by_size``: training size -> cell row)."""
    psnr = {size: by_size[size]["test"]["psnr_mean"] for size in sizes if size in by_size}
    speeds = [r["test"]["images_per_s"] for r in by_size.values() if is_number(r["test"]["images_per_s"])]
    train_speeds = [r["train"]["images_per_s"] for r in by_size.values() if is_number(r["train"]["images_per_s"])]
    win = smallest_winning_size(psnr, target)
    largest = max(by_size) if by_size else None
    return {
        "parameters": next((r["train"]["parameters"] for r in by_size.values()), None),
        "psnr_by_size": {str(s): v for s, v in psnr.items()},
        "ssim_by_size": {str(s): by_size[s]["test"]["ssim_mean"] for s in sizes if s in by_size},
        "images_per_s": statistics.median(speeds) if speeds else None,
        "train_images_per_s": statistics.median(train_speeds) if train_speeds else None,
        "largest_size": largest,
        "psnr_by_dose_at_largest_size": by_size[largest]["test"]["psnr_by_dose"] if largest else None,
        "smallest_winning_size": win,
        "psnr_at_smallest_winning_size": psnr.get(win) if win is not None else None,
    }


def summarise(
    setting: Setting,
    cells: list[Cell],
    baselines: dict[str, Any],
    results: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    wall_seconds: float,
) -> dict[str, Any]:
    """Everything ``study.json`` holds (per-image values stay in the cells' result files)."""
    study, card = setting.study, setting.card
    methods = baselines["methods"]
    best = best_baseline(methods)
    sizes = sorted(study.train_sizes)
    cell_rows = [
        {key: r[key] for key in ("cell", "model", "train_size", "epochs")}
        | {
            "train": {k: v for k, v in r["train"].items() if k != "epochs"},
            "train_epochs": r["train"]["epochs"],
            "test": r["test"],
            "evaluation_seconds": r["evaluation_seconds"],
        }
        | ({"generalisation": r["generalisation"]} if "generalisation" in r else {})
        for r in results
    ]
    per_model: dict[str, dict[int, dict[str, Any]]] = {cell.model: {} for cell in cells}
    for row in cell_rows:
        per_model[row["model"]][row["train_size"]] = row
    by_dose = None
    if setting.test.dose is not None:
        by_dose = {
            k: v for k, v in evaluation.dose_bins(setting.test.dose, {}, study.dose_bins).items() if k != "methods"
        }
    at_largest = {
        **methods,
        **{name: by_size[max(by_size)]["test"] for name, by_size in per_model.items() if by_size},
    }
    structure = {
        "methods": at_largest,
        "strongest_classical": evaluation.strongest_classical(at_largest),
        "has_atoms": setting.test.has_atoms,
        "pixel_size_angstrom": setting.scorer(setting.test).median_pixel_size(),
    }
    generalisation = None
    if setting.generalisation is not None and "generalisation" in baselines:
        gen_rows = {
            **baselines["generalisation"],
            **{
                name: by_size[max(by_size)]["generalisation"]
                for name, by_size in per_model.items()
                if by_size and "generalisation" in by_size[max(by_size)]
            },
        }
        generalisation = {
            "n_images": len(setting.generalisation),
            "methods": gen_rows,
            "strongest_classical": evaluation.strongest_classical(gen_rows),
            "has_atoms": setting.generalisation.has_atoms,
            "pixel_size_angstrom": setting.scorer(setting.generalisation).median_pixel_size(),
        }
    devices = sorted(
        {r["test"]["device"] for r in results} | {r["train"]["device"] for r in results if r["train"].get("device")}
    )
    return {
        "format": STUDY_FORMAT,
        "emdenoise_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "study": study.as_dict(),
            "train": {k: v for k, v in setting.train.as_dict().items() if k not in ("model", "max_train_images")},
            "test": {"tune_images": setting.tune_images},
        },
        "hardware": hardware(setting.device),
        "devices_used": devices,
        "data": {
            "data_dir": str(setting.data_dir),
            "source": card.get("source"),
            "image_shape": card.get("image_shape"),
            "n_train_available": card["splits"]["train"]["n"],
            "n_val": (card["splits"].get("val") or {}).get("n"),
            "n_test": len(setting.test),
            "data_range": setting.data_range,
            "data_range_definition": card.get("data_range_definition"),
            "has_dose": setting.test.dose is not None,
        },
        "train_sizes": sizes,
        "dose_bins": by_dose,
        "baselines": methods,
        "best_baseline": {"name": best[0], "psnr_mean": best[1]} if best else None,
        "structure_settings": setting.structure.settings(),
        "at_largest_size": structure,
        "generalisation": generalisation,
        "models": {
            name: _model_summary(by_size, sizes, best[1] if best else None) for name, by_size in per_model.items()
        },
        "cells": cell_rows,
        "failed_cells": [{k: r.get(k) for k in ("cell", "model", "train_size", "error")} for r in failed],
        "pending_cells": [c.name for c in cells if c.name not in {r["cell"] for r in results + failed}],
        "seconds": {
            "this_run": wall_seconds,
            "training_all_cells": sum(r["train"]["seconds"] for r in results),
            "evaluation_all_cells": sum(r["evaluation_seconds"] for r in results),
        },
    }
