"""Image-quality metrics, per image, with a fixed data range.

PSNR = 10 log10(R^2 / MSE) with R the dataset card's ``data_range`` (max - min of the clean test set):
fixed, never taken from the prediction, never 255 by habit. PSNR and SSIM are computed per image and then
averaged (pooling the MSE over a batch gives a different, wrong number). SSIM uses the standard 11x11
Gaussian window with sigma 1.5 (torchmetrics' default).

Beyond PSNR/SSIM (numpy, per image; the README's "Evaluation" section has the definitions):

- :func:`band_psnr`: PSNR of the lattice band only (an ideal annulus of periods given in px, from d-spacings in
  A and the pixel size), blind to the brightness level that dominates plain PSNR;
- :func:`frc_resolution_px`: Fourier ring correlation against the clean image, resolution where it first drops
  below 1/7 (van Heel & Schatz 2005);
- :func:`atom_scores`: atom columns found as peaks in the estimate, matched one-to-one to the true columns
  within a tolerance: precision, recall, F1, RMS position error, vacancy recall and precision
  (:class:`AtomCounts`; a vacancy is called only where the lattice around it was found).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from torchmetrics.functional.image import structural_similarity_index_measure


def _as_bchw(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    return x


def mse_per_image(pred, target) -> torch.Tensor:
    pred, target = _as_bchw(pred), _as_bchw(target)
    return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


def psnr_per_image(pred, target, data_range: float) -> torch.Tensor:
    """PSNR in dB of each image of a batch, (B,) tensor. An exact match gives +inf."""
    mse = mse_per_image(pred, target)
    return 10.0 * torch.log10(torch.as_tensor(float(data_range)) ** 2 / mse)


def ssim_per_image(pred, target, data_range: float) -> torch.Tensor:
    """SSIM of each image of a batch, (B,) tensor, Gaussian 11x11 window, sigma 1.5."""
    pred, target = _as_bchw(pred).float(), _as_bchw(target).float()
    ssim = structural_similarity_index_measure(
        pred, target, data_range=float(data_range), reduction="none", gaussian_kernel=True, sigma=1.5, kernel_size=11
    )
    assert isinstance(ssim, torch.Tensor)  # a tuple only when asked for the full SSIM image
    return ssim


# --------------------------------------------------------------------------------------------------------------
# Structure measures that ignore the brightness level (numpy, one image at a time)
# --------------------------------------------------------------------------------------------------------------

FRC_THRESHOLD = 1.0 / 7.0
FRC_FIRST_RING = 4  # the FRC resolution is searched from the ring of period side / 4
NYQUIST_PX = 2.0
BAND_PX_UNKNOWN = (5.0, 18.0)  # the lattice band's periods in px when the pixel size is unknown
TOLERANCE_NN_UNKNOWN = 0.35  # atom matching tolerance as a fraction of the nearest-neighbour spacing (no px size)
ATOM_THRESHOLD = 0.5  # a peak counts when its response is above this fraction of the clean atoms' median
NEIGHBOUR_NN = 1.5  # a site's neighbours for the vacancy calls: the sites within this x the spacing


LATTICE_BAND_ANGSTROM = (1.0, 3.5)  # d-spacings (A) of the lattice band: the columns of graphene, MoS2 and oxides


def band_periods_px(band_angstrom: tuple[float, float], pixel_size: float | None) -> tuple[float, float]:
    """The lattice band as periods in px: ``band_angstrom`` (d-spacings, A) / the pixel size, or
    :data:`BAND_PX_UNKNOWN` when the pixel size is not known."""
    if not pixel_size or not math.isfinite(pixel_size) or pixel_size <= 0:
        return BAND_PX_UNKNOWN
    return band_angstrom[0] / pixel_size, band_angstrom[1] / pixel_size


def _radius(shape: tuple[int, ...]) -> np.ndarray:
    """Spatial frequency of every FFT bin, cycles per px."""
    return np.hypot(*np.meshgrid(np.fft.fftfreq(shape[-2]), np.fft.fftfreq(shape[-1]), indexing="ij"))


def band_pass(images: np.ndarray, periods_px: tuple[float, float]) -> np.ndarray:
    """The images ((..., H, W)) with only the frequencies of periods ``periods_px`` (min, max) px kept (ideal
    annulus, FFT, so periodic boundaries)."""
    radius = _radius(images.shape)
    keep = (radius >= 1.0 / periods_px[1]) & (radius <= 1.0 / periods_px[0])
    return np.fft.ifft2(np.fft.fft2(np.asarray(images, dtype=np.float64)) * keep).real


def band_psnr(pred, target, data_range: float, periods_px: tuple[float, float]) -> np.ndarray:
    """PSNR (dB, (N,)) of the band-passed images: ``10 log10(R^2 / mean((B pred - B target)^2))``, ``B`` the
    lattice band-pass of :func:`band_pass`. Blind to the brightness level and to slow shading."""
    diff = band_pass(np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64), periods_px)
    mse = np.mean(diff.reshape(-1, diff.shape[-2] * diff.shape[-1]) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(float(data_range) ** 2 / mse)


def frc_curve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two 2-D images: ring frequencies (cycles/px) and FRC per ring.

    Rings are 1/side wide (side = the longer one), from 1/side to Nyquist (0.5); the means are removed.
    ``FRC(r) = Re sum F_a conj(F_b) / sqrt(sum |F_a|^2 sum |F_b|^2)`` over the ring; 0 for an empty ring.
    """
    fa = np.fft.fft2(np.asarray(a, dtype=np.float64) - np.mean(a))
    fb = np.fft.fft2(np.asarray(b, dtype=np.float64) - np.mean(b))
    side = max(a.shape)
    ring = np.rint(_radius(a.shape) * side).astype(np.int64).ravel()
    n_rings = side // 2 + 1
    inside = ring < n_rings
    cross = np.bincount(ring[inside], (fa * np.conj(fb)).real.ravel()[inside], n_rings)
    pa = np.bincount(ring[inside], (np.abs(fa) ** 2).ravel()[inside], n_rings)
    pb = np.bincount(ring[inside], (np.abs(fb) ** 2).ravel()[inside], n_rings)
    denom = np.sqrt(pa * pb)
    frc = np.divide(cross, denom, out=np.zeros(n_rings), where=denom > 0)
    return np.arange(1, n_rings) / side, frc[1:]


def frc_resolution_px(estimate: np.ndarray, clean: np.ndarray, threshold: float = FRC_THRESHOLD) -> float:
    """The FRC resolution in px: the period ``1/f`` of the last ring before the FRC first drops below
    ``threshold``, searched from the ring of period side / :data:`FRC_FIRST_RING` (the coarser rings hold few
    Fourier samples and the shading, which this measure ignores); :data:`NYQUIST_PX` when it never drops
    (resolved to the pixel), +inf when the first ring searched already fails (nothing resolved)."""
    freq, frc = frc_curve(estimate, clean)
    freq, frc = freq[FRC_FIRST_RING - 1 :], frc[FRC_FIRST_RING - 1 :]
    below = np.flatnonzero(frc < threshold)
    if len(below) == 0:
        return NYQUIST_PX
    if below[0] == 0:
        return math.inf
    return float(1.0 / freq[below[0] - 1])


# --------------------------------------------------------------------------------------------------------------
# Atom columns: detection in an estimate, matching to the true positions
# --------------------------------------------------------------------------------------------------------------


@dataclass
class AtomCounts:
    """One image's atom-column detection, counts to be summed over images."""

    true: int = 0  # atoms present
    detected: int = 0  # peaks found
    matched: int = 0  # peaks matched to a present atom within the tolerance
    squared_error_px2: float = 0.0  # sum of the matched pairs' squared distances
    vacancies: int = 0  # vacant sites
    vacancies_found: int = 0  # vacant sites called vacant (see vacancy_calls)
    vacancies_called: int = 0  # sites called vacant, vacant or not

    def __iadd__(self, other: AtomCounts) -> AtomCounts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def summary(self, pixel_size: float | None) -> dict[str, float | int | None]:
        """Precision, recall, F1, RMS position error (px, and pm when the pixel size is known), vacancy recall
        and precision."""
        precision = self.matched / self.detected if self.detected else None
        recall = self.matched / self.true if self.true else None
        f1 = 2 * self.matched / (self.detected + self.true) if self.detected + self.true else None
        rms_px = math.sqrt(self.squared_error_px2 / self.matched) if self.matched else None
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "rms_error_px": rms_px,
            "rms_error_pm": rms_px * pixel_size * 100.0 if rms_px is not None and pixel_size else None,
            "vacancy_recall": self.vacancies_found / self.vacancies if self.vacancies else None,
            "vacancy_precision": self.vacancies_found / self.vacancies_called if self.vacancies_called else None,
            "atoms": self.true,
            "detected": self.detected,
            "vacancies": self.vacancies,
        }


def nearest_neighbour_px(sites: np.ndarray) -> float:
    """Median nearest-neighbour distance of the sites, px (inf with fewer than two)."""
    if len(sites) < 2:
        return math.inf
    distances, _ = cKDTree(sites).query(sites, k=2)
    return float(np.median(distances[:, 1]))


def _response(image: np.ndarray, nn_px: float, sign: float) -> np.ndarray:
    """Local atom contrast: ``sign * (image - Gaussian(image, sigma = nn spacing))``."""
    image = np.asarray(image, dtype=np.float64)
    return sign * (image - ndimage.gaussian_filter(image, nn_px, mode="reflect"))


def _subpixel(response: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Peaks refined by a parabola through each peak and its two neighbours along each axis."""
    out = peaks.astype(np.float64)
    for axis in (0, 1):
        lo, hi = peaks.copy(), peaks.copy()
        lo[:, axis] = np.maximum(peaks[:, axis] - 1, 0)
        hi[:, axis] = np.minimum(peaks[:, axis] + 1, response.shape[axis] - 1)
        f0 = response[peaks[:, 0], peaks[:, 1]]
        fm, fp = response[lo[:, 0], lo[:, 1]], response[hi[:, 0], hi[:, 1]]
        curvature = fm - 2 * f0 + fp
        ok = (curvature < 0) & (lo[:, axis] != peaks[:, axis]) & (hi[:, axis] != peaks[:, axis])
        step = np.divide(fm - fp, 2 * curvature, out=np.zeros(len(peaks)), where=ok)
        out[:, axis] += np.clip(step, -0.5, 0.5)
    return out


def atom_polarity(clean: np.ndarray, sites: np.ndarray, nn_px: float) -> float:
    """+1 for bright atoms, -1 for dark ones: the sign of the clean image's local contrast at the atoms."""
    idx = np.clip(np.rint(sites).astype(np.int64), 0, np.asarray(clean.shape) - 1)
    response = _response(clean, nn_px, 1.0)
    return 1.0 if float(np.mean(response[idx[:, 0], idx[:, 1]])) >= 0 else -1.0


def detect_atoms(image: np.ndarray, nn_px: float, sign: float, threshold: float) -> np.ndarray:
    """Atom columns in ``image``: local maxima of the local contrast (:func:`_response`) at least 0.6 x the
    nearest-neighbour spacing apart and above ``threshold``, refined to sub-pixel; (K, 2) row, col px."""
    response = _response(image, nn_px, sign)
    peaks = peak_local_max(
        response, min_distance=max(1, int(0.6 * nn_px)), threshold_abs=threshold, exclude_border=False
    )
    return _subpixel(response, peaks) if len(peaks) else np.zeros((0, 2))


def match_atoms(detected: np.ndarray, true: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Distances of the one-to-one matches (``linear_sum_assignment``) closer than ``tolerance_px``."""
    if len(detected) == 0 or len(true) == 0:
        return np.zeros(0)
    near = cKDTree(true).sparse_distance_matrix(cKDTree(detected), tolerance_px, output_type="coo_matrix")
    if near.nnz == 0:
        return np.zeros(0)
    rows, cols = np.unique(near.row), np.unique(near.col)
    cost = np.full((len(rows), len(cols)), 1e9)
    cost[np.searchsorted(rows, near.row), np.searchsorted(cols, near.col)] = near.data
    r, c = linear_sum_assignment(cost)
    d = cost[r, c]
    return d[d <= tolerance_px]


@dataclass(frozen=True)
class AtomTruth:
    """The true atom columns of one image and what detection needs of them."""

    present: np.ndarray  # (M, 2) px
    vacant: np.ndarray  # (V, 2) px
    nn_px: float
    sign: float
    threshold: float

    @classmethod
    def of(cls, clean: np.ndarray, sites: np.ndarray, vacant: np.ndarray) -> AtomTruth:
        """From the clean image and its sites (with the vacancy flags): spacing, polarity and threshold (see
        :func:`atom_scores`)."""
        sites = np.asarray(sites, dtype=np.float64).reshape(-1, 2)
        vacant = np.asarray(vacant, dtype=bool)
        present = sites[~vacant]
        nn_px = nearest_neighbour_px(sites)
        if len(present) == 0 or not math.isfinite(nn_px):
            return cls(present, sites[vacant], nn_px, 1.0, 0.0)
        sign = atom_polarity(clean, present, nn_px)
        idx = np.clip(np.rint(present).astype(np.int64), 0, np.asarray(clean.shape) - 1)
        level = float(np.median(_response(clean, nn_px, sign)[idx[:, 0], idx[:, 1]]))
        return cls(present, sites[vacant], nn_px, sign, ATOM_THRESHOLD * max(level, 0.0))


def vacancy_calls(detected: np.ndarray, sites: np.ndarray, present: np.ndarray, nn_px: float, tol: float) -> np.ndarray:
    """Which ``sites`` (every lattice site, (S, 2) px; ``present``: the atoms' flags) the ``detected`` peaks
    call vacant: no peak within ``tol`` of the site, while at least half of its present neighbours (the present
    sites within :data:`NEIGHBOUR_NN` x the spacing) have one. A missing atom is a vacancy only where the
    lattice around it was found: an image that finds nothing calls no vacancy."""
    if len(detected) == 0 or len(sites) == 0:
        return np.zeros(len(sites), dtype=bool)
    nearest, _ = cKDTree(detected).query(sites, k=1)
    has_peak = nearest <= tol
    called = np.zeros(len(sites), dtype=bool)
    for i, around in enumerate(cKDTree(sites).query_ball_point(sites, NEIGHBOUR_NN * nn_px)):
        neighbours = [j for j in around if j != i and present[j]]
        called[i] = not has_peak[i] and bool(neighbours) and float(np.mean(has_peak[neighbours])) >= 0.5
    return called


def atom_scores(estimate: np.ndarray, truth: AtomTruth, tolerance_px: float | None) -> AtomCounts:
    """Detect atoms in ``estimate`` and score them against ``truth``.

    Spacing: the median nearest-neighbour distance of the true sites. Polarity (dark or bright atoms): the
    sign of the CLEAN image's local contrast at the true atoms, the same for every method. A peak counts when
    its local contrast exceeds :data:`ATOM_THRESHOLD` x the clean image's median at the atoms. Tolerance:
    ``tolerance_px``, or :data:`TOLERANCE_NN_UNKNOWN` x the spacing when None. Vacancies: :func:`vacancy_calls`
    over every site; recall = vacant sites called / vacant sites, precision = vacant sites called / sites called.
    """
    counts = AtomCounts(true=len(truth.present), vacancies=len(truth.vacant))
    if not math.isfinite(truth.nn_px):
        return counts
    tol = tolerance_px if tolerance_px else TOLERANCE_NN_UNKNOWN * truth.nn_px
    detected = detect_atoms(estimate, truth.nn_px, truth.sign, truth.threshold)
    d = match_atoms(detected, truth.present, tol)
    counts.detected, counts.matched, counts.squared_error_px2 = len(detected), len(d), float(np.sum(d * d))
    sites = np.concatenate([truth.present, truth.vacant])
    present = np.arange(len(sites)) < len(truth.present)
    called = vacancy_calls(detected, sites, present, truth.nn_px, tol)
    counts.vacancies_called, counts.vacancies_found = int(called.sum()), int(called[~present].sum())
    return counts
