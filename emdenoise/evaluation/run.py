"""The evaluation engine: which models and baselines to score, the per-image scorer (PSNR, SSIM, MSE, the
lattice-band PSNR, the FRC resolution, atom-column detection where the split carries true atoms, the Poisson
deviance check, speed), running a trained model or a tuned baseline over a split, summaries and dose bins. The
test task and the study call it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdenoise.classical import filters as baselines_mod
from emdenoise.config.params import Names
from emdenoise.data.splits import Split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.evaluation import consistency
from emdenoise.evaluation import metrics as metrics_mod
from emdenoise.evaluation.metrics import mse_per_image, psnr_per_image, ssim_per_image
from emdenoise.inference.denoiser import Denoiser
from emdenoise.layout import MODEL_FILE, trained_models
from emdenoise.log import progress

DOSE_BINS = 4


# --------------------------------------------------------------------------------------------------------------
# What to evaluate
# --------------------------------------------------------------------------------------------------------------


def _names(value: Names, field: str, where: str | Path) -> list[str] | str:
    """A validated names value: 'all', [] for 'none', or the list itself."""
    if value == "all":
        return "all"
    if "none" in value:
        if len(value) > 1:
            raise InputError.at(where, field, f"expected 'none' alone, got {value}")
        return []
    return list(value)


def select_baselines(
    value: Names, where: str | Path, log: logging.Logger | None, field: str = "test.baselines"
) -> list[str]:
    """The baselines to run; BM3D ones asked for by name but not installed are an input error naming ``field``."""
    names = _names(value, field, where)
    if isinstance(names, str):  # all
        installed = list(baselines_mod.available())
        skipped = [n for n in baselines_mod.BASELINES if n not in installed]
        if skipped and log is not None:
            log.info(
                "%s: all: skipping %s (needs the optional bm3d package: %s)",
                field,
                ", ".join(skipped),
                baselines_mod.BM3D_INSTALL,
            )
        return installed
    for name in names:
        package = baselines_mod.missing_package(name)
        if package:
            raise InputError.at(
                where,
                field,
                f"{name!r} needs the optional {package} package, which "
                f"is not installed: {baselines_mod.BM3D_INSTALL}; or remove {name!r}",
            )
    return names


def find_models(value: Names, model_dir: Path, where: str | Path) -> dict[str, Path]:
    """Row name -> model file. ``all`` finds every ``model_dir/<name>/em_denoise_model.h5``."""
    names = _names(value, "test.models", where)
    if isinstance(names, str):  # all
        if not model_dir.is_dir():
            raise InputError.at(
                model_dir,
                "test.models",
                "expected a folder of trained models, not found; run the "
                "train task first, or set test.models: none to evaluate the baselines only",
            )
        return trained_models(model_dir)
    found = {}
    for name in names:
        path = model_dir / name / MODEL_FILE
        if not path.is_file():
            raise InputError.at(
                path,
                "test.models",
                f"expected a trained {name!r} model file; run the train "
                f"task with train.model including {name!r}, or remove it from test.models",
            )
        found[name] = path
    return found


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """Per-image scores of one method, filled batch by batch, plus its timing and settings."""

    kind: str  # input, classical, deep
    n: int
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # time spent denoising all n images (warm-up excluded)
    timed: bool = True  # False for the input row, which costs nothing
    psnr: np.ndarray = field(init=False)
    ssim: np.ndarray = field(init=False)
    mse: np.ndarray = field(init=False)
    band_psnr: np.ndarray = field(init=False)  # lattice-band PSNR, dB
    frc_px: np.ndarray = field(init=False)  # FRC resolution, px
    deviation: np.ndarray = field(init=False)  # consistency: the deviance's implied relative error
    deviance_ratio: np.ndarray = field(init=False)
    inconsistent: np.ndarray = field(init=False)  # bool
    atom_f1: np.ndarray = field(init=False)  # per image, NaN without atoms
    atoms: metrics_mod.AtomCounts = field(default_factory=metrics_mod.AtomCounts)  # summed over images
    figure: dict[int, np.ndarray] = field(default_factory=dict)  # test image index -> output, for the figure

    def __post_init__(self) -> None:
        self.psnr, self.ssim, self.mse, self.band_psnr, self.frc_px, self.deviation, self.deviance_ratio = (
            np.full(self.n, np.nan) for _ in range(7)
        )
        self.atom_f1 = np.full(self.n, np.nan)
        self.inconsistent = np.zeros(self.n, dtype=bool)


@dataclass(frozen=True)
class Structure:
    """The settings of the structure metrics and of the consistency check (``test.*``)."""

    band_angstrom: tuple[float, float] = (1.0, 3.5)
    atom_tolerance_angstrom: float = 0.5
    max_deviation: float = consistency.MAX_DEVIATION

    @classmethod
    def of(cls, section: Any) -> Structure:
        """From a parameters section with ``band_min_angstrom``, ``band_max_angstrom``,
        ``atom_tolerance_angstrom`` and ``max_deviation``."""
        return cls(
            (section.band_min_angstrom, section.band_max_angstrom),
            section.atom_tolerance_angstrom,
            section.max_deviation,
        )

    def settings(self) -> dict[str, Any]:
        return {
            "lattice_band_angstrom": list(self.band_angstrom),
            "lattice_band_px_when_pixel_size_unknown": list(metrics_mod.BAND_PX_UNKNOWN),
            "frc_threshold": metrics_mod.FRC_THRESHOLD,
            "atom_tolerance_angstrom": self.atom_tolerance_angstrom,
            "atom_tolerance_when_pixel_size_unknown": f"{metrics_mod.TOLERANCE_NN_UNKNOWN} x nearest-neighbour spacing",
            "atom_threshold": metrics_mod.ATOM_THRESHOLD,
            "consistency_max_deviation": self.max_deviation,
            "consistency_min_z": consistency.MIN_Z,
        }


class Scorer:
    """Scores outputs against the clean test images, keeping the outputs of the figure images."""

    def __init__(
        self,
        split: Split,
        data_range: float,
        figure_indices: list[int],
        structure: Structure | None = None,
        pixel_size: float | None = None,
    ):
        self.split = split
        self.data_range = data_range
        self.figure_indices = set(figure_indices)
        self.structure = structure or Structure()
        self.default_pixel_size = pixel_size  # the dataset card's, when the split has none per image
        self.rows: dict[str, Row] = {}
        self._truth: dict[int, metrics_mod.AtomTruth] = {}

    def pixel_size(self, i: int) -> float | None:
        """Image ``i``'s pixel size in A (the split's, else the card's), None when unknown."""
        if self.split.pixel_size is not None:
            value = float(self.split.pixel_size[i])
            return value if math.isfinite(value) and value > 0 else None
        return self.default_pixel_size

    def median_pixel_size(self) -> float | None:
        sizes = [p for p in (self.pixel_size(i) for i in range(len(self.split))) if p is not None]
        return float(np.median(sizes)) if sizes else None

    def truth(self, i: int) -> metrics_mod.AtomTruth:
        if i not in self._truth:
            sites, vacant = self.split.atoms(i)
            self._truth[i] = metrics_mod.AtomTruth.of(self.split.truth[i], sites, vacant)
        return self._truth[i]

    def summary(self, name: str) -> dict[str, Any]:
        """Row ``name``'s summary (:func:`summarise`) with its structure metrics and consistency check."""
        row = self.rows[name]
        return {**summarise(row), **structure_summary(row, self.median_pixel_size(), self.split.has_atoms)}

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {name: self.summary(name) for name in self.rows}

    def _structure(self, row: Row, i: int, output: np.ndarray) -> None:
        """The per-image structure metrics and the consistency check of test image ``i``'s ``output``."""
        clean, pixel = self.split.truth[i], self.pixel_size(i)
        band = metrics_mod.band_periods_px(self.structure.band_angstrom, pixel)
        row.band_psnr[i] = metrics_mod.band_psnr(output[None], clean[None], self.data_range, band)[0]
        row.frc_px[i] = metrics_mod.frc_resolution_px(output, clean)
        dose = float(self.split.dose[i]) if self.split.dose is not None else None
        check = consistency.check(self.split.noisy[i], output, dose, self.structure.max_deviation)
        row.deviation[i], row.deviance_ratio[i], row.inconsistent[i] = check.deviation, check.ratio, check.inconsistent
        if self.split.has_atoms:
            tolerance = self.structure.atom_tolerance_angstrom / pixel if pixel else None
            counts = metrics_mod.atom_scores(output, self.truth(i), tolerance)
            row.atoms += counts
            f1 = counts.summary(pixel)["f1"]
            row.atom_f1[i] = np.nan if f1 is None else f1

    def add_row(self, name: str, kind: str, params: dict[str, Any] | None = None) -> Row:
        row = Row(kind, len(self.split), dict(params or {}), timed=kind != "input")
        self.rows[name] = row
        return row

    def score(self, row: Row, start: int, images: np.ndarray | torch.Tensor) -> None:
        """Score ``images`` ((B, H, W) array or tensor) as test images ``start .. start + B - 1``."""
        outputs = torch.as_tensor(np.asarray(images, dtype=np.float32))
        stop = start + len(outputs)
        clean = torch.from_numpy(self.split.truth[start:stop])
        row.psnr[start:stop] = psnr_per_image(outputs, clean, self.data_range).double().numpy()
        row.ssim[start:stop] = ssim_per_image(outputs, clean, self.data_range).double().numpy()
        row.mse[start:stop] = mse_per_image(outputs, clean).double().numpy()
        for i in range(start, stop):
            self._structure(row, i, outputs[i - start].numpy().astype(np.float64))
            if i in self.figure_indices:
                row.figure[i] = outputs[i - start].numpy().copy()


def finite(value: Any) -> float | None:
    """``value`` as a float, None when it is not finite (JSON holds no NaN or infinity)."""
    number = float(value)
    return number if math.isfinite(number) else None


def _mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and population std over images; None where not finite (a perfect prediction's PSNR is +inf)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return finite(np.mean(values)), finite(np.std(values))


def _median(values: np.ndarray) -> float | None:
    finite_values = values[~np.isnan(values)]
    return finite(np.median(finite_values)) if finite_values.size else None


def structure_summary(row: Row, pixel_size: float | None, has_atoms: bool) -> dict[str, Any]:
    """The structure metrics and the consistency check of a row, over its images."""
    frc = _median(row.frc_px)
    with np.errstate(invalid="ignore"):
        band = row.band_psnr[np.isfinite(row.band_psnr)]
    out: dict[str, Any] = {
        "band_psnr_mean": finite(np.mean(band)) if band.size else None,
        "frc_resolution_px": frc,
        "frc_resolution_angstrom": frc * pixel_size if frc is not None and pixel_size else None,
        "deviation_mean": _mean_std(row.deviation)[0],
        "deviance_ratio_mean": _mean_std(row.deviance_ratio)[0],
        "inconsistent_fraction": float(np.mean(row.inconsistent)) if row.n else None,
    }
    if has_atoms:
        out["atoms"] = row.atoms.summary(pixel_size)
    return out


def summarise(row: Row) -> dict[str, Any]:
    """A row's means and stds over images, its speed and its parameters (``test_metrics.json``'s rows)."""
    n = row.n
    seconds_per_image = row.seconds / n if row.timed else 0.0
    images_per_s = n / row.seconds if row.timed and row.seconds > 0 else None
    (psnr_mean, psnr_std), (ssim_mean, ssim_std), (mse_mean, mse_std) = map(_mean_std, (row.psnr, row.ssim, row.mse))
    return {
        "kind": row.kind,
        "psnr_mean": psnr_mean,
        "psnr_std": psnr_std,
        "ssim_mean": ssim_mean,
        "ssim_std": ssim_std,
        "mse_mean": mse_mean,
        "mse_std": mse_std,
        "images_per_s": finite(images_per_s) if images_per_s is not None else None,
        "seconds_per_image": finite(seconds_per_image),
        "params": row.params,
    }


def dose_bins(dose: np.ndarray, rows: dict[str, Row], n_bins: int = DOSE_BINS) -> dict[str, Any]:
    """Mean PSNR per dose bin: up to ``n_bins`` bins holding about the same number of images."""
    order = np.argsort(dose, kind="stable")
    groups = [g for g in np.array_split(order, min(n_bins, len(dose))) if len(g)]
    return {
        "definition": "test images sorted by dose and cut into bins of about equal size",
        "bins": [
            {"dose_min": float(dose[g].min()), "dose_max": float(dose[g].max()), "n": int(len(g))} for g in groups
        ],
        "methods": {name: [_mean_std(row.psnr[g])[0] for g in groups] for name, row in rows.items()},
    }


# --------------------------------------------------------------------------------------------------------------
# Running the methods
# --------------------------------------------------------------------------------------------------------------


def score_input(scorer: Scorer, batch_size: int) -> Row:
    """The ``noisy`` row: the input itself scored, what doing nothing scores."""
    row = scorer.add_row("noisy", "input")
    for first in range(0, len(scorer.split), batch_size):
        scorer.score(row, first, scorer.split.noisy[first : first + batch_size])
    return row


def run_baseline(
    name: str, val: Split, scorer: Scorer, data_range: float, batch_size: int, log: logging.Logger
) -> baselines_mod.TunedBaseline:
    """Tune one baseline on the validation pairs, then denoise and score every test image (timed per image);
    returns the tuned baseline (to score another split with :func:`score_baseline`)."""
    baseline = baselines_mod.get(name)
    steps = baselines_mod.tuning_steps(baseline, len(val))
    with progress(total=steps, desc=f"tune {name}", unit="img") as bar:
        start = time.perf_counter()
        tuned = baselines_mod.tune(baseline, val.noisy, val.truth, data_range, on_step=lambda: bar.update(1))
        tune_seconds = time.perf_counter() - start
    params = tuned.params()
    params["tune_seconds"] = round(tune_seconds, 3)
    log.info(
        "%s: %s = %s (val PSNR %.2f dB on %d images), gain %.4g, offset %.4g",
        name,
        baseline.param,
        params[baseline.param],
        tuned.tune_psnr,
        tuned.n_tune,
        tuned.gain,
        tuned.offset,
    )
    tuned.record = params
    score_baseline(tuned, scorer, batch_size)
    return tuned


def score_baseline(tuned: baselines_mod.TunedBaseline, scorer: Scorer, batch_size: int) -> None:
    """Denoise and score every image of ``scorer``'s split with a tuned baseline (timed per image)."""
    name = tuned.name
    row = scorer.add_row(name, "classical", tuned.record or tuned.params())
    test = scorer.split
    with progress(total=len(test), desc=name, unit="img") as bar:
        for first in range(0, len(test), batch_size):
            images = test.noisy[first : first + batch_size]
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


def load_model(path: Path, device: torch.device, precision: str) -> Denoiser:
    """The :class:`~emdenoise.inference.denoiser.Denoiser` of one model file (a damaged file is an InputError
    naming it)."""
    return Denoiser.from_file(path, device, precision)


def run_model(
    name: str,
    path: Path,
    scorer: Scorer,
    device: torch.device,
    precision: str,
    batch_size: int,
    log: logging.Logger,
    denoiser: Denoiser | None = None,
) -> None:
    """Score the model of file ``path`` (``denoiser``, or loaded here) on the test images in batches, a warm-up
    batch excluded from timing."""
    if denoiser is None:
        denoiser = load_model(path, device, precision)
    meta = denoiser.meta
    trained_range = meta.get("data_range")
    if trained_range and not math.isclose(trained_range, scorer.data_range, rel_tol=1e-5):
        log.warning(
            "%s: trained with data range %.6g, this test set has %.6g: another dataset?",
            path,
            trained_range,
            scorer.data_range,
        )
    params = {
        "model": denoiser.name,
        "options": meta.get("options", {}),
        "parameters": meta.get("parameters"),
        "file": str(path),
        "batch_size": batch_size,
    }
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
                    noisy = torch.from_numpy(test.noisy[first : first + batch_size, None]).to(device)
                    output = denoiser.denoise(noisy).float().cpu()
                    row.seconds += time.perf_counter() - t0
                    scorer.score(row, first, output[:, 0].numpy())
                    bar.update(len(noisy))
    except torch.cuda.OutOfMemoryError:
        raise RuntimeFailure(
            f"{path}: out of GPU memory at test.batch_size={batch_size}; lower test.batch_size"
        ) from None
    log.info("%s: %.1f images/s on %s", name, len(test) / row.seconds if row.seconds else float("inf"), device)


# --------------------------------------------------------------------------------------------------------------
# The strongest classical row and every deep model's margin against it
# --------------------------------------------------------------------------------------------------------------


def _atom_f1(row: dict[str, Any]) -> float | None:
    atoms = row.get("atoms")
    return atoms.get("f1") if isinstance(atoms, dict) else None


MARGIN_MEASURES = {
    "psnr": lambda row: row.get("psnr_mean"),
    "band_psnr": lambda row: row.get("band_psnr_mean"),
    "atom_f1": _atom_f1,
}


def strongest_classical(methods: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The classical row with the highest mean PSNR, and every deep row's margin against it on PSNR, the
    lattice-band PSNR and the atom F1 (positive: the model is better); None without a classical row."""
    classical = [
        (row["psnr_mean"], name)
        for name, row in methods.items()
        if row.get("kind") == "classical" and row.get("psnr_mean") is not None
    ]
    if not classical:
        return None
    _, best = max(classical)
    reference = methods[best]
    margins: dict[str, dict[str, float | None]] = {}
    for name, row in methods.items():
        if row.get("kind") != "deep":
            continue
        margins[name] = {}
        for measure, get in MARGIN_MEASURES.items():
            mine, theirs = get(row), get(reference)
            margins[name][measure] = finite(mine - theirs) if mine is not None and theirs is not None else None
    return {
        "name": best,
        **{measure: get(reference) for measure, get in MARGIN_MEASURES.items()},
        "margins": margins,
    }
