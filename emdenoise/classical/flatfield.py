"""The illumination of a frame estimated from its own counts, flat-fielding, and the lattice's Fourier peaks.

Nothing here looks at a clean image: the beam-aware baselines (:mod:`emdenoise.classical.filters`) and the
hallucination check (:mod:`emdenoise.evaluation.consistency`) call it on the noisy frame alone.

- **Count scale** ``s`` (counts per stored unit): :func:`emdenoise.classical.noise.estimate_count_scale` (the
  Haar-detail Poisson estimate), or the recorded dose when the caller has it.
- **Dead pixels**: zero counts where the local mean is above :data:`DEAD_MIN_COUNTS` counts (a Poisson zero is
  then less likely than ``exp(-8)``); they get weight 0 below.
- **Beam**: a 2-D isotropic Gaussian ``exp(a + b r + c q + k (r^2 + q^2))`` fitted by weighted least squares to
  the logarithm of the heavily smoothed frame (Gaussian, sigma = side / :data:`SMOOTH_DIVISOR`, normalised
  convolution over the valid pixels), weights = the smoothed counts, then once more with pixels whose log
  residual is beyond 2.5 robust sigmas (holes, vacuum edges) left out; the fitted width is then corrected for
  the smoothing (``sigma_beam^2 = sigma_fit^2 - sigma_smooth^2``). It is normalised to peak 1 inside the
  frame; the overall level is left to the baselines' gain/offset. A frame whose fit has no maximum (``k >= 0``)
  keeps the fitted plane ``exp(a + b r + c q)``.
- **Low frequencies**: the normalised convolution ``G*(w y) / G*(w b)`` (``w`` the valid-pixel mask), the local
  Poisson maximum-likelihood estimate of a locally constant signal under the varying illumination ``b``.
- **Lattice peaks**: local maxima of the frame's smoothed power spectrum (flat-fielded, Hann-windowed) that
  stand :data:`PEAK_RATIO` times above the median power of their ring, between periods of
  :data:`MAX_PERIOD_FRACTION` of the side and 2.1 px; at most :data:`MAX_PEAKS`, strongest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from emdenoise.classical.noise import estimate_count_scale

SMOOTH_DIVISOR = 24.0  # beam-fit smoothing sigma = side / 24
DEAD_MIN_COUNTS = 8.0
PEAK_RATIO = 8.0
MAX_PEAKS = 24
MAX_PERIOD_FRACTION = 1.0 / 6.0  # longest lattice period searched, as a fraction of the side
MIN_PERIOD_PX = 2.1
DEFAULT_PERIOD_PX = 8.0  # low-pass scale of a frame without a lattice
_EPS = 1e-12


def normalised_convolution(y: np.ndarray, b: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """``G*(w y) / G*(w b)``: the local ML estimate of ``x`` in ``y ~ Poisson(b x)`` (Gaussian ``G``, ``sigma`` px)."""
    num = ndimage.gaussian_filter(w * y, sigma, mode="reflect")
    den = ndimage.gaussian_filter(w * b, sigma, mode="reflect")
    return num / np.maximum(den, _EPS)


def dead_pixels(image: np.ndarray, scale: float) -> np.ndarray:
    """Zero pixels whose 5x5 neighbourhood averages more than :data:`DEAD_MIN_COUNTS` counts."""
    local = ndimage.uniform_filter(image, 5, mode="reflect") * scale
    return (image <= 0.0) & (local > DEAD_MIN_COUNTS)


def _fit_log_gaussian(z: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Coefficients (a, b, c, k) of ``a + b r + c q + k (r^2 + q^2)`` (r, q in units of the side)."""
    h, w = z.shape
    r, q = np.meshgrid(np.arange(h) / max(h, w), np.arange(w) / max(h, w), indexing="ij")
    design = np.stack([np.ones_like(r), r, q, r * r + q * q], axis=-1).reshape(-1, 4)
    sw = np.sqrt(weight.ravel())
    coef, *_ = np.linalg.lstsq(design * sw[:, None], z.ravel() * sw, rcond=None)
    return coef


def _gaussian_surface(shape: tuple[int, int], coef: np.ndarray) -> np.ndarray:
    h, w = shape
    r, q = np.meshgrid(np.arange(h) / max(h, w), np.arange(w) / max(h, w), indexing="ij")
    k = coef[3] if coef[3] < 0 else 0.0
    return coef[0] + coef[1] * r + coef[2] * q + k * (r * r + q * q)


def fit_beam(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The fitted Gaussian beam of one frame, peak 1 inside the frame (see the module notes)."""
    sigma = max(image.shape) / SMOOTH_DIVISOR
    ones = np.ones_like(image)
    smoothed = normalised_convolution(image, ones, valid.astype(np.float64), sigma)
    positive = smoothed > 0
    if positive.sum() < 16:  # an empty frame: flat illumination
        return ones
    z = np.log(np.maximum(smoothed, _EPS))
    weight = np.where(positive, smoothed, 0.0)
    coef = _fit_log_gaussian(z, weight)
    residual = z - _gaussian_surface(image.shape, coef)
    spread = 1.4826 * np.median(np.abs(residual[positive] - np.median(residual[positive])))
    keep = positive & (np.abs(residual - np.median(residual[positive])) <= 2.5 * max(spread, 1e-6))
    if keep.sum() >= 16:
        coef = _fit_log_gaussian(z, np.where(keep, smoothed, 0.0))
    if coef[3] < 0:  # undo the smoothing's broadening: sigma_beam^2 = sigma_fit^2 - sigma_smooth^2
        side = max(image.shape)
        fit_var = -1.0 / (2.0 * coef[3]) * side * side
        if fit_var > 2.0 * sigma * sigma:
            centre = -coef[1:3] / (2.0 * coef[3])
            k = -side * side / (2.0 * (fit_var - sigma * sigma))
            coef = np.array([0.0, -2.0 * k * centre[0], -2.0 * k * centre[1], k])
    surface = _gaussian_surface(image.shape, coef)
    return np.exp(surface - surface.max())


@dataclass
class FlatField:
    """One frame with its illumination estimated from its own counts (float64 arrays of the frame's shape)."""

    image: np.ndarray
    scale: float  # counts per stored unit
    valid: np.ndarray  # False at dead pixels
    beam: np.ndarray  # fitted beam, peak 1

    @classmethod
    def of(cls, image: np.ndarray, scale: float | None = None) -> FlatField:
        """Estimate the illumination of ``image``; ``scale`` from the image when not given."""
        image = np.asarray(image, dtype=np.float64)
        s = float(scale) if scale else estimate_count_scale(image)
        valid = ~dead_pixels(image, s)
        return cls(image, s, valid, fit_beam(image, valid))

    def low(self, sigma: float) -> np.ndarray:
        """The flat-fielded low frequencies: normalised convolution at ``sigma`` px."""
        return normalised_convolution(self.image, self.beam, self.valid.astype(np.float64), sigma)

    @cached_property
    def flat(self) -> np.ndarray:
        """``y / b``, dead pixels filled with the local normalised convolution (sigma 1.5 px)."""
        out = self.image / np.maximum(self.beam, 1e-3)
        if not self.valid.all():
            out = np.where(self.valid, out, self.low(1.5))
        return out

    @cached_property
    def peaks(self) -> np.ndarray:
        """Lattice peaks of the frame, (P, 2) signed frequency indices (row, col), strongest first."""
        return lattice_peaks(self.flat)

    @cached_property
    def period(self) -> float:
        """The period in px of the strongest lattice peak (:data:`DEFAULT_PERIOD_PX` without a lattice)."""
        if len(self.peaks) == 0:
            return DEFAULT_PERIOD_PX
        k = self.peaks[0] / np.asarray(self.image.shape, dtype=np.float64)
        return float(1.0 / np.hypot(*k))


def frequency_radius(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed frequency index grids (row, col; fftfreq order) and the radius in cycles per px."""
    kr, kc = np.meshgrid(
        np.fft.fftfreq(shape[0], 1.0 / shape[0]), np.fft.fftfreq(shape[1], 1.0 / shape[1]), indexing="ij"
    )
    return kr, kc, np.hypot(kr / shape[0], kc / shape[1])


def ring_median(values: np.ndarray, radius: np.ndarray, width: float) -> np.ndarray:
    """Each value's ring median (rings of ``width`` in the units of ``radius``), as an array of values' shape."""
    ring = np.floor(radius / width).astype(np.int64).ravel()
    flat = values.ravel()
    order = np.lexsort((flat, ring))
    sorted_ring = ring[order]
    starts = np.searchsorted(sorted_ring, np.arange(ring.max() + 1), side="left")
    stops = np.searchsorted(sorted_ring, np.arange(ring.max() + 1), side="right")
    mid = np.where(stops > starts, (starts + stops - 1) // 2, 0)
    medians = flat[order][np.minimum(mid, len(flat) - 1)]
    return medians[ring].reshape(values.shape)


def lattice_peaks(flat: np.ndarray) -> np.ndarray:
    """The lattice peaks of a flat-fielded frame (see the module notes), (P, 2) signed frequency indices."""
    h, w = flat.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((flat - flat.mean()) * window)) ** 2
    power = ndimage.gaussian_filter(power, 0.7, mode="wrap")
    kr, kc, radius = frequency_radius(flat.shape)
    background = ring_median(power, radius, 1.0 / max(h, w))
    ratio = power / np.maximum(background, _EPS)
    is_max = ratio == ndimage.maximum_filter(ratio, size=5, mode="wrap")
    band = (radius >= 1.0 / (MAX_PERIOD_FRACTION * max(h, w))) & (radius <= 1.0 / MIN_PERIOD_PX)
    found = np.flatnonzero((is_max & band & (ratio > PEAK_RATIO)).ravel())
    found = found[np.argsort(-ratio.ravel()[found], kind="stable")][:MAX_PEAKS]
    return np.stack([kr.ravel()[found], kc.ravel()[found]], axis=-1).astype(np.int64)
