"""Noise estimates from one Poisson frame, and the Anscombe transform (NumPy only).

The classical filters (:mod:`emdenoise.classical.filters`), the flat-field (:mod:`emdenoise.classical.flatfield`),
self-supervised training and the consistency check estimate a frame's count scale or noise level here.
"""

from __future__ import annotations

import math

import numpy as np

# Haar detail coefficient -> Gaussian sigma: 1 / Phi^-1(3/4).
_MAD_TO_SIGMA = 1.0 / 0.6744897501960817
_ANSCOMBE_ZERO = 2.0 * math.sqrt(3.0 / 8.0)  # the Anscombe transform of a zero count


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


class NotCounts(ValueError):
    """Values that cannot be counts (negative, NaN or infinite) given where counts are expected."""


def counts_problem(values: np.ndarray) -> str | None:
    """Why ``values`` cannot be counts of electrons (one line naming the smallest value), None when they can."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return "expected counts (finite values >= 0), found NaN or infinity"
    if values.size and values.dtype.kind in "if" and values.min() < 0:
        return f"expected counts (values >= 0), got a smallest value of {float(values.min()):g}"
    return None


def estimate_count_scale(image: np.ndarray) -> float:
    """Counts per data unit ``s`` of a Poisson image ``x = counts / s``, estimated from the image alone.

    For Poisson counts, the variance of ``x`` at each pixel is its mean divided by ``s``. The diagonal Haar
    detail of a 2x2 block cancels any locally linear signal and keeps the noise, with variance equal to the
    block's mean intensity / s; hence ``s = sum of block means / sum of squared details``. Unlike a median
    based estimate this stays unbiased at a few counts per pixel (where the noise is far from Gaussian);
    sharp image detail and dead pixels add to the details and bias ``s`` low by a few per cent.
    The dose is deliberately not used: the deep models do not get it either, and real data lack it.
    Values that cannot be counts (negative, not finite) raise :class:`NotCounts` (no silent clipping).
    """
    problem = counts_problem(image)
    if problem:
        raise NotCounts(problem)
    detail, mean = _haar_blocks(image)
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
