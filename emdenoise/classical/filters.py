"""Classical denoisers a microscopist would compare the deep models against.

Each baseline filters one 2-D float image on its own (no training). The test task then gives every baseline
the same honest treatment:

1. **Tune** one parameter over a small grid on a few validation pairs, keeping the value with the best mean
   per-image PSNR (fixed data range R from the dataset card).
2. **Filter, then a global gain/offset fitted on the validation split**: ``a * filtered + b``, with ``a`` and
   ``b`` the least-squares fit of the filtered validation images to their clean images, refitted for every
   grid value. The noisy images are ``clean x beam profile + shot noise (+ dead pixels)`` while the target
   is the clean image with flat illumination; a pure filter cannot remove the beam profile, and a global
   gain/offset only corrects the overall brightness: the plain rows measure what filtering alone achieves.
   The beam-aware baselines below estimate the beam from each frame and flat-field first.

The baselines, their tuned parameter and grid:

``gaussian``  ``scipy.ndimage.gaussian_filter``, ``sigma`` in pixels.
``median``    ``scipy.ndimage.median_filter``, window ``size`` in pixels (also removes dead pixels).
``tv``        ``skimage.restoration.denoise_tv_chambolle``, weight = ``weight_per_sigma`` x the image's noise
              sigma (so one setting suits every dose).
``nlm``       ``skimage.restoration.denoise_nl_means``, fast mode, 5x5 patches, search distance 6, the image's
              noise sigma given as ``sigma``, filter strength h = ``h_per_sigma`` x sigma.
``bm3d``      BM3D (Dabov et al. 2007, the optional ``bm3d`` package) on the image as it is, noise sigma =
              ``sigma_per_noise_sigma`` x the image's noise sigma.
``anscombe_bm3d``  Poisson-aware BM3D: Anscombe transform ``2 sqrt(x s + 3/8)`` with the count scale ``s``
              estimated from the image (see :func:`estimate_count_scale`), BM3D with sigma 1, then the
              closed-form approximation of the exact unbiased inverse (Makitalo & Foi, IEEE TIP 20(1), 2011),
              divided by ``s``. Nothing tuned but the gain/offset.

The beam-aware baselines estimate the illumination from the frame itself (never from clean data):
:class:`~emdenoise.classical.flatfield.FlatField` fits a 2-D Gaussian beam ``b`` to the frame's smoothed counts and
finds the lattice's peaks in its power spectrum. Their low frequencies are the normalised convolution
``G*y / G*b`` with a Gaussian of sigma = ``LOW_PASS_PERIODS`` x the lattice period (8 px without a lattice);
the filters below act on the rest of the flat-fielded frame ``y / b - low``. Each layer is a Poisson posterior
mean that falls back to the coarser one where the beam is too weak for the counts to support it
(:class:`Layers`).

``flat_gaussian``  the normalised convolution alone, ``sigma`` in pixels (heavy-smoothing flat field).
``bragg``     Bragg (Fourier) lattice filter: Gaussian windows of ``radius`` frequency px around every lattice
              peak found in the frame (and its Friedel mate), plus the low frequencies. Erases what is not
              periodic (defects) by design: the classic HRTEM filter.
``wiener``    Wiener-type average background subtraction (Kilaas, J. Microsc. 190, 45, 1998): the spectrum's
              smoothed power ``P`` against its ring median ``B`` (the background, robust to the peaks), gain
              ``max(0, 1 - floor * B / P)`` per frequency, ``floor`` tuned.
``pnlm``      Poisson non-local means with lattice-periodic block matching (after Mevenkamp et al., Adv.
              Struct. Chem. Imaging 1, 3, 2015): candidate patches at the lattice translations
              ``n1 a1 + n2 a2`` (|n| <= 2, each +-1 px; every offset within 3 px for a frame without a lattice),
              similarity = the Poisson generalised likelihood ratio that two 7x7 patches of 3x3-binned counts
              share one signal under the fitted beam (about 1 per pixel when they do), weight
              ``exp(-max(d - 1, 0) / h)``, estimate = the weighted Poisson posterior mean
              ``(sum w k + m) / (sum w s b + 1)`` (one prior count at the smooth level ``m``).
``flat_anscombe_bm3d``  Anscombe + BM3D on the counts, exact unbiased inverse, then divided by ``s b`` (the
              fitted beam): BM3D where the Poisson noise is stabilised, flat-fielded after (optional package).

The image's noise sigma is Donoho's robust estimate: the median absolute finest-scale diagonal Haar
coefficient / 0.6745 (the estimator ``skimage.restoration.estimate_sigma`` implements with Daubechies
wavelets, written here so that PyWavelets is not needed).

The ``bm3d`` package is licensed for non-commercial use only: it is an optional extra
(``pip install emdenoise[bm3d]``), never a default dependency, never in the container image.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from emdenoise.classical import flatfield
from emdenoise.classical.flatfield import FlatField
from emdenoise.evaluation.metrics import psnr_per_image

BM3D_PACKAGE = "bm3d"
BM3D_INSTALL = "pip install emdenoise[bm3d] (the bm3d package is licensed for non-commercial use only)"
# Haar detail coefficient -> Gaussian sigma: 1 / Phi^-1(3/4).
_MAD_TO_SIGMA = 1.0 / 0.6744897501960817
_ANSCOMBE_ZERO = 2.0 * math.sqrt(3.0 / 8.0)  # the Anscombe transform of a zero count
LOW_PASS_PERIODS = 0.5  # the beam-aware filters' low-pass sigma, in lattice periods
PRIOR_COUNTS = 20.0  # the beam-aware layers' prior, in counts (see Layers)
NLM_BIN = 3  # Poisson NLM: counts summed over BIN x BIN before the similarity
NLM_PATCH = 7  # Poisson NLM patch side, px
NLM_LOCAL = 3  # Poisson NLM of a frame without a lattice: every offset within this many px


# --------------------------------------------------------------------------------------------------------------
# Noise estimates and the Anscombe transform
# --------------------------------------------------------------------------------------------------------------


def _haar_blocks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finest-scale Haar diagonal detail and local mean of every whole 2x2 block of ``image``."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    if h == 0 or w == 0:
        raise ValueError(f"image of shape {image.shape} is too small for a noise estimate (needs 2x2)")
    x = np.asarray(image[:h, :w], dtype=np.float64)
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    return (a - b - c + d) / 2.0, (a + b + c + d) / 4.0


def noise_sigma(image: np.ndarray) -> float:
    """Robust Gaussian noise standard deviation of ``image`` (median absolute diagonal Haar detail / 0.6745)."""
    detail, _ = _haar_blocks(image)
    return float(np.median(np.abs(detail)) * _MAD_TO_SIGMA)


def estimate_count_scale(image: np.ndarray) -> float:
    """Counts per data unit ``s`` of a Poisson image ``x = counts / s``, estimated from the image alone.

    For Poisson counts, the variance of ``x`` at each pixel is its mean divided by ``s``. The diagonal Haar
    detail of a 2x2 block cancels any locally linear signal and keeps the noise, with variance equal to the
    block's mean intensity / s; hence ``s = sum of block means / sum of squared details``. Unlike a median
    based estimate this stays unbiased at a few counts per pixel (where the noise is far from Gaussian);
    sharp image detail and dead pixels add to the details and bias ``s`` low by a few per cent.
    The dose is deliberately not used: the deep models do not get it either, and real data lack it.
    """
    detail, mean = _haar_blocks(np.clip(image, 0.0, None))
    energy = float(np.sum(detail**2))
    total = float(np.sum(mean))
    if energy <= 0.0 or total <= 0.0:
        return 1.0  # a constant or empty image: no noise to measure, any scale will do
    return total / energy


def anscombe(x: np.ndarray) -> np.ndarray:
    """Anscombe's variance-stabilising transform of Poisson counts: ``2 sqrt(x + 3/8)`` (unit noise sigma)."""
    return 2.0 * np.sqrt(np.clip(x, 0.0, None) + 3.0 / 8.0)


def inverse_anscombe_unbiased(d: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of the Anscombe transform.

    Makitalo & Foi (2011): the exact unbiased inverse maps ``E[2 sqrt(k + 3/8) | lambda]`` back to
    ``lambda``; its closed-form approximation is
    ``d^2/4 + sqrt(3/2)/(4 d) - 11/(8 d^2) + 5 sqrt(3/2)/(8 d^3) - 1/8``.
    It is exactly 0 at ``d = 2 sqrt(3/8)`` (the transform of a zero count); smaller values, which the
    exact inverse would also send to 0, give 0.
    """
    d = np.asarray(d, dtype=np.float64)
    safe = np.maximum(d, _ANSCOMBE_ZERO)
    r = math.sqrt(1.5)
    out = safe**2 / 4.0 + r / (4.0 * safe) - 11.0 / (8.0 * safe**2) + 5.0 * r / (8.0 * safe**3) - 1.0 / 8.0
    return np.maximum(out, 0.0)


# --------------------------------------------------------------------------------------------------------------
# The filters: (image, value of the tuned parameter) -> filtered image, float64 in and out
# --------------------------------------------------------------------------------------------------------------


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma=sigma, mode="reflect")


def _median(image: np.ndarray, size: float) -> np.ndarray:
    return ndimage.median_filter(image, size=int(size), mode="reflect")


def _tv(image: np.ndarray, weight_per_sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    weight = weight_per_sigma * noise_sigma(image)
    if weight <= 0.0:
        return image.copy()
    return denoise_tv_chambolle(image, weight=weight)


def _nlm(image: np.ndarray, h_per_sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    sigma = noise_sigma(image)
    if sigma <= 0.0:
        return image.copy()
    return denoise_nl_means(image, patch_size=5, patch_distance=6, h=h_per_sigma * sigma, sigma=sigma, fast_mode=True)


# --------------------------------------------------------------------------------------------------------------
# Beam-aware baselines: the illumination is estimated from the frame itself (emdenoise.classical.flatfield)
# --------------------------------------------------------------------------------------------------------------


def _wiener_shrink(values: np.ndarray, noise: np.ndarray, sigma: float) -> np.ndarray:
    """``values`` scaled by the local Wiener gain ``max(0, 1 - noise / local power)`` (power smoothed over
    ``sigma`` px): where the known noise variance dominates, the values fall to 0."""
    power = ndimage.gaussian_filter(values * values, sigma, mode="reflect")
    return values * np.clip(1.0 - noise / np.maximum(power, 1e-30), 0.0, 1.0)


class Layers:
    """A flat-fielded frame in three layers, each shrunk where the counts cannot support it.

    Flat-fielding divides by the beam: where the beam is weak, ``y / b`` is mostly noise, and with a few per
    cent of contrast that noise can exceed the signal. Each layer is therefore a Poisson posterior mean that
    falls back to the coarser layer where the counts are few (a Gamma prior worth :data:`PRIOR_COUNTS` counts,
    centred on the coarser layer):

    - ``base``: ``(G*(w y) + k m) / (G*(w b) + k)`` at sigma = side / 8, ``m`` the frame's global ML level;
    - ``low``: the same at ``sigma``, centred on ``base``;
    - ``detail``: a filter's output on ``(y + k1 low) / (b + k1) - low`` (``k1``: one prior count per pixel),
      then scaled by its local Wiener gain ``max(0, 1 - noise / local power)``, the noise being the known
      Poisson variance of that layer times the share of white noise the filter passes (``mean |transfer|^2``).

    ``k`` is expressed in the frame's own units (counts / (s x the kernel's effective area ``4 pi sigma^2``)).
    """

    def __init__(self, image: np.ndarray, sigma: float | None = None):
        self.ff = ff = FlatField.of(image)
        self.sigma = LOW_PASS_PERIODS * ff.period if sigma is None else sigma
        w = ff.valid.astype(np.float64)
        y, b = ff.image, ff.beam
        level = float(np.sum(w * y) / max(np.sum(w * b), 1e-12))
        self.base = self._posterior(y, b, w, max(image.shape) / 8.0, level)
        self.low = self._posterior(y, b, w, self.sigma, self.base)
        k1 = 1.0 / ff.scale
        flat = (np.where(ff.valid, y, self.low * b) + k1 * self.low) / (b + k1)
        self.variance = np.maximum(self.low, 0.0) * b / (ff.scale * (b + k1) ** 2)
        self.spectrum = np.fft.fft2(flat - self.low)

    def _posterior(self, y, b, w, sigma: float, prior) -> np.ndarray:
        k = PRIOR_COUNTS / (self.ff.scale * 4.0 * np.pi * sigma * sigma)
        num = ndimage.gaussian_filter(w * y, sigma, mode="reflect")
        den = ndimage.gaussian_filter(w * b, sigma, mode="reflect")
        return (num + k * prior) / (den + k)

    def detail(self, transfer: np.ndarray) -> np.ndarray:
        detail = np.fft.ifft2(self.spectrum * transfer).real
        passed = float(np.mean(np.abs(transfer) ** 2))
        return _wiener_shrink(detail, passed * self.variance, self.ff.period)

    def compose(self, transfer: np.ndarray | None = None) -> np.ndarray:
        return self.low if transfer is None else self.low + self.detail(transfer)


def _flat_gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    return Layers(image, sigma).compose()


def bragg_mask(shape: tuple[int, int], peaks: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian windows of ``radius`` frequency px around each peak and its Friedel mate, capped at 1."""
    kr, kc, _ = flatfield.frequency_radius(shape)
    mask = np.zeros(shape)
    h, w = shape
    for pr, pc in np.concatenate([peaks, -peaks]) if len(peaks) else ():
        dr = (kr - pr + h / 2) % h - h / 2
        dc = (kc - pc + w / 2) % w - w / 2
        np.maximum(mask, np.exp(-(dr * dr + dc * dc) / (2.0 * radius * radius)), out=mask)
    return mask


def _bragg(image: np.ndarray, radius: float) -> np.ndarray:
    layers = Layers(image)
    return layers.compose(bragg_mask(image.shape, layers.ff.peaks, radius))


def _wiener(image: np.ndarray, floor: float) -> np.ndarray:
    layers = Layers(image)
    power = ndimage.gaussian_filter(np.abs(layers.spectrum) ** 2, 1.0, mode="wrap")
    _, _, radius = flatfield.frequency_radius(image.shape)
    background = flatfield.ring_median(power, radius, 1.0 / max(image.shape))
    return layers.compose(np.clip(1.0 - floor * background / np.maximum(power, 1e-30), 0.0, 1.0))


def lattice_offsets(shape: tuple[int, int], peaks: np.ndarray) -> list[tuple[int, int]]:
    """Block-matching offsets (row, col) px: the lattice translations ``n1 a1 + n2 a2`` (|n| <= 2, each with its
    4 neighbours) from the two strongest non-collinear peaks; without a lattice every offset within
    :data:`NLM_LOCAL` px."""
    offsets = {(0, 0)}
    g = peaks / np.asarray(shape, dtype=np.float64) if len(peaks) else np.zeros((0, 2))
    second = next(
        (q for q in g[1:] if abs(g[0][0] * q[1] - g[0][1] * q[0]) > 0.3 * np.hypot(*g[0]) * np.hypot(*q)), None
    )
    if second is None:
        offsets |= {(dr, dc) for dr in range(-NLM_LOCAL, NLM_LOCAL + 1) for dc in range(-NLM_LOCAL, NLM_LOCAL + 1)}
    else:
        basis = np.linalg.inv(np.stack([g[0], second]))  # columns a1, a2: a_i . g_j = delta_ij
        for n1 in range(-2, 3):
            for n2 in range(-2, 3):
                t = np.rint(n1 * basis[:, 0] + n2 * basis[:, 1]).astype(int)
                for jr, jc in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
                    offsets.add((int(t[0]) + jr, int(t[1]) + jc))
    return sorted(offsets)


def _xlogx(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x * np.log(np.maximum(x, 1e-300)), 0.0)


def _poisson_nlm(image: np.ndarray, h: float) -> np.ndarray:
    """Non-local means of the counts with a Poisson likelihood-ratio patch similarity under the fitted beam
    and lattice-periodic block matching; the weighted Poisson ML estimate ``sum w k / sum w s b``."""
    ff = FlatField.of(image)
    counts = np.where(ff.valid, ff.image, ff.flat * ff.beam) * ff.scale
    expose = ff.beam * ff.scale * ff.valid + 1e-9
    area = float(NLM_BIN * NLM_BIN)
    binned = ndimage.uniform_filter(counts, NLM_BIN, mode="wrap") * area
    binned_exposure = ndimage.uniform_filter(expose, NLM_BIN, mode="wrap") * area
    k_log_k, k_log_b = _xlogx(binned), binned * np.log(binned_exposure)
    num, den = np.zeros_like(counts), np.zeros_like(counts)
    for dr, dc in lattice_offsets(image.shape, ff.peaks):
        k2 = np.roll(counts, (dr, dc), axis=(0, 1))
        b2 = np.roll(expose, (dr, dc), axis=(0, 1))
        if (dr, dc) == (0, 0):
            weight = np.ones_like(counts)
        else:
            kb2 = np.roll(binned, (dr, dc), axis=(0, 1))
            glr = (
                k_log_k
                + np.roll(k_log_k, (dr, dc), axis=(0, 1))
                - k_log_b
                - np.roll(k_log_b, (dr, dc), axis=(0, 1))
                - _xlogx(binned + kb2)
                + (binned + kb2) * np.log(binned_exposure + np.roll(binned_exposure, (dr, dc), axis=(0, 1)))
            )
            distance = ndimage.uniform_filter(2.0 * glr, NLM_PATCH, mode="wrap")
            weight = np.exp(-np.maximum(distance - 1.0, 0.0) / h)
        num += weight * k2
        den += weight * b2
    # one prior count at the frame's smooth level: where the beam is too weak, fall back to it (no blow-up)
    return (num + ff.low(max(image.shape) / 8.0)) / (den + 1.0)


def _bm3d_module():
    return importlib.import_module(BM3D_PACKAGE)


def _bm3d(image: np.ndarray, sigma_per_noise_sigma: float) -> np.ndarray:
    sigma = sigma_per_noise_sigma * noise_sigma(image)
    if sigma <= 0.0:
        return image.copy()
    return np.asarray(_bm3d_module().bm3d(image, sigma_psd=sigma), dtype=np.float64)


def _anscombe_bm3d(image: np.ndarray, sigma: float) -> np.ndarray:
    scale = estimate_count_scale(image)
    stabilised = anscombe(image * scale)
    denoised = np.asarray(_bm3d_module().bm3d(stabilised, sigma_psd=sigma), dtype=np.float64)
    return inverse_anscombe_unbiased(denoised) / scale


def _flat_anscombe_bm3d(image: np.ndarray, sigma: float) -> np.ndarray:
    ff = FlatField.of(image)
    counts = np.where(ff.valid, ff.image, ff.flat * ff.beam) * ff.scale
    denoised = np.asarray(_bm3d_module().bm3d(anscombe(counts), sigma_psd=sigma), dtype=np.float64)
    return inverse_anscombe_unbiased(denoised) / (ff.scale * np.maximum(ff.beam, 1e-3))


# --------------------------------------------------------------------------------------------------------------
# The table of baselines
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """One classical denoiser: ``param`` is the name of its tuned parameter, ``grid`` the values tried."""

    name: str
    param: str
    grid: tuple[float, ...]
    filter: Callable[[np.ndarray, float], np.ndarray] = field(repr=False)
    fixed: dict = field(default_factory=dict)  # settings that are not tuned, recorded in the report
    package: str | None = None  # optional package it needs
    max_tune_images: int = 0  # cap on tuning images for slow methods (0: no cap)

    def apply(self, image: np.ndarray, value: float) -> np.ndarray:
        """Filter one 2-D image with the parameter set to ``value``; float64 out."""
        return self.filter(np.asarray(image, dtype=np.float64), value)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("gaussian", "sigma", (0.5, 0.75, 1.0, 1.5, 2.0, 3.0), _gaussian),
        Baseline("median", "size", (3, 5, 7), _median),
        Baseline("tv", "weight_per_sigma", (0.25, 0.5, 1.0, 2.0, 4.0), _tv),
        Baseline(
            "nlm",
            "h_per_sigma",
            (0.4, 0.6, 0.8, 1.0, 1.3),
            _nlm,
            fixed={"patch_size": 5, "patch_distance": 6, "fast_mode": True},
        ),
        Baseline("bm3d", "sigma_per_noise_sigma", (0.75, 1.0, 1.5), _bm3d, package=BM3D_PACKAGE, max_tune_images=4),
        Baseline(
            "anscombe_bm3d",
            "sigma",
            (1.0,),
            _anscombe_bm3d,
            package=BM3D_PACKAGE,
            max_tune_images=4,
            fixed={"count_scale": "estimated per image", "inverse": "exact unbiased (closed form)"},
        ),
        Baseline("flat_gaussian", "sigma", (1.0, 1.5, 2.0, 3.0, 4.0), _flat_gaussian, fixed={"beam": "fitted"}),
        Baseline(
            "bragg",
            "radius",
            (1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
            _bragg,
            fixed={"beam": "fitted", "low_pass_periods": LOW_PASS_PERIODS, "peak_ratio": flatfield.PEAK_RATIO},
        ),
        Baseline(
            "wiener",
            "floor",
            (1.0, 1.5, 2.0, 3.0, 4.0),
            _wiener,
            fixed={"beam": "fitted", "low_pass_periods": LOW_PASS_PERIODS, "background": "ring median"},
        ),
        Baseline(
            "pnlm",
            "h",
            (0.2, 0.4, 0.8, 1.6, 3.2),
            _poisson_nlm,
            fixed={
                "beam": "fitted",
                "bin": NLM_BIN,
                "patch": NLM_PATCH,
                "similarity": "Poisson GLR",
                "matching": "lattice",
            },
            max_tune_images=8,
        ),
        Baseline(
            "flat_anscombe_bm3d",
            "sigma",
            (0.75, 1.0, 1.25),
            _flat_anscombe_bm3d,
            package=BM3D_PACKAGE,
            max_tune_images=4,
            fixed={"beam": "fitted", "inverse": "exact unbiased (closed form)"},
        ),
    )
}

DEFAULT_BASELINES = ("gaussian", "median", "tv", "nlm", "flat_gaussian", "bragg", "wiener", "pnlm")


def names() -> tuple[str, ...]:
    """Every registered baseline, installed or not."""
    return tuple(BASELINES)


def get(name: str) -> Baseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None


def missing_package(name: str) -> str | None:
    """The optional package baseline ``name`` needs and cannot import, or None when it can run."""
    package = get(name).package
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except ImportError:
        return package
    return None


def available() -> tuple[str, ...]:
    """The baselines that can run here (the BM3D ones only when the optional package is installed)."""
    return tuple(name for name in BASELINES if missing_package(name) is None)


# --------------------------------------------------------------------------------------------------------------
# Tuning: grid search + global gain/offset on validation pairs
# --------------------------------------------------------------------------------------------------------------


def fit_gain_offset(filtered: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """Least-squares ``a, b`` minimising ``sum (a * filtered + b - clean)^2`` over every pixel given."""
    f = np.asarray(filtered, dtype=np.float64).ravel()
    c = np.asarray(clean, dtype=np.float64).ravel()
    f_mean, c_mean = f.mean(), c.mean()
    var = float(np.mean((f - f_mean) ** 2))
    if var <= 0.0:
        return 0.0, float(c_mean)
    gain = float(np.mean((f - f_mean) * (c - c_mean)) / var)
    return gain, float(c_mean - gain * f_mean)


@dataclass
class TunedBaseline:
    """A baseline with its parameter chosen and its gain/offset fitted: call it on a 2-D image."""

    baseline: Baseline
    value: float
    gain: float
    offset: float
    tune_psnr: float  # mean per-image validation PSNR at the chosen value
    n_tune: int  # validation images used
    grid_psnr: dict[float, float]  # mean validation PSNR for every grid value
    record: dict | None = None  # the parameters as reported (params() plus the tuning time), once scored

    @property
    def name(self) -> str:
        return self.baseline.name

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Denoise one 2-D image; float32 out, same shape."""
        out = self.gain * self.baseline.apply(image, self.value) + self.offset
        return out.astype(np.float32)

    def params(self) -> dict:
        """Everything needed to reproduce this row, for test_metrics.json."""
        value = int(self.value) if float(self.value).is_integer() else float(self.value)
        return {
            self.baseline.param: value,
            **self.baseline.fixed,
            "gain": self.gain,
            "offset": self.offset,
            "tuned_on_val_images": self.n_tune,
            "val_psnr": self.tune_psnr,
            "grid": {str(k): v for k, v in self.grid_psnr.items()},
        }


def tune(
    baseline: Baseline | str,
    noisy: np.ndarray,
    clean: np.ndarray,
    data_range: float,
    on_step: Callable[[], None] | None = None,
) -> TunedBaseline:
    """Pick ``baseline``'s parameter from its grid on validation pairs ``noisy``/``clean`` (N, H, W).

    For every grid value: filter each image, fit one global gain/offset over all the images, score the mean
    per-image PSNR with the fixed ``data_range``. The best value wins (the first one on ties).
    ``on_step`` is called after each filtered image (for a progress bar).
    """
    if isinstance(baseline, str):
        baseline = get(baseline)
    n = len(noisy)
    if baseline.max_tune_images:
        n = min(n, baseline.max_tune_images)
    if n == 0:
        raise ValueError("tuning needs at least one validation pair")
    noisy, clean = noisy[:n], clean[:n]
    best: TunedBaseline | None = None
    grid_psnr: dict[float, float] = {}
    for value in baseline.grid:
        filtered = np.empty(noisy.shape, dtype=np.float64)
        for i, image in enumerate(noisy):
            filtered[i] = baseline.apply(image, value)
            if on_step:
                on_step()
        gain, offset = fit_gain_offset(filtered, clean)
        score = float(psnr_per_image(gain * filtered + offset, clean, data_range).mean())
        grid_psnr[value] = score
        if best is None or score > best.tune_psnr:
            best = TunedBaseline(baseline, value, gain, offset, score, n, grid_psnr)
    assert best is not None  # the grid is never empty
    return best


def tuning_steps(baseline: Baseline | str, n_val: int) -> int:
    """How many filter calls :func:`tune` makes on ``n_val`` validation images (for a progress bar total)."""
    if isinstance(baseline, str):
        baseline = get(baseline)
    n = min(n_val, baseline.max_tune_images) if baseline.max_tune_images else n_val
    return n * len(baseline.grid)
