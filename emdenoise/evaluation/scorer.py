"""The per-image scorer: PSNR, SSIM, MSE, the lattice-band PSNR, the FRC resolution, atom-column detection
where the split carries true atoms (and the clean image's own detection: the ``truth`` row), the Poisson deviance
check; the rows' summaries (:class:`~emdenoise.evaluation.records.MethodSummary`) and dose bins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emdenoise.data.splits import Split
from emdenoise.evaluation import consistency
from emdenoise.evaluation import metrics as metrics_mod
from emdenoise.evaluation.metrics import mse_per_image, psnr_per_image, ssim_per_image
from emdenoise.evaluation.records import BEAM_CENTRE_DOSE, DOSE_UNITS, MethodSummary, SplitMetrics

DOSE_BINS = 4


@dataclass
class Row:
    """Per-image scores of one method, filled batch by batch, plus its timing and settings."""

    kind: str  # input, classical, deep, pretrained
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

    band_angstrom: tuple[float, float] = metrics_mod.LATTICE_BAND_ANGSTROM
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
            "vacancy_scoring": "no peak on the site, its lattice detected (recall and precision)",
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
        self._truth_atoms: dict[str, Any] | None = None

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

    def tolerance_px(self, i: int) -> float | None:
        """The atom matching tolerance of image ``i`` in px (None: a fraction of the spacing)."""
        pixel = self.pixel_size(i)
        return self.structure.atom_tolerance_angstrom / pixel if pixel else None

    def summary(self, name: str) -> MethodSummary:
        """Row ``name``'s summary (:func:`summarise`) with its structure metrics and consistency check."""
        row = self.rows[name]
        return MethodSummary(**summarise(row), **structure_summary(row, self.median_pixel_size(), self.split.has_atoms))

    def summaries(self) -> dict[str, MethodSummary]:
        return {name: self.summary(name) for name in self.rows}

    def truth_atoms(self) -> dict[str, Any] | None:
        """The ``truth`` row: the clean images through the same atom detector, the ceiling of every method's
        atom scores (None when the split carries no atoms)."""
        if not self.split.has_atoms:
            return None
        if self._truth_atoms is None:
            counts = metrics_mod.AtomCounts()
            for i in range(len(self.split)):
                counts += metrics_mod.atom_scores(self.split.truth[i], self.truth(i), self.tolerance_px(i))
            self._truth_atoms = counts.summary(self.median_pixel_size())
        return self._truth_atoms

    def split_metrics(self, n_images: int | None = None) -> SplitMetrics:
        """Every row's summary, the strongest classical row, the truth row."""
        methods = self.summaries()
        return SplitMetrics(
            methods,
            strongest_classical(methods),
            self.split.has_atoms,
            self.median_pixel_size(),
            n_images,
            self.truth_atoms(),
        )

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
            counts = metrics_mod.atom_scores(output, self.truth(i), self.tolerance_px(i))
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
    """The structure metrics and the consistency check of a row, over its images (:class:`MethodSummary`'s
    fields)."""
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
    """A row's means and stds over images, its speed and its parameters (:class:`MethodSummary`'s fields)."""
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


def dose_bins(
    dose: np.ndarray, rows: dict[str, Row], n_bins: int = DOSE_BINS, units: str | None = None
) -> dict[str, Any]:
    """Mean PSNR per dose bin: up to ``n_bins`` bins holding about the same number of images; ``units``: the
    dataset card's input_units (what the recorded dose is: :data:`DOSE_UNITS`, else per pixel at the beam centre)."""
    order = np.argsort(dose, kind="stable")
    groups = [g for g in np.array_split(order, min(n_bins, len(dose))) if len(g)]
    return {
        "definition": "test images sorted by dose and cut into bins of about equal size",
        "unit": DOSE_UNITS.get(units or "", BEAM_CENTRE_DOSE),
        "bins": [
            {"dose_min": float(dose[g].min()), "dose_max": float(dose[g].max()), "n": int(len(g))} for g in groups
        ],
        "methods": {name: [_mean_std(row.psnr[g])[0] for g in groups] for name, row in rows.items()},
    }


# --------------------------------------------------------------------------------------------------------------
# The strongest classical row and every deep model's margin against it
# --------------------------------------------------------------------------------------------------------------


def _atom_f1(row: MethodSummary) -> float | None:
    return row.atoms.get("f1") if isinstance(row.atoms, Mapping) else None


MARGIN_MEASURES = {
    "psnr": lambda row: row.psnr_mean,
    "band_psnr": lambda row: row.band_psnr_mean,
    "atom_f1": _atom_f1,
}


def strongest_classical(methods: dict[str, MethodSummary]) -> dict[str, Any] | None:
    """The classical row with the highest mean PSNR, and every network row's (deep, pretrained, the external
    peer) margin against it on PSNR, the lattice-band PSNR and the atom F1 (positive: the network is better);
    None without a classical row."""
    classical = [
        (row.psnr_mean, name) for name, row in methods.items() if row.kind == "classical" and row.psnr_mean is not None
    ]
    if not classical:
        return None
    _, best = max(classical)
    reference = methods[best]
    margins: dict[str, dict[str, float | None]] = {}
    for name, row in methods.items():
        if row.kind not in ("deep", "pretrained", "external"):
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
