"""Classical denoisers as plain functions: ``filter(image, value, scale=None) -> filtered`` on one 2-D float64
image, ``value`` the filter's one tunable parameter, ``scale`` the count scale (counts per unit of the image)
when known, else estimated from the image where a filter needs it. The table of them, their defaults and the
:class:`~emdenoise.method.Method` they become is :mod:`emdenoise.classical.methods`; their tuning on
validation pairs :mod:`emdenoise.classical.tuning`.

The plain filters: ``gaussian`` (``scipy.ndimage.gaussian_filter``), ``median``, ``tv``
(``denoise_tv_chambolle``, weight = value x the image's noise sigma), ``nlm`` (``denoise_nl_means``, fast mode,
5x5 patches, search distance 6, h = value x sigma), ``bm3d`` (the optional ``bm3d`` package, sigma = value x
the noise sigma) and ``anscombe_bm3d`` (Anscombe transform of the counts, BM3D, the closed-form exact unbiased
inverse of Makitalo & Foi, IEEE TIP 20(1), 2011).

The beam-aware filters estimate the illumination from the frame itself (never from clean data):
:class:`~emdenoise.classical.flatfield.FlatField` fits a 2-D Gaussian beam ``b`` to the frame's smoothed counts and
finds the lattice's peaks in its power spectrum. Their low frequencies are the normalised convolution
``G*y / G*b`` with a Gaussian of sigma = ``LOW_PASS_PERIODS`` x the lattice period (8 px without a lattice);
the filters act on the rest of the flat-fielded frame ``y / b - low``, each layer a Poisson posterior mean that
falls back to the coarser one where the beam is too weak (:class:`Layers`): ``flat_gaussian`` (the normalised
convolution alone), ``bragg`` (Gaussian windows of ``radius`` frequency px around every lattice peak and its
Friedel mate), ``wiener`` (Kilaas, J. Microsc. 190, 45, 1998: gain ``max(0, 1 - floor * B / P)`` against the
spectrum's ring median ``B``), ``pnlm`` (Poisson non-local means with lattice-periodic block matching, after
Mevenkamp et al., Adv. Struct. Chem. Imaging 1, 3, 2015) and ``flat_anscombe_bm3d``.

The image's noise sigma is Donoho's robust estimate: the median absolute finest-scale diagonal Haar
coefficient / 0.6745 (written here so that PyWavelets is not needed). The ``bm3d`` package is licensed for
non-commercial use only: an optional extra (``pip install emdenoise[bm3d]``), never a default dependency.
"""

from __future__ import annotations

import importlib

import numpy as np
from scipy import ndimage

from emdenoise.classical import flatfield
from emdenoise.classical.flatfield import FlatField
from emdenoise.classical.noise import (  # the noise estimates: imported from here too, as before the move
    NotCounts,  # noqa: F401
    anscombe,
    counts_problem,  # noqa: F401
    estimate_count_scale,
    inverse_anscombe_unbiased,
    noise_sigma,
)

BM3D_PACKAGE = "bm3d"
LOW_PASS_PERIODS = 0.5  # the beam-aware filters' low-pass sigma, in lattice periods
PRIOR_COUNTS = 20.0  # the beam-aware layers' prior, in counts (see Layers)
NLM_BIN = 3  # Poisson NLM: counts summed over BIN x BIN before the similarity
NLM_PATCH = 7  # Poisson NLM patch side, px
NLM_LOCAL = 3  # Poisson NLM of a frame without a lattice: every offset within this many px


# --------------------------------------------------------------------------------------------------------------
# The filters: (image, value of the tuned parameter) -> filtered image, float64 in and out
# --------------------------------------------------------------------------------------------------------------


def gaussian(image: np.ndarray, sigma: float, scale: float | None = None) -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma=sigma, mode="reflect")


def median(image: np.ndarray, size: float, scale: float | None = None) -> np.ndarray:
    return ndimage.median_filter(image, size=int(size), mode="reflect")


def tv(image: np.ndarray, weight_per_sigma: float, scale: float | None = None) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    weight = weight_per_sigma * noise_sigma(image)
    if weight <= 0.0:
        return image.copy()
    return denoise_tv_chambolle(image, weight=weight)


def nlm(image: np.ndarray, h_per_sigma: float, scale: float | None = None) -> np.ndarray:
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

    def __init__(self, image: np.ndarray, sigma: float | None = None, scale: float | None = None):
        self.ff = ff = FlatField.of(image, scale)
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


def flat_gaussian(image: np.ndarray, sigma: float, scale: float | None = None) -> np.ndarray:
    return Layers(image, sigma, scale).compose()


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


def bragg(image: np.ndarray, radius: float, scale: float | None = None) -> np.ndarray:
    layers = Layers(image, scale=scale)
    return layers.compose(bragg_mask(image.shape, layers.ff.peaks, radius))


def wiener(image: np.ndarray, floor: float, scale: float | None = None) -> np.ndarray:
    layers = Layers(image, scale=scale)
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


def poisson_nlm(image: np.ndarray, h: float, scale: float | None = None) -> np.ndarray:
    """Non-local means of the counts with a Poisson likelihood-ratio patch similarity under the fitted beam
    and lattice-periodic block matching; the weighted Poisson ML estimate ``sum w k / sum w s b``."""
    ff = FlatField.of(image, scale)
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


def bm3d(image: np.ndarray, sigma_per_noise_sigma: float, scale: float | None = None) -> np.ndarray:
    sigma = sigma_per_noise_sigma * noise_sigma(image)
    if sigma <= 0.0:
        return image.copy()
    return np.asarray(_bm3d_module().bm3d(image, sigma_psd=sigma), dtype=np.float64)


def anscombe_bm3d(image: np.ndarray, sigma: float, scale: float | None = None) -> np.ndarray:
    scale = scale or estimate_count_scale(image)
    stabilised = anscombe(image * scale)
    denoised = np.asarray(_bm3d_module().bm3d(stabilised, sigma_psd=sigma), dtype=np.float64)
    return inverse_anscombe_unbiased(denoised) / scale


def flat_anscombe_bm3d(image: np.ndarray, sigma: float, scale: float | None = None) -> np.ndarray:
    ff = FlatField.of(image, scale)
    counts = np.where(ff.valid, ff.image, ff.flat * ff.beam) * ff.scale
    denoised = np.asarray(_bm3d_module().bm3d(anscombe(counts), sigma_psd=sigma), dtype=np.float64)
    return inverse_anscombe_unbiased(denoised) / (ff.scale * np.maximum(ff.beam, 1e-3))
