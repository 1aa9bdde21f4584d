"""The ``study`` task: fidelity, speed and training-data needs of every model, against the classical baselines.

The original benchmark study judged every denoiser on three things (fidelity of the denoised image, speed,
and how much training data it needs) and published none of its numbers. This task reruns that study in one
command. A *cell* is one model trained on one number of training pairs; for every cell of
``study.models`` x ``study.train_sizes`` it:

1. trains the model with the train task's own code (:func:`emdenoise.tasks.train.run`) on the first N pairs of
   the train split, into ``output_dir/cells/<model>-<N>/`` (model files, checkpoint, ``train_metrics.json``).
   The train task's checkpoints make an interrupted cell resume where it stopped;
2. evaluates the best-on-val weights on the test split with the test task's code
   (:func:`emdenoise.tasks.test.run_model`): per-image PSNR and SSIM with the dataset card's fixed data range,
   their mean and std, the mean PSNR per dose bin when the test split records the dose, and the inference
   speed in images/s (warm-up batch excluded);
3. writes ``output_dir/cells/<model>-<N>/result.json`` atomically. A rerun keeps every cell whose result was
   computed with the same configuration and skips it; a cell whose result is missing (or stale, or failed)
   is recomputed.

The classical baselines (``study.baselines``) and the noisy input are scored once, on the same test images,
tuned on ``test.tune_images`` validation pairs (:func:`emdenoise.tasks.test.run_baseline`), and kept in
``output_dir/baselines/result.json`` the same way.

Training settings: ``study.epochs``, ``batch_size``, ``lr``, ``patch_size``, ``seed`` and ``device`` override
the ``train:`` section, which supplies everything else (optimiser, schedule, loss, precision, model options,
resume). A cell trains for ``max(epochs, ceil(min_steps / steps per epoch))`` epochs. The study runs as one
process (not under torchrun), its cells one after another.

"Beats the best classical baseline": a strictly higher mean test PSNR than the classical row with the highest
mean test PSNR; the smallest training size where a model does so is reported, or "never within the sizes run".

Outputs in ``output_dir`` (each written atomically, and rewritten after every cell so that a long study can
be followed while it runs):

- ``study.json``: every summary number: configuration, hardware, data, baselines, each cell (training record,
  test metrics, speed, dose bins), per model the PSNR at each size and the smallest size that beats the best
  baseline. Per-image values are in each cell's ``result.json``;
- ``report.md``: the tables (fidelity per model at each size and per baseline, training data needed to beat
  the best classical baseline, speed, PSNR by dose) and the figures;
- ``psnr_vs_train_size.png``, ``psnr_vs_dose.png`` (when the data record the dose), ``fidelity_vs_speed.png``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from emdenoise import __version__, models, report
from emdenoise.engine import distributed, runtime
from emdenoise.io import modelfile
from emdenoise.tasks.context import TaskContext
from emdenoise.data.splits import Split, load_card, load_split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.outputs import write_json_atomic, write_text_atomic
from emdenoise.params import StudyParams, TrainParams
from emdenoise.layout import CARD, MODEL_FILE
from emdenoise.log import progress
from emdenoise.tasks import train as train_task
from emdenoise.engine import evaluation, training

STUDY_FORMAT = "emdenoise-study/1"
RESULT_FILE = "result.json"
CELLS_DIR = "cells"
BASELINES_DIR = "baselines"
FIGURES = {"train_size": "psnr_vs_train_size.png", "dose": "psnr_vs_dose.png", "speed": "fidelity_vs_speed.png"}
NEVER = "never within the sizes run"


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


def plan_cells(study: dict) -> list[Cell]:
    """Every (model, size) cell, smallest size first (the cheap cells finish first), models in registry order."""
    names = list(models.names()) if study["models"] == "all" else list(study["models"])
    return [Cell(name, size, cell_epochs(size, study["batch_size"], study["epochs"], study["min_steps"]))
            for size in sorted(study["train_sizes"]) for name in names]


def cell_train_section(train: TrainParams, study: StudyParams, cell: Cell) -> TrainParams:
    """The ``train:`` section a cell is trained with: the study's settings over the train section."""
    return train.replace(model=[cell.model], epochs=cell.epochs, batch_size=study.batch_size, lr=study.lr,
                         max_train_images=cell.size, patch_size=study.patch_size, seed=study.seed,
                         device=study.device)


def cell_config(cell: Cell, train: dict, evaluation: dict, data: str) -> dict:
    """What a cell's result depends on: the training configuration (as the train task fingerprints it),
    the evaluation settings and the data. Device and precision are left out, as in the train task."""
    return {"model": cell.model, "train_size": cell.size, "options": models.options_from_train(cell.model, train),
            **{key: train[key] for key in training.FINGERPRINT_KEYS}, "evaluation": evaluation, "data_card": data}


# --------------------------------------------------------------------------------------------------------------
# Analysis: the best baseline and the smallest size that beats it
# --------------------------------------------------------------------------------------------------------------

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_baseline(methods: Mapping[str, dict]) -> tuple[str, float] | None:
    """The classical row with the highest mean PSNR, as (name, psnr); None when there is none."""
    scored = [(row["psnr_mean"], name) for name, row in methods.items()
              if row.get("kind") == "classical" and _is_number(row.get("psnr_mean"))]
    if not scored:
        return None
    psnr, name = max(scored)
    return name, float(psnr)


def smallest_winning_size(psnr_by_size: Mapping[int, float | None], target: float | None) -> int | None:
    """The smallest training size whose mean PSNR is strictly above ``target`` (None: never, or no target)."""
    if not _is_number(target):
        return None
    wins = [size for size, psnr in psnr_by_size.items() if _is_number(psnr) and psnr > target]
    return min(wins) if wins else None


# --------------------------------------------------------------------------------------------------------------
# Results kept on disk
# --------------------------------------------------------------------------------------------------------------

def read_result(path: Path, fingerprint: str, log) -> dict | None:
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


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _per_image(row: evaluation.Row) -> dict:
    return {"psnr": [_finite(v) for v in row.psnr], "ssim": [_finite(v) for v in row.ssim]}


def _row_summary(name: str, row: evaluation.Row, dose: np.ndarray | None, n_bins: int) -> dict:
    """The test task's summary of a row, plus its mean PSNR per dose bin (None without dose)."""
    summary = evaluation.summarise(row)
    summary["psnr_by_dose"] = None if dose is None else evaluation.dose_bins(dose, {name: row}, n_bins)["methods"][name]
    return summary


# --------------------------------------------------------------------------------------------------------------
# One cell, the baselines
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Setting:
    """What every cell shares."""

    ctx: object               # the study's TaskContext
    test: Split
    data_range: float
    device: torch.device
    precision: str
    evaluation: dict
    data_fingerprint: str


def run_cell(cell: Cell, setting: Setting, cell_dir: Path) -> dict:
    """Train and evaluate one cell (the train task resumes or skips what its checkpoint already holds)."""
    ctx = setting.ctx
    study = ctx.params.study
    train = cell_train_section(ctx.params.train, study, cell)
    config = cell_config(cell, train, setting.evaluation, setting.data_fingerprint)
    result = {"cell": cell.name, "model": cell.model, "train_size": cell.size, "epochs": cell.epochs,
              "fingerprint": modelfile.fingerprint(config), "config": config}

    t0 = time.perf_counter()
    train_ctx = TaskContext("train", dataclasses.replace(ctx.params, train=train),
                            {"data_dir": ctx.paths["data_dir"], "parameters_file": ctx.paths.get("parameters_file"),
                             "model_dir": cell_dir, "output_dir": cell_dir, "log_dir": ctx.paths.get("log_dir")},
                            ctx.log, ctx.debug)
    train_task.run(train_ctx)
    train_wall = time.perf_counter() - t0
    record = json.loads((cell_dir / training.METRICS_FILE).read_text(encoding="utf-8"))["models"][cell.model]
    epochs = record.get("epochs") or []
    result["train"] = {
        "parameters": record.get("parameters"), "n_train": record.get("n_train"), "n_val": record.get("n_val"),
        "device": record.get("device"), "precision": record.get("precision"),
        "best_epoch": record.get("best_epoch"), "best_val_psnr": record.get("best_val_psnr"),
        "final_train_loss": epochs[-1]["train_loss"] if epochs else None,
        "images_per_s": statistics.median(e["images_per_s"] for e in epochs) if epochs else None,
        "seconds": sum(e["seconds"] for e in epochs), "wall_seconds_this_run": train_wall, "epochs": epochs}

    scorer = evaluation.Scorer(setting.test, setting.data_range, [])
    t1 = time.perf_counter()
    evaluation.run_model(cell.name, cell_dir / cell.model / MODEL_FILE, scorer, setting.device,
                        setting.precision, study["batch_size"], ctx.log)
    row = scorer.rows[cell.name]
    result["test"] = _row_summary(cell.name, row, setting.test.dose, study["dose_bins"])
    result["test"]["device"], result["test"]["precision"] = str(setting.device), setting.precision
    result["evaluation_seconds"] = time.perf_counter() - t1
    result["per_image"] = _per_image(row)
    result["status"] = "done"
    return result


def run_baselines(names: list[str], setting: Setting, out_dir: Path) -> dict:
    """Score the noisy input and each classical baseline (tuned on val) on the test images, once."""
    ctx = setting.ctx
    tune_images = ctx.params.test.tune_images
    config = {"baselines": names, "tune_images": tune_images, "evaluation": setting.evaluation,
              "data_card": setting.data_fingerprint}
    fingerprint = modelfile.fingerprint(config)
    path = out_dir / BASELINES_DIR / RESULT_FILE
    kept = read_result(path, fingerprint, ctx.log)
    if kept is not None:
        ctx.log.info("baselines: kept from a previous run (%s)", path)
        return kept

    test, n_bins, batch = setting.test, ctx.params.study.dose_bins, ctx.params.study.batch_size
    scorer = evaluation.Scorer(test, setting.data_range, [])
    noisy = scorer.add_row("noisy", "input")
    for first in range(0, len(test), batch):
        scorer.score(noisy, first, test.noisy[first:first + batch])
    if names:
        val = load_split(ctx.paths["data_dir"], "val", tune_images)
        if len(val) == 0:
            raise InputError.at(Path(ctx.paths["data_dir"]) / "val.h5", "study.baselines", "expected validation "
                                "pairs to tune the baselines on, found none; set preprocess.val_fraction > 0 and "
                                "preprocess again, or set study.baselines: none")
        for name in names:
            evaluation.run_baseline(name, val, scorer, setting.data_range, batch, ctx.log)
    result = {"fingerprint": fingerprint, "config": config, "status": "done",
              "methods": {name: _row_summary(name, row, test.dose, n_bins) for name, row in scorer.rows.items()},
              "per_image": {name: _per_image(row) for name, row in scorer.rows.items()}}
    write_json_atomic(path, result)
    return result


# --------------------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------------------

def _check_inputs(study: dict, card: dict, data_dir: Path, where) -> None:
    """Training sizes and patch size that the data can honour, or a one-line InputError."""
    card_path = Path(data_dir) / CARD
    n_train = (card.get("splits") or {}).get("train", {}).get("n")
    if isinstance(n_train, bool) or not isinstance(n_train, int):
        raise InputError.at(card_path, "splits.train.n", f"expected the number of training pairs, got {n_train!r}; "
                            "run the preprocess task again")
    too_big = [size for size in study["train_sizes"] if size > n_train]
    if too_big:
        raise InputError.at(where, "study.train_sizes", f"expected sizes of at most {n_train} (the training pairs "
                            f"in {data_dir}), got {', '.join(map(str, too_big))}")
    shape = card.get("image_shape")
    if study["patch_size"] and isinstance(shape, list) and len(shape) == 2 and study["patch_size"] > min(shape):
        raise InputError.at(where, "study.patch_size", f"expected 0 or at most the image side {min(shape)}, "
                            f"got {study['patch_size']}")


def hardware(device: torch.device) -> dict:
    """Where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "emdenoise": __version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(ctx) -> None:
    study, log = ctx.params.study, ctx.log
    where = ctx.paths.get("parameters_file") or "parameters"
    data_dir, out_dir = Path(ctx.paths["data_dir"]), Path(ctx.paths["output_dir"])
    started = time.perf_counter()
    if distributed.from_env().enabled:
        raise InputError.at("WORLD_SIZE", None, "expected a single process: the study trains its cells one after "
                            "another in one process; run it without torchrun")

    baseline_names = evaluation.select_baselines(study["baselines"], where, log, field="study.baselines")
    card = load_card(data_dir)  # checked: data_range > 0, normalisation std > 0
    data_range = float(card["data_range"])
    _check_inputs(study, card, data_dir, where)
    device = runtime.resolve_device(study["device"], "study.device", ctx.where)
    precision = runtime.resolve_precision(ctx.params.train["precision"], device, "train.precision", ctx.where)
    test = load_split(data_dir, "test", study["max_test_images"])
    if len(test) == 0:
        raise InputError.at(data_dir / "test.h5", "noisy", "expected at least one test pair, found none")

    cells = plan_cells(study)
    setting = Setting(ctx, test, data_range, device, precision,
                      {"max_test_images": study["max_test_images"], "n_test": len(test),
                       "dose_bins": study["dose_bins"]},
                      training.data_fingerprint(card))
    log.info("study: %d cells (%s x sizes %s), %d baseline(s); %d test images of %dx%d, R = %.6g; device %s, %s",
             len(cells), ", ".join(dict.fromkeys(c.model for c in cells)), sorted(study["train_sizes"]),
             len(baseline_names), len(test), *test.noisy.shape[1:], data_range, device, precision)
    out_dir.mkdir(parents=True, exist_ok=True)

    baselines = run_baselines(baseline_names, setting, out_dir)
    results, failed = [], []

    def publish() -> tuple[dict, dict]:
        """(Re)write study.json, the figures and report.md from the cells finished so far."""
        summary = summarise_study(ctx, setting, cells, baselines, results, failed, card, device,
                                  time.perf_counter() - started)
        write_json_atomic(out_dir / "study.json", summary)
        figures = write_figures(out_dir, summary)
        write_text_atomic(out_dir / "report.md", markdown(summary, figures))
        return summary, figures

    for i, cell in enumerate(progress(cells, total=len(cells), desc="study", unit="cell"), 1):
        cell_dir = out_dir / CELLS_DIR / cell.name
        train = cell_train_section(ctx.params.train, study, cell)
        fingerprint = modelfile.fingerprint(cell_config(cell, train, setting.evaluation, setting.data_fingerprint))
        result = read_result(cell_dir / RESULT_FILE, fingerprint, log)
        if result is not None:
            log.info("cell %d/%d %s: kept from a previous run (PSNR %.2f dB)", i, len(cells), cell.name,
                     result["test"]["psnr_mean"])
            results.append(result)
            continue
        log.info("cell %d/%d %s: training on %d pairs for %d epochs, then testing", i, len(cells), cell.name,
                 cell.size, cell.epochs)
        try:
            result = run_cell(cell, setting, cell_dir)
        except RuntimeFailure as exc:  # a diverged or out-of-memory cell: note it, go on with the others
            log.error("cell %s failed: %s", cell.name, exc.message)
            result = {"cell": cell.name, "model": cell.model, "train_size": cell.size, "epochs": cell.epochs,
                      "fingerprint": fingerprint, "status": "failed", "error": exc.message}
        write_json_atomic(cell_dir / RESULT_FILE, result)
        if result["status"] == "done":
            log.info("cell %d/%d %s: PSNR %.2f dB, SSIM %.4f, %.1f images/s", i, len(cells), cell.name,
                     result["test"]["psnr_mean"], result["test"]["ssim_mean"],
                     result["test"]["images_per_s"] or math.nan)
        (results if result["status"] == "done" else failed).append(result)
        if i < len(cells):
            publish()  # partial results to look at while a long study runs

    summary, figures = publish()
    best = summary["best_baseline"]
    for name, info in summary["models"].items() if best else ():
        win = info["smallest_winning_size"]
        log.info("%s beats the best baseline (%s, %.2f dB): %s", name, best["name"], best["psnr_mean"],
                 f"from {win} training pairs" if win is not None else NEVER)
    log.info("wrote study.json, report.md, %s to %s", ", ".join(figures.values()), out_dir)
    if failed:
        raise RuntimeFailure(f"{len(failed)} of {len(cells)} cells failed ({', '.join(r['cell'] for r in failed)}); "
                             f"see {out_dir / 'report.md'}; a rerun retries them and keeps the others")


# --------------------------------------------------------------------------------------------------------------
# study.json
# --------------------------------------------------------------------------------------------------------------

def summarise_study(ctx, setting: Setting, cells: list[Cell], baselines: dict, results: list[dict],
                    failed: list[dict], card: dict, device: torch.device, wall_seconds: float) -> dict:
    """Everything ``study.json`` holds (per-image values stay in the cells' result files)."""
    study = ctx.params.study
    methods = baselines["methods"]
    best = best_baseline(methods)
    sizes = sorted(study["train_sizes"])
    cell_rows = []
    for r in results:
        cell_rows.append({key: r[key] for key in ("cell", "model", "train_size", "epochs")}
                         | {"train": {k: v for k, v in r["train"].items() if k != "epochs"},
                            "train_epochs": r["train"]["epochs"], "test": r["test"],
                            "evaluation_seconds": r["evaluation_seconds"]})
    per_model: dict[str, dict] = {}
    for cell in cells:
        per_model.setdefault(cell.model, {})
    for r in cell_rows:
        per_model[r["model"]][r["train_size"]] = r
    models_out = {}
    for name, by_size in per_model.items():
        psnr = {size: by_size[size]["test"]["psnr_mean"] for size in sizes if size in by_size}
        speeds = [r["test"]["images_per_s"] for r in by_size.values() if _is_number(r["test"]["images_per_s"])]
        train_speeds = [r["train"]["images_per_s"] for r in by_size.values() if _is_number(r["train"]["images_per_s"])]
        win = smallest_winning_size(psnr, best[1] if best else None)
        largest = max(by_size) if by_size else None
        models_out[name] = {
            "parameters": next((r["train"]["parameters"] for r in by_size.values()), None),
            "psnr_by_size": {str(s): v for s, v in psnr.items()},
            "ssim_by_size": {str(s): by_size[s]["test"]["ssim_mean"] for s in sizes if s in by_size},
            "images_per_s": statistics.median(speeds) if speeds else None,
            "train_images_per_s": statistics.median(train_speeds) if train_speeds else None,
            "largest_size": largest,
            "psnr_by_dose_at_largest_size": by_size[largest]["test"]["psnr_by_dose"] if largest else None,
            "smallest_winning_size": win,
            "psnr_at_smallest_winning_size": psnr.get(win) if win is not None else None}
    by_dose = None
    if setting.test.dose is not None:
        by_dose = {k: v for k, v in evaluation.dose_bins(setting.test.dose, {}, study["dose_bins"]).items()
                   if k != "methods"}
    devices = sorted({r["test"]["device"] for r in results} | {r["train"]["device"] for r in results if
                                                               r["train"].get("device")})
    return {
        "format": STUDY_FORMAT, "emdenoise_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"study": study.as_dict(), "train": {k: v for k, v in ctx.params.train.as_dict().items()
                                             if k not in ("model", "max_train_images")},
                   "test": {"tune_images": ctx.params.test.tune_images}},
        "hardware": hardware(device), "devices_used": devices,
        "data": {"data_dir": str(ctx.paths["data_dir"]), "source": card.get("source"),
                 "image_shape": card.get("image_shape"), "n_train_available": card["splits"]["train"]["n"],
                 "n_val": (card["splits"].get("val") or {}).get("n"), "n_test": len(setting.test),
                 "data_range": setting.data_range, "data_range_definition": card.get("data_range_definition"),
                 "has_dose": setting.test.dose is not None},
        "train_sizes": sizes, "dose_bins": by_dose,
        "baselines": methods, "best_baseline": {"name": best[0], "psnr_mean": best[1]} if best else None,
        "models": models_out, "cells": cell_rows,
        "failed_cells": [{k: r.get(k) for k in ("cell", "model", "train_size", "error")} for r in failed],
        "pending_cells": [c.name for c in cells if c.name not in {r["cell"] for r in results + failed}],
        "seconds": {"this_run": wall_seconds,
                    "training_all_cells": sum(r["train"]["seconds"] for r in results),
                    "evaluation_all_cells": sum(r["evaluation_seconds"] for r in results)},
    }


# --------------------------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------------------------

def _table(header: Sequence[str], align: str, rows: list[Sequence[str]]) -> list[str]:
    """A markdown table; ``align`` has one letter per column, l or r."""
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _num(value, fmt: str) -> str:
    return report.num(value if _is_number(value) else None, fmt)


def _duration(seconds: float) -> str:
    """A duration in the unit that reads best: 42 s, 12.5 min, 3.2 h, 4.1 days."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _baseline_order(methods: Mapping[str, dict]) -> list[str]:
    """Classical rows by PSNR, best first, then the noisy input."""
    return [n for n in report.ranked(methods) if methods[n].get("kind") == "classical"] + \
        [n for n in methods if methods[n].get("kind") == "input"]


def markdown(summary: dict, figures: Mapping[str, str]) -> str:
    """The whole ``report.md``."""
    sizes, methods, models_out = summary["train_sizes"], summary["baselines"], summary["models"]
    data, best, cfg = summary["data"], summary["best_baseline"], summary["config"]["study"]
    cells = {(c["model"], c["train_size"]): c for c in summary["cells"]}
    hw = summary["hardware"]
    lines = ["# em_denoise study: fidelity, speed and training data", "",
             f"Created {summary['created']} by emdenoise {summary['emdenoise_version']} on {hw['device']}"
             + (f" ({hw['gpu']})" if hw.get("gpu") else "") + f", CPU {hw['cpu']} ({hw['cpu_count']} cores, "
             f"{hw['torch_threads']} torch threads), torch {hw['torch']}.", "",
             f"Data: {data['data_dir']} (source {data['source']}), images {data['image_shape']}, "
             f"{data['n_train_available']} training pairs available, {data['n_test']} test images. "
             f"PSNR = 10 log10(R^2 / MSE) per image with the fixed R = {data['data_range']:.6g} "
             f"({data['data_range_definition']}), then the mean over the test images; SSIM with an 11x11 Gaussian "
             "window (sigma 1.5) and the same R.", "",
             f"Each model is trained on the first N training pairs for {cfg['epochs']} epochs"
             + (f" (at least {cfg['min_steps']} optimiser steps)" if cfg["min_steps"] else "")
             + f", batch {cfg['batch_size']}, learning rate {cfg['lr']:g}, "
             + (f"{cfg['patch_size']}-pixel crops" if cfg["patch_size"] else "whole images")
             + f", seed {cfg['seed']}; the weights with the best validation PSNR are tested. "
             + report.BASELINE_NOTE, ""]
    if len(summary["devices_used"]) > 1:
        lines += [f"Note: the cells ran on more than one device ({', '.join(summary['devices_used'])}); speeds "
                  "compare only within a device.", ""]
    if summary["pending_cells"]:
        lines += [f"**In progress**: {len(summary['cells'])} cells finished, {len(summary['pending_cells'])} to go "
                  f"({', '.join(summary['pending_cells'])}); this report is rewritten after every cell.", ""]
    if summary["failed_cells"]:
        lines += ["**Failed cells** (a rerun retries them): "
                  + "; ".join(f"{c['cell']}: {c['error']}" for c in summary["failed_cells"]), ""]

    # fidelity
    target = best["psnr_mean"] if best else None
    lines += ["## Fidelity: mean test PSNR (dB) by number of training pairs", "",
              (f"**Bold**: above the best classical baseline, {best['name']} at {best['psnr_mean']:.2f} dB."
               if best else "No classical baseline was run."), ""]
    rows = []
    for name in models_out:
        row = [name]
        for size in sizes:
            psnr = (cells.get((name, size)) or {}).get("test", {}).get("psnr_mean")
            text = _num(psnr, ".2f")
            row.append(f"**{text}**" if _is_number(psnr) and _is_number(target) and psnr > target else text)
        rows.append(row)
    lines += _table(["model"] + [str(s) for s in sizes], "l" + "r" * len(sizes), rows) + [""]
    lines += ["Mean test SSIM by number of training pairs:", ""]
    rows = [[name] + [_num((cells.get((name, s)) or {}).get("test", {}).get("ssim_mean"), ".4f") for s in sizes]
            for name in models_out]
    lines += _table(["model"] + [str(s) for s in sizes], "l" + "r" * len(sizes), rows) + [""]
    lines += ["Baselines (no training; the same test images):", ""]
    rows = [[name, methods[name]["kind"], f"{_num(methods[name]['psnr_mean'], '.2f')} ± "
             f"{_num(methods[name]['psnr_std'], '.2f')}", f"{_num(methods[name]['ssim_mean'], '.4f')} ± "
             f"{_num(methods[name]['ssim_std'], '.4f')}", report.settings(methods[name])]
            for name in _baseline_order(methods)]
    lines += _table(["method", "kind", "PSNR (dB)", "SSIM", "tuned setting"], "llrrl", rows) + [""]

    # training data
    lines += ["## Training data needed to beat the best classical baseline", ""]
    rows = []
    for name, info in models_out.items():
        win = info["smallest_winning_size"]
        at_largest = info["psnr_by_size"].get(str(info["largest_size"]))
        rows.append([name, str(win) if win is not None else NEVER,
                     _num(info["psnr_at_smallest_winning_size"], ".2f"),
                     _num(info["psnr_at_smallest_winning_size"] - target, "+.2f") if win is not None else "-",
                     f"{_num(at_largest, '.2f')} ({info['largest_size']})" if info["largest_size"] else "-"])
    lines += _table(["model", "smallest N", "PSNR at N (dB)", "margin (dB)", "PSNR at the largest N"], "lrrrr",
                    rows) + [""]

    # speed
    lines += ["## Speed", "",
              "Inference images/s on the test images (deep models: batches of "
              f"{cfg['batch_size']} on {hw['device']}, warm-up batch excluded, median over the model's cells; "
              "classical filters: one image at a time on the CPU). Training images/s: median over the model's "
              "cells and epochs.", ""]
    rows = [[name, "deep", _num(info["parameters"], ","), _num(info["images_per_s"], ".1f"),
             _num(1000.0 / info["images_per_s"] if _is_number(info["images_per_s"]) else None, ".2f"),
             _num(info["train_images_per_s"], ".1f")] for name, info in models_out.items()]
    rows += [[name, "classical", "-", _num(methods[name]["images_per_s"], ".1f"),
              _num(1000.0 * methods[name]["seconds_per_image"] if _is_number(methods[name]["seconds_per_image"])
                   else None, ".2f"), "-"] for name in _baseline_order(methods) if methods[name]["kind"] == "classical"]
    lines += _table(["method", "kind", "parameters", "images/s", "ms/image", "training images/s"], "llrrrr",
                    rows) + [""]

    # dose
    bins = (summary["dose_bins"] or {}).get("bins")
    lines += ["## Mean PSNR (dB) by dose", ""]
    if bins:
        lines += ["Test images sorted by dose (electrons per pixel at the beam centre) and cut into bins of about "
                  "equal size; models at their largest training size.", ""]
        rows = [[f"{name} ({info['largest_size']})"] + [_num(v, ".2f") for v in info["psnr_by_dose_at_largest_size"]]
                for name, info in models_out.items() if info["psnr_by_dose_at_largest_size"]]
        rows += [[name] + [_num(v, ".2f") for v in methods[name]["psnr_by_dose"]] for name in _baseline_order(methods)]
        lines += _table(["method"] + [f"{b['dose_min']:.3g}-{b['dose_max']:.3g} (n={b['n']})" for b in bins],
                        "l" + "r" * len(bins), rows) + [""]
    else:
        lines += ["The test split records no dose.", ""]

    # figures and cost
    lines += ["## Figures", ""] + [f"![{key}]({file})" for key, file in figures.items()] + [""]
    sec = summary["seconds"]
    lines += ["## Cost", "",
              f"Training, all cells: {_duration(sec['training_all_cells'])}; testing: "
              f"{_duration(sec['evaluation_all_cells'])}; this run (cells kept from earlier runs cost nothing): "
              f"{_duration(sec['this_run'])}. Per cell:", ""]
    rows = [[c["cell"], str(c["epochs"]), _num(c["train"]["seconds"], ".1f"), _num(c["train"]["images_per_s"], ".1f"),
             str(c["train"]["best_epoch"]), _num(c["train"]["best_val_psnr"], ".2f")] for c in summary["cells"]]
    lines += _table(["cell", "epochs", "training s", "training images/s", "best epoch", "best val PSNR"], "lrrrrr",
                    rows)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------

def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _finite_values(values) -> list[float]:
    return [float(v) for v in values if _is_number(v)]


def _noisy_on_scale(ax, shown: Sequence[float], noisy: Sequence[float]) -> bool:
    """Fit the y axis to the ``shown`` values, and to the noisy input's when it lies close enough.

    The noisy input usually scores far below every method (5 dB against 20-30 dB here): drawn on the same
    axis it would squash the differences that matter. It is drawn when it lies within the shown values'
    spread (at least 3 dB) below them; otherwise it is left off the axis (the caller says so in the legend).
    """
    shown, noisy = _finite_values(shown), _finite_values(noisy)
    if not shown:
        return bool(noisy)
    lo, hi = min(shown), max(shown)
    on_scale = bool(noisy) and min(noisy) >= lo - max(3.0, hi - lo)
    if on_scale:
        lo, hi = min(lo, *noisy), max(hi, *noisy)
    pad = max(0.5, 0.08 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    return on_scale


def _off_scale_handle(label: str, values: Sequence[float]):
    """A legend entry for the noisy input left off the axis, giving its values."""
    from matplotlib.lines import Line2D

    values = _finite_values(values)
    text = f"{min(values):.1f}" if max(values) - min(values) < 0.05 else f"{min(values):.1f}-{max(values):.1f}"
    return Line2D([], [], linestyle=":", color=report.KIND_COLOURS["input"], label=f"{label} ({text} dB, off scale)")


def _classical_colour(i: int, n_models: int) -> str:
    return f"C{(n_models + i) % 10}"


def plot_psnr_vs_train_size(dest: Path, summary: dict) -> None:
    """Mean test PSNR against the number of training pairs (log x), one line per model; every baseline as a
    horizontal line (the noisy input too, when on scale)."""
    from matplotlib.lines import Line2D

    models_out, methods = summary["models"], summary["baselines"]
    colours = _colours(list(models_out))
    fig = report.figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    shown = []
    for name, info in models_out.items():
        points = sorted((int(s), v) for s, v in info["psnr_by_size"].items() if _is_number(v))
        if points:
            ax.plot(*zip(*points), marker="o", color=colours[name], label=name)
            shown += [v for _, v in points]
    classical = [n for n in _baseline_order(methods) if methods[n]["kind"] == "classical"]
    for i, name in enumerate(classical):
        if _is_number(methods[name]["psnr_mean"]):
            ax.axhline(methods[name]["psnr_mean"], color=_classical_colour(i, len(models_out)), linestyle="--",
                       linewidth=1, label=f"{name} (no training)")
            shown.append(methods[name]["psnr_mean"])
    noisy = [methods["noisy"]["psnr_mean"]] if "noisy" in methods else []
    handles, _ = ax.get_legend_handles_labels()
    if _noisy_on_scale(ax, shown, noisy):
        ax.axhline(noisy[0], color=report.KIND_COLOURS["input"], linestyle=":", linewidth=1)
        handles.append(Line2D([], [], linestyle=":", color=report.KIND_COLOURS["input"], label="noisy input"))
    elif _finite_values(noisy):
        handles.append(_off_scale_handle("noisy input", noisy))
    ax.set_xscale("log")
    ax.set_xticks(summary["train_sizes"])
    ax.set_xticklabels([str(s) for s in summary["train_sizes"]], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training pairs")
    ax.set_ylabel("mean test PSNR (dB)")
    ax.set_title(f"{summary['data']['n_test']} test images, R = {summary['data']['data_range']:.4g}", fontsize=9)
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    report.save(fig, dest)


def plot_psnr_vs_dose(dest: Path, summary: dict) -> None:
    """Mean PSNR per dose bin (log x at each bin's geometric centre): models at their largest size, baselines,
    the noisy input (in the legend only when off scale)."""
    bins = summary["dose_bins"]["bins"]
    centres = [math.sqrt(max(b["dose_min"], 1e-12) * max(b["dose_max"], 1e-12)) for b in bins]
    models_out, methods, colours = summary["models"], summary["baselines"], _colours(list(summary["models"]))
    fig = report.figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    shown = []

    def line(values, label, **style):
        points = [(c, v) for c, v in zip(centres, values) if _is_number(v)]
        if points:
            ax.plot(*zip(*points), label=label, **style)
            shown.extend(v for _, v in points)

    for name, info in models_out.items():
        if info["psnr_by_dose_at_largest_size"]:
            line(info["psnr_by_dose_at_largest_size"], f"{name} ({info['largest_size']} pairs)", marker="o",
                 color=colours[name])
    classical = [n for n in _baseline_order(methods) if methods[n]["kind"] == "classical"]
    for i, name in enumerate(classical):
        line(methods[name]["psnr_by_dose"], name, marker="s", markersize=4, linestyle="--",
             color=_classical_colour(i, len(models_out)))
    noisy = methods["noisy"]["psnr_by_dose"] if "noisy" in methods else []
    if _noisy_on_scale(ax, shown, noisy):
        line(noisy, "noisy input", marker="x", linestyle=":", color=report.KIND_COLOURS["input"])
        handles, _ = ax.get_legend_handles_labels()
    else:
        handles, _ = ax.get_legend_handles_labels()
        if _finite_values(noisy):
            handles.append(_off_scale_handle("noisy input", noisy))
    ax.set_xscale("log")
    ax.set_xlabel("dose, electrons per pixel at the beam centre (bin centre)")
    ax.set_ylabel("mean test PSNR (dB)")
    ax.legend(handles=handles, fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    report.save(fig, dest)


def plot_fidelity_vs_speed(dest: Path, summary: dict) -> None:
    """Mean test PSNR against inference images/s (log x): models at their largest size, the baselines."""
    from matplotlib.lines import Line2D

    models_out, methods = summary["models"], summary["baselines"]
    points = [(info["images_per_s"], info["psnr_by_size"].get(str(info["largest_size"])), name, "deep")
              for name, info in models_out.items()]
    points += [(methods[n]["images_per_s"], methods[n]["psnr_mean"], n, "classical")
               for n in _baseline_order(methods) if methods[n]["kind"] == "classical"]
    points = [p for p in points if _is_number(p[0]) and p[0] > 0 and _is_number(p[1])]
    fig = report.figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    for speed, psnr, name, kind in points:
        ax.scatter([speed], [psnr], color=report.KIND_COLOURS[kind], s=30)
        ax.annotate(name, (speed, psnr), xytext=(4, 3), textcoords="offset points", fontsize=8)
    handles = [Line2D([], [], marker="o", linestyle="", color=report.KIND_COLOURS[k], label=label)
               for k, label in (("deep", "deep model (largest training size)"), ("classical", "classical filter"))]
    noisy = [methods["noisy"]["psnr_mean"]] if "noisy" in methods else []
    if _noisy_on_scale(ax, [p[1] for p in points], noisy):
        ax.axhline(noisy[0], color=report.KIND_COLOURS["input"], linestyle=":", linewidth=1)
        handles.append(Line2D([], [], linestyle=":", color=report.KIND_COLOURS["input"], label="noisy input"))
    elif _finite_values(noisy):
        handles.append(_off_scale_handle("noisy input", noisy))
    ax.set_xscale("log")
    ax.set_xlabel(f"inference images/s (deep models: batches of {summary['config']['study']['batch_size']} on "
                  f"{summary['hardware']['device']}; filters: one image at a time on the CPU)")
    ax.set_ylabel("mean test PSNR (dB)")
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    report.save(fig, dest)


def write_figures(out_dir: Path, summary: dict) -> dict[str, str]:
    """Draw the figures the data allow; returns figure key -> file name."""
    written = {}
    plot_psnr_vs_train_size(out_dir / FIGURES["train_size"], summary)
    written["train_size"] = FIGURES["train_size"]
    if summary["dose_bins"]:
        plot_psnr_vs_dose(out_dir / FIGURES["dose"], summary)
        written["dose"] = FIGURES["dose"]
    plot_fidelity_vs_speed(out_dir / FIGURES["speed"], summary)
    written["speed"] = FIGURES["speed"]
    return written
