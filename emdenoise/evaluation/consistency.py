"""Is an estimate consistent with the counts it came from? The Poisson deviance check for invented or erased
structure (the hallucination check).

For a noisy frame of counts ``k`` and an estimate ``x_hat`` (flat illumination, the model's or a baseline's
output), the expected counts are ``lam = exposure * x_hat``; the exposure (dose x beam) is estimated from the
frame itself: the Gaussian beam ``b`` fitted to the frame (:class:`emdenoise.classical.flatfield.FlatField`) times
the normalised convolution ``G*k / G*(b x_hat)`` (Gaussian, sigma = side / :data:`EXPOSURE_DIVISOR`), a smooth
level that absorbs brightness errors of the estimate but not lattice-scale structure. The counts are
``noisy x s`` with ``s`` the recorded dose (per pixel at the beam centre, as the generator stores it) or,
without one, the count scale estimated from the frame (:func:`emdenoise.classical.filters.estimate_count_scale`).
Dead pixels are left out.

The per-pixel Poisson deviance ``D = 2 [k log(k / lam) - (k - lam)]`` of a correct estimate has the EXACT
expected value ``E[D](lam)`` (about 1 + 1/(6 lam) for large ``lam``, but far from 1 at the few counts per
pixel of low-dose data: it tends to 0 with lam) and variance ``Var[D](lam)``, computed here by
summing over the Poisson distribution (:func:`deviance_moments`). Per image:

- ``ratio`` = sum D / sum E[D] (1 for a consistent estimate; invented or erased structure gives an excess);
- ``z`` = (sum D - sum E[D]) / sqrt(sum Var[D]);
- ``deviation`` = sqrt(max(sum D - sum E[D], 0) / sum lam): the RMS relative error of the estimate that the
  excess implies (an estimate off by a relative ``e`` everywhere adds about ``lam e^2`` per pixel), which,
  unlike ``ratio`` and ``z``, does not grow with the dose;
- a frame without counts (all zero: a blanked beam) has no ratio, z or deviation, and a frame that cannot be
  counts (negative or non-finite values) no numbers at all: NaN here, null in the JSON summary with the reason
  in ``undefined``, never ``inconsistent``;
- the local map: the same deviation in blocks of :data:`BLOCK` px; ``max_local_deviation`` and
  ``flagged_fraction`` (blocks above the threshold with a local z above :data:`LOCAL_Z`).

An estimate is ``inconsistent`` when its deviation exceeds ``max_deviation`` (default :data:`MAX_DEVIATION`: a
structure error of 7 % of the signal, about the lattice contrast of the generator's images) and its z exceeds
:data:`MIN_Z` (so that a chance excess, e.g. at a few counts per pixel, is not flagged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.stats import poisson

from emdenoise.classical import flatfield

EXPOSURE_DIVISOR = 12.0
BLOCK = 32
MAX_DEVIATION = 0.07
MIN_Z = 5.0
LOCAL_Z = 3.0
LAM_MIN = 1e-6
LAM_TABLE_MAX = 1e4
_TABLE_POINTS = 1201


def poisson_deviance(counts, lam) -> np.ndarray:
    """Per-pixel Poisson deviance ``2 [k log(k / lam) - (k - lam)]`` (``k = 0``: ``2 lam``), float64.
    ``lam`` is clipped at :data:`LAM_MIN` (an estimate of zero where counts arrived is maximally inconsistent)."""
    k = np.asarray(counts, dtype=np.float64)
    lam = np.maximum(np.asarray(lam, dtype=np.float64), LAM_MIN)
    safe_k = np.where(k > 0, k, 1.0)
    return 2.0 * (np.where(k > 0, k * np.log(safe_k / lam), 0.0) - (k - lam))


@lru_cache(maxsize=1)
def _moment_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log(lam) grid and the exact E[D], Var[D] on it (sums over k = 0 .. lam + 12 sqrt(lam) + 40)."""
    lam = np.geomspace(LAM_MIN, LAM_TABLE_MAX, _TABLE_POINTS)
    means, variances = np.empty_like(lam), np.empty_like(lam)
    for i, value in enumerate(lam):
        k = np.arange(int(value + 12 * math.sqrt(value) + 40))
        p = poisson.pmf(k, value)
        d = poisson_deviance(k, value)
        means[i] = np.sum(p * d)
        variances[i] = max(np.sum(p * d * d) - means[i] ** 2, 0.0)
    return np.log(lam), means, variances


def deviance_moments(lam) -> tuple[np.ndarray, np.ndarray]:
    """Exact expected value and variance of the per-pixel deviance of ``Poisson(lam)`` counts given ``lam``
    (interpolated in log lam on a table of exact sums; beyond 1e4 counts the asymptotic 1 + 1/(6 lam), 2)."""
    lam = np.maximum(np.asarray(lam, dtype=np.float64), LAM_MIN)
    log_lam, means, variances = _moment_table()
    x = np.log(lam)
    mean = np.interp(x, log_lam, means)
    var = np.interp(x, log_lam, variances)
    big = lam > LAM_TABLE_MAX
    if np.any(big):
        mean = np.where(big, 1.0 + 1.0 / (6.0 * lam), mean)
        var = np.where(big, 2.0, var)
    return mean, var


def estimate_exposure(counts: np.ndarray, estimate: np.ndarray, valid: np.ndarray, beam: np.ndarray) -> np.ndarray:
    """Counts per unit of the estimate at each pixel: ``b G*(w k) / G*(w b x_hat)`` (see the module notes)."""
    sigma = max(counts.shape) / EXPOSURE_DIVISOR
    shaded = beam * np.maximum(estimate, 0.0)
    return beam * flatfield.normalised_convolution(counts, shaded, valid.astype(np.float64), sigma)


def _deviation(excess, lam):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.maximum(excess, 0.0) / lam)


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    h, w = values.shape
    bh, bw = max(1, math.ceil(h / block)), max(1, math.ceil(w / block))
    padded = np.zeros((bh * block, bw * block))
    padded[:h, :w] = values
    return padded.reshape(bh, block, bw, block).sum(axis=(1, 3))


@dataclass
class Consistency:
    """The deviance check of one estimate against its noisy frame."""

    ratio: float
    z: float
    deviation: float
    deviance_per_pixel: float
    expected_per_pixel: float
    mean_counts: float
    local_deviation: np.ndarray = field(repr=False)  # (blocks_h, blocks_w)
    local_z: np.ndarray = field(repr=False)  # the same blocks' z
    max_deviation: float = MAX_DEVIATION
    note: str = ""  # why the check is undefined (values that are not counts), else empty

    @property
    def inconsistent(self) -> bool:
        return bool(self.deviation > self.max_deviation and self.z > MIN_Z)

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (test_metrics.json, the denoise sidecar). A number the check cannot give (a frame
        without counts: no signal to compare with) is null, and ``undefined`` says why."""
        ok = np.isfinite(self.local_deviation)
        finite = self.local_deviation[ok]
        flagged = (finite > self.max_deviation) & (self.local_z[ok] > LOCAL_Z)
        out: dict[str, Any] = {
            "deviance_ratio": _rounded(self.ratio, 5),
            "z": _rounded(self.z, 3),
            "deviation": _rounded(self.deviation, 5),
            "deviance_per_pixel": _rounded(self.deviance_per_pixel, 5),
            "expected_per_pixel": _rounded(self.expected_per_pixel, 5),
            "mean_counts": _rounded(self.mean_counts, 4),
            "max_local_deviation": round(float(finite.max()), 5) if finite.size else None,
            "flagged_fraction": round(float(np.mean(flagged)), 5) if finite.size else None,
            "max_deviation": self.max_deviation,
            "inconsistent": self.inconsistent,
        }
        computed = ("deviance_ratio", "z", "deviation", "deviance_per_pixel", "expected_per_pixel", "mean_counts")
        undefined = [key for key in computed if out[key] is None]
        if undefined:
            why = self.note or f"mean counts {self.mean_counts:g}: no signal to check the estimate against"
            out["undefined"] = f"{', '.join(undefined)}: not defined for this frame ({why}), written as null"
        return out


def _rounded(value: float, digits: int) -> float | None:
    """``value`` rounded, None when it is not finite (JSON holds no NaN or infinity)."""
    return round(float(value), digits) if math.isfinite(value) else None


def check(
    noisy: np.ndarray, estimate: np.ndarray, dose: float | None = None, max_deviation: float = MAX_DEVIATION
) -> Consistency:
    """The deviance check of one 2-D ``estimate`` of the 2-D frame ``noisy`` (see the module notes)."""
    from emdenoise.classical.noise import counts_problem, estimate_count_scale

    noisy = np.asarray(noisy, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    problem = counts_problem(noisy)
    if problem:  # not counts: no deviance to compute (and no silent clipping to make some)
        nan, empty = math.nan, np.zeros((0, 0))
        note = f"the input is not counts: {problem}"
        return Consistency(nan, nan, nan, nan, nan, nan, empty, empty, max_deviation, note)
    scale = float(dose) if dose else estimate_count_scale(noisy)
    counts = np.rint(np.clip(noisy, 0.0, None) * scale)
    ff = flatfield.FlatField.of(noisy, scale)
    lam = estimate_exposure(counts, estimate, ff.valid, ff.beam) * np.maximum(estimate, 0.0)
    valid = ff.valid
    deviance = np.where(valid, poisson_deviance(counts, lam), 0.0)
    mean, var = deviance_moments(lam)
    mean, var = np.where(valid, mean, 0.0), np.where(valid, var, 0.0)
    total, expected, variance = float(deviance.sum()), float(mean.sum()), float(var.sum())
    n = max(int(valid.sum()), 1)
    lam = np.where(valid, lam, 0.0)
    block_excess = _block_sums(deviance - mean, BLOCK)
    local = _deviation(block_excess, _block_sums(lam, BLOCK))
    with np.errstate(divide="ignore", invalid="ignore"):
        local_z = block_excess / np.sqrt(_block_sums(var, BLOCK))
    signal = bool(counts[valid].any())  # no counts (a blanked beam, an all-zero frame): nothing to check
    return Consistency(
        ratio=(total / expected if expected > 0 else math.inf) if signal else math.nan,
        z=((total - expected) / math.sqrt(variance) if variance > 0 else 0.0) if signal else math.nan,
        deviation=float(_deviation(total - expected, float(lam.sum()))) if signal else math.nan,
        deviance_per_pixel=total / n,
        expected_per_pixel=expected / n,
        mean_counts=float(counts[valid].mean()) if valid.any() else 0.0,
        local_deviation=local,
        local_z=local_z,
        max_deviation=max_deviation,
    )
