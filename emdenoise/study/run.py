"""The study engine: running a cell with the training engine and the one timed evaluation loop, the classical
baselines scored once, results kept on disk by fingerprint.

A *cell* (:mod:`emdenoise.study.plan`) is one model trained on the first N pairs of the train split. The train
split is read once, with the largest N of the study; each cell trains on its first N pairs
(:func:`emdenoise.training.loop.train_model`, checkpoints and resume included) into
``cells/<model>-<N>/<model>/``, its files are committed with :func:`emdenoise.training.loop.publish`
(``cells/<model>-<N>/train_metrics.json`` beside them), and the best-on-val weights are scored on the test split
as a :class:`~emdenoise.evaluation.run.Network` by :func:`emdenoise.evaluation.run.run_method`, the loop the test
task runs. A cell's result depends on one fingerprint (:class:`~emdenoise.study.plan.CellJob`); a kept
``result.json`` with the same fingerprint is not computed again. The analysis and ``study.json`` are
:mod:`emdenoise.study.summary`; the task :mod:`emdenoise.tasks.study` describes the outputs.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emdenoise.data.splits import load_split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.evaluation import run as evaluation
from emdenoise.evaluation.scorer import Row, Scorer, dose_bins, finite
from emdenoise.io import modelfile
from emdenoise.layout import MODEL_FILE
from emdenoise.log import progress
from emdenoise.method import Identity, Method
from emdenoise.outputs import write_json_atomic
from emdenoise.runtime.context import Runtime
from emdenoise.study.plan import Cell, CellJob, Setting
from emdenoise.training import loop as training

RESULT_FILE = "result.json"
CELLS_DIR = "cells"
BASELINES_DIR = "baselines"


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


def _per_image(row: Row) -> dict[str, list[float | None]]:
    return {"psnr": [finite(v) for v in row.psnr], "ssim": [finite(v) for v in row.ssim]}


def _row_summary(scorer: Scorer, name: str, n_bins: int) -> dict[str, Any]:
    """The evaluation summary of a row (structure metrics included), plus its mean PSNR per dose bin (left out
    without dose), as written in the result files."""
    dose = scorer.split.dose
    by_dose = None if dose is None else dose_bins(dose, {name: scorer.rows[name]}, n_bins)["methods"][name]
    return scorer.summary(name).replace(psnr_by_dose=by_dose).to_json()


def _score(methods: list[Method], setting: Setting, scorers: list[Scorer]) -> None:
    """Every method over every scorer's split, with the one timed loop."""
    for method in methods:
        for scorer in scorers:
            evaluation.run_method(method, scorer, setting.study.batch_size, setting.log)


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
    rt = Runtime(setting.device, setting.precision, log=log)
    trained = training.train_model(
        cell.model, job.train, setting.cell_data(cell.size), setting.card, rt, cell_dir / cell.model
    )
    training.publish({cell.model: trained}, cell_dir, cell_dir / training.METRICS_FILE)
    result["train"] = _train_summary(trained.to_json(), time.perf_counter() - t0)

    scorer = setting.scorer(setting.test)
    other = setting.scorer(setting.generalisation) if setting.generalisation is not None else None
    t1 = time.perf_counter()
    path = cell_dir / cell.model / MODEL_FILE
    denoiser = evaluation.load_model(path, setting.device, setting.precision)
    method = evaluation.network(cell.name, path, denoiser, setting.study.batch_size, setting.data_range, log)
    _score([method], setting, [scorer] + ([other] if other is not None else []))
    row = scorer.rows[cell.name]
    result["test"] = _row_summary(scorer, cell.name, setting.study.dose_bins)
    if other is not None:
        result["generalisation"] = _row_summary(other, cell.name, setting.study.dose_bins)
    result["test"]["device"], result["test"]["precision"] = str(setting.device), setting.precision
    result["evaluation_seconds"] = time.perf_counter() - t1
    result["per_image"] = _per_image(row)
    result["status"] = "done"
    return result


def run_baselines(names: list[str], setting: Setting, out_dir: Path, peers: list[str] | None = None) -> dict[str, Any]:
    """Score the noisy input, each classical baseline and each peer network of ``study.peers`` (tuned on val)
    on the test images, once; kept in ``out_dir/baselines/result.json`` by fingerprint."""
    peers = peers or []
    config = {
        "baselines": names,
        **({"peers": peers} if peers else {}),  # absent without peers: earlier results keep their fingerprint
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

    n_bins = setting.study.dose_bins
    scorer = setting.scorer(setting.test)
    other = setting.scorer(setting.generalisation) if setting.generalisation is not None else None
    methods: list[Method] = [Identity()]
    if names or peers:
        val = load_split(setting.data_dir, "val", setting.tune_images)
        if len(val) == 0:
            raise InputError.at(
                setting.data_dir / "val.h5",
                "study.baselines",
                "expected validation pairs to tune "
                "the baselines on, found none; set preprocess.val_fraction > 0 and preprocess "
                "again, or set study.baselines: none",
            )
        methods += [evaluation.tune_baseline(name, val, setting.data_range, setting.log) for name in names]
        methods += [evaluation.tune_peer(name, val, setting.data_range, setting.log) for name in peers]
    _score(methods, setting, [scorer] + ([other] if other is not None else []))
    result = {
        "fingerprint": fingerprint,
        "config": config,
        "status": "done",
        "methods": {name: _row_summary(scorer, name, n_bins) for name in scorer.rows},
        "per_image": {name: _per_image(row) for name, row in scorer.rows.items()},
        "truth": scorer.truth_atoms(),
    }
    if other is not None:
        result["generalisation"] = {name: _row_summary(other, name, n_bins) for name in other.rows}
        result["generalisation_truth"] = other.truth_atoms()
    write_json_atomic(path, result)
    return result


def _compute_cell(job: CellJob, setting: Setting, cell_dir: Path) -> dict[str, Any]:
    """:func:`run_cell`, its result written atomically; a cell that fails at run time (diverged, out of memory)
    gives a failed result, so that the others go on."""
    cell = job.cell
    try:
        result = run_cell(job, setting, cell_dir)
    except RuntimeFailure as exc:
        setting.log.error("cell %s failed: %s", cell.name, exc.message)
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
        result = _compute_cell(job, setting, cell_dir)
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
