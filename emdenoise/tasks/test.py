"""The ``test`` task: evaluate the trained denoisers against the noisy input and classical baselines.

Rows of the table, all scored on the same test images against the CLEAN test images:

- ``noisy``: the input itself (what doing nothing scores);
- each classical baseline of ``test.baselines`` (:mod:`emdenoise.engine.baselines`), its parameter and a global
  gain/offset tuned on ``test.tune_images`` validation pairs;
- each trained model of ``test.models`` (``all``: every ``model_dir/<name>/em_denoise_model.h5``), run in
  batches of ``test.batch_size`` on ``test.device`` with ``test.precision``; a warm-up batch is run first
  and left out of the timing.

Metrics, per image then averaged over images (mean and population std): PSNR with the fixed data range R from
the dataset card (never from the prediction, never 255), SSIM (11x11 Gaussian window, sigma 1.5, same R),
MSE; speed as images/s and seconds per image. When the test split carries the dose, the mean PSNR per dose
bin too.

Outputs in ``output_dir``: ``test_metrics.json``, ``per_image.csv``, ``results.md``, ``comparison.png`` (noisy /
each method / clean for ``test.figure_images`` test images) and ``psnr_bar.png``. All or nothing: every model
file is loaded before any work, every output is computed and drawn before any is written, then all are
written under temporary names and renamed into place together, so a failed run leaves the outputs of an
earlier one as they were (never a new ``test_metrics.json`` beside an old ``psnr_bar.png``).
"""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import numpy as np
import torch

from emdenoise import report
from emdenoise.data.splits import load_card, load_split
from emdenoise.errors import InputError
from emdenoise.outputs import atomic_path, json_text
from emdenoise.layout import MODEL_FILE
from emdenoise.engine.evaluation import (Scorer, dose_bins, find_models, load_model, run_baseline, run_model,
                                         select_baselines, summarise)
from emdenoise.tasks.context import TaskContext

# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------

def per_image_csv(scorer: Scorer) -> str:
    dose = scorer.split.dose
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index"] + (["dose"] if dose is not None else []) + ["method", "psnr", "ssim", "mse"])
    for name, row in scorer.rows.items():
        for i in range(row.n):
            writer.writerow([i] + ([f"{dose[i]:.6g}"] if dose is not None else [])
                            + [name, f"{row.psnr[i]:.6f}", f"{row.ssim[i]:.6f}", f"{row.mse[i]:.6e}"])
    return buf.getvalue()


def figure_indices(n: int, k: int) -> list[int]:
    """``k`` test image indices spread evenly over the split (first and last included)."""
    if k <= 0 or n <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(k, n))})


def figures(scorer: Scorer, metrics: dict, indices: list[int]) -> dict:
    """File name -> drawn figure: ``psnr_bar.png``, and ``comparison.png`` when ``indices`` is not empty."""
    drawn = {"psnr_bar.png": report.psnr_bar_figure(metrics)}
    if indices:
        split = scorer.split
        methods = [name for name in scorer.rows if name != "noisy"]
        labels = [f"test #{i}" + (f", dose {split.dose[i]:.3g}" if split.dose is not None else "") for i in indices]
        drawn["comparison.png"] = report.comparison_figure(
            split.noisy[indices], split.clean[indices],
            {name: np.stack([scorer.rows[name].figure[i] for i in indices]) for name in methods},
            {name: [row.psnr[i] for i in indices] for name, row in scorer.rows.items()}, labels)
    return drawn


def write_outputs(out_dir: Path, outputs: dict) -> None:
    """Write ``outputs`` (file name -> text or figure) into ``out_dir`` all or nothing: each goes to its
    temporary name first and all are renamed into place together at the end, so a failure on the way (a figure
    that cannot be rendered, a full disk) leaves the files of an earlier run as they were."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as renames:
        for name, content in outputs.items():
            tmp = renames.enter_context(atomic_path(out_dir / name))
            if isinstance(content, str):
                tmp.write_text(content, encoding="utf-8")
            else:
                report.write_png(content, tmp)


# --------------------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------------------

def run(ctx: TaskContext) -> None:
    sec = ctx.params.test
    log = ctx.log
    where = ctx.paths.get("parameters_file") or "parameters"
    data_dir, model_dir, out_dir = ctx.paths["data_dir"], ctx.paths["model_dir"], ctx.paths["output_dir"]

    baseline_names = select_baselines(sec["baselines"], where, log)
    model_files = find_models(sec["models"], model_dir, where)
    if not model_files and not baseline_names:
        raise InputError.at(model_dir, "test.models", f"expected trained models (<name>/{MODEL_FILE}), found none, "
                            "and test.baselines is none: nothing to evaluate; run the train task first")
    if not model_files:
        log.info("no trained model in %s: evaluating the noisy input and the classical baselines only", model_dir)

    card = load_card(data_dir)
    data_range = float(card["data_range"])  # checked by load_card: a number > 0
    test = load_split(data_dir, "test", sec["max_test_images"])
    if len(test) == 0:
        raise InputError.at(Path(data_dir) / "test.h5", "noisy", "expected at least one test pair, found none")
    val = None
    if baseline_names:
        val = load_split(data_dir, "val", sec["tune_images"])
        if len(val) == 0:
            raise InputError.at(Path(data_dir) / "val.h5", "test.baselines", "expected validation pairs to tune "
                                "the baselines on, found none; set preprocess.val_fraction > 0 and preprocess "
                                "again, or set test.baselines: none")
        if val.noisy.shape[1:] != test.noisy.shape[1:]:
            log.info("val images are %s, test images %s: tuning on the val images as they are",
                     val.noisy.shape[1:], test.noisy.shape[1:])

    device, precision = torch.device("cpu"), "fp32"
    denoisers = {}
    if model_files:
        from emdenoise.engine import runtime

        device = runtime.resolve_device(sec["device"], "test.device", ctx.where)
        precision = runtime.resolve_precision(sec["precision"], device, "test.precision", ctx.where)
        # every model file now: a damaged one fails the run before any work
        denoisers = {name: load_model(path, device, precision) for name, path in model_files.items()}
    log.info("%d test images of %dx%d, data range R = %.6g; %d baseline(s), %d model(s); device %s, precision %s",
             len(test), test.noisy.shape[1], test.noisy.shape[2], data_range, len(baseline_names), len(model_files),
             device, precision)

    indices = figure_indices(len(test), sec["figure_images"])
    scorer = Scorer(test, data_range, indices)
    noisy_row = scorer.add_row("noisy", "input")
    for first in range(0, len(test), sec["batch_size"]):
        scorer.score(noisy_row, first, test.noisy[first:first + sec["batch_size"]])
    for name in baseline_names:
        run_baseline(name, val, scorer, data_range, sec["batch_size"], log)
    for name, path in model_files.items():
        run_model(name, path, scorer, device, precision, sec["batch_size"], log, denoisers[name])

    metrics = {"data_range": data_range,
               "data_range_definition": card.get("data_range_definition", "the dataset card's data_range"),
               "n_images": len(test), "image_shape": list(test.noisy.shape[1:]),
               "device": str(device), "precision": str(precision),
               "baseline_treatment": report.BASELINE_NOTE,
               "methods": {name: summarise(row) for name, row in scorer.rows.items()}}
    if test.dose is not None:
        metrics["psnr_by_dose"] = dose_bins(test.dose, scorer.rows)

    outputs = {"test_metrics.json": json_text(metrics), "per_image.csv": per_image_csv(scorer),
               "results.md": report.markdown(metrics), **figures(scorer, metrics, indices)}
    write_outputs(out_dir, outputs)
    stale = out_dir / "comparison.png"
    if "comparison.png" not in outputs and stale.exists():   # test.figure_images: 0; an old one would mislead
        stale.unlink()
        log.info("removed %s from an earlier run (test.figure_images is 0)", stale)
    for line in report.text_table(metrics):
        log.info("%s", line)
    log.info("wrote %s to %s", ", ".join(outputs), out_dir)
