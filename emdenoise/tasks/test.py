"""The ``test`` task: evaluate the trained denoisers against the noisy input and classical baselines.

Rows of the table, all scored on the same test images against the CLEAN test images:

- ``noisy``: the input itself (what doing nothing scores);
- each classical baseline of ``test.baselines`` (:mod:`emdenoise.baselines`), its parameter and a global
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
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emdenoise import baselines as baselines_mod
from emdenoise import report
from emdenoise.data import Split, load_card, load_split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.fsutil import atomic_path, json_text
from emdenoise.layout import MODEL_FILE, trained_models
from emdenoise.log import progress
from emdenoise.metrics import mse_per_image, psnr_per_image, ssim_per_image

DOSE_BINS = 4


# --------------------------------------------------------------------------------------------------------------
# What to evaluate
# --------------------------------------------------------------------------------------------------------------

def _names(value, field: str, where) -> list[str] | str:
    """A validated names value: 'all', [] for 'none', or the list itself."""
    if value == "all":
        return "all"
    if "none" in value:
        if len(value) > 1:
            raise InputError.at(where, field, f"expected 'none' alone, got {value}")
        return []
    return list(value)


def select_baselines(value, where, log, field: str = "test.baselines") -> list[str]:
    """The baselines to run; BM3D ones asked for by name but not installed are an input error naming ``field``."""
    names = _names(value, field, where)
    if names == "all":
        names = list(baselines_mod.available())
        skipped = [n for n in baselines_mod.BASELINES if n not in names]
        if skipped:
            log.info("%s: all: skipping %s (needs the optional bm3d package: %s)", field, ", ".join(skipped),
                     baselines_mod.BM3D_INSTALL)
        return names
    for name in names:
        package = baselines_mod.missing_package(name)
        if package:
            raise InputError.at(where, field, f"{name!r} needs the optional {package} package, which "
                                f"is not installed: {baselines_mod.BM3D_INSTALL}; or remove {name!r}")
    return names


def find_models(value, model_dir: Path, where) -> dict[str, Path]:
    """Row name -> model file. ``all`` finds every ``model_dir/<name>/em_denoise_model.h5``."""
    names = _names(value, "test.models", where)
    if names == "all":
        if not model_dir.is_dir():
            raise InputError.at(model_dir, "test.models", "expected a folder of trained models, not found; run the "
                                "train task first, or set test.models: none to evaluate the baselines only")
        return trained_models(model_dir)
    found = {}
    for name in names:
        path = model_dir / name / MODEL_FILE
        if not path.is_file():
            raise InputError.at(path, "test.models", f"expected a trained {name!r} model file; run the train "
                                f"task with train.model including {name!r}, or remove it from test.models")
        found[name] = path
    return found


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """Per-image scores of one method, filled batch by batch, plus its timing and settings."""

    kind: str                   # input, classical, deep
    n: int
    params: dict = field(default_factory=dict)
    seconds: float = 0.0        # time spent denoising all n images (warm-up excluded)
    timed: bool = True          # False for the input row, which costs nothing
    psnr: np.ndarray = field(init=False)
    ssim: np.ndarray = field(init=False)
    mse: np.ndarray = field(init=False)
    figure: dict = field(default_factory=dict)  # test image index -> output, for the comparison figure

    def __post_init__(self):
        self.psnr, self.ssim, self.mse = (np.full(self.n, np.nan) for _ in range(3))


class Scorer:
    """Scores outputs against the clean test images, keeping the outputs of the figure images."""

    def __init__(self, split: Split, data_range: float, figure_indices: list[int]):
        self.split = split
        self.data_range = data_range
        self.figure_indices = set(figure_indices)
        self.rows: dict[str, Row] = {}

    def add_row(self, name: str, kind: str, params: dict | None = None) -> Row:
        row = Row(kind, len(self.split), dict(params or {}), timed=kind != "input")
        self.rows[name] = row
        return row

    def score(self, row: Row, start: int, outputs) -> None:
        """Score ``outputs`` ((B, H, W) array or tensor) as test images ``start .. start + B - 1``."""
        outputs = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
        stop = start + len(outputs)
        clean = torch.from_numpy(self.split.clean[start:stop])
        row.psnr[start:stop] = psnr_per_image(outputs, clean, self.data_range).double().numpy()
        row.ssim[start:stop] = ssim_per_image(outputs, clean, self.data_range).double().numpy()
        row.mse[start:stop] = mse_per_image(outputs, clean).double().numpy()
        for i in range(start, stop):
            if i in self.figure_indices:
                row.figure[i] = outputs[i - start].numpy().copy()


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and population std over images; None where not finite (a perfect prediction's PSNR is +inf)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return _finite(np.mean(values)), _finite(np.std(values))


def summarise(row: Row) -> dict:
    n = row.n
    seconds_per_image = row.seconds / n if row.timed else 0.0
    images_per_s = n / row.seconds if row.timed and row.seconds > 0 else None
    (psnr_mean, psnr_std), (ssim_mean, ssim_std), (mse_mean, mse_std) = map(_mean_std, (row.psnr, row.ssim,
                                                                                         row.mse))
    return {"kind": row.kind, "psnr_mean": psnr_mean, "psnr_std": psnr_std, "ssim_mean": ssim_mean,
            "ssim_std": ssim_std, "mse_mean": mse_mean, "mse_std": mse_std,
            "images_per_s": _finite(images_per_s) if images_per_s is not None else None,
            "seconds_per_image": _finite(seconds_per_image),
            "params": row.params}


def dose_bins(dose: np.ndarray, rows: dict[str, Row], n_bins: int = DOSE_BINS) -> dict:
    """Mean PSNR per dose bin: up to ``n_bins`` bins holding about the same number of images."""
    order = np.argsort(dose, kind="stable")
    groups = [g for g in np.array_split(order, min(n_bins, len(dose))) if len(g)]
    return {"definition": "test images sorted by dose and cut into bins of about equal size",
            "bins": [{"dose_min": float(dose[g].min()), "dose_max": float(dose[g].max()), "n": int(len(g))}
                     for g in groups],
            "methods": {name: [_mean_std(row.psnr[g])[0] for g in groups] for name, row in rows.items()}}


# --------------------------------------------------------------------------------------------------------------
# Running the methods
# --------------------------------------------------------------------------------------------------------------

def run_baseline(name: str, val: Split, scorer: Scorer, data_range: float, batch_size: int, log) -> None:
    """Tune one baseline on the validation pairs, then denoise and score every test image (timed per image)."""
    baseline = baselines_mod.get(name)
    steps = baselines_mod.tuning_steps(baseline, len(val))
    with progress(total=steps, desc=f"tune {name}", unit="img") as bar:
        start = time.perf_counter()
        tuned = baselines_mod.tune(baseline, val.noisy, val.clean, data_range, on_step=lambda: bar.update(1))
        tune_seconds = time.perf_counter() - start
    params = tuned.params()
    params["tune_seconds"] = round(tune_seconds, 3)
    log.info("%s: %s = %s (val PSNR %.2f dB on %d images), gain %.4g, offset %.4g", name, baseline.param,
             params[baseline.param], tuned.tune_psnr, tuned.n_tune, tuned.gain, tuned.offset)
    row = scorer.add_row(name, "classical", params)
    test = scorer.split
    with progress(total=len(test), desc=name, unit="img") as bar:
        for first in range(0, len(test), batch_size):
            images = test.noisy[first:first + batch_size]
            outputs = np.empty(images.shape, dtype=np.float32)
            for i, image in enumerate(images):
                t0 = time.perf_counter()
                outputs[i] = tuned(image)
                row.seconds += time.perf_counter() - t0
            scorer.score(row, first, outputs)
            bar.update(len(images))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model(path: Path, device: torch.device, precision):
    """The :class:`emdenoise.modelio.Denoiser` of one model file (a damaged file is an InputError naming it)."""
    from emdenoise.modelio import Denoiser

    return Denoiser.from_file(path, device, precision)


def run_model(name: str, path: Path, scorer: Scorer, device: torch.device, precision, batch_size: int,
              log, denoiser=None) -> None:
    """Score the model of file ``path`` (``denoiser``, or loaded here) on the test images in batches, a warm-up
    batch excluded from timing."""
    if denoiser is None:
        denoiser = load_model(path, device, precision)
    meta = denoiser.meta
    trained_range = meta.get("data_range")
    if trained_range and not math.isclose(trained_range, scorer.data_range, rel_tol=1e-5):
        log.warning("%s: trained with data range %.6g, this test set has %.6g: another dataset?", path,
                    trained_range, scorer.data_range)
    params = {"model": denoiser.name, "options": meta.get("options", {}), "parameters": meta.get("parameters"),
              "file": str(path), "batch_size": batch_size}
    row = scorer.add_row(name, "deep", params)
    test = scorer.split
    try:
        with torch.inference_mode():
            warm = torch.from_numpy(test.noisy[:batch_size, None]).to(device)
            denoiser.denoise(warm)
            _sync(device)
            with progress(total=len(test), desc=name, unit="img") as bar:
                for first in range(0, len(test), batch_size):
                    t0 = time.perf_counter()
                    noisy = torch.from_numpy(test.noisy[first:first + batch_size, None]).to(device)
                    output = denoiser.denoise(noisy).float().cpu()
                    row.seconds += time.perf_counter() - t0
                    scorer.score(row, first, output[:, 0].numpy())
                    bar.update(len(noisy))
    except torch.cuda.OutOfMemoryError:
        raise RuntimeFailure(f"{path}: out of GPU memory at test.batch_size={batch_size}; lower test.batch_size"
                             ) from None
    log.info("%s: %.1f images/s on %s", name, len(test) / row.seconds if row.seconds else float("inf"), device)


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

def run(ctx) -> None:
    sec = ctx.section
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
        from emdenoise import runtime

        device = runtime.resolve_device(sec["device"], "test.device")
        precision = runtime.resolve_precision(sec["precision"], device, "test.precision")
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
