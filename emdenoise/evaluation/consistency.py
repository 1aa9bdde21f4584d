"""Is an estimate consistent with the counts it came from? The Poisson deviance check for invented or erased
structure (the hallucination check).

For a noisy frame of counts ``k`` and an estimate ``x_hat`` (flat illumination, the model's or a baseline's
output), the expected counts are ``lam = exposure * x_hat``; the exposure (dose x beam) is estimated from the
frame itself: the Gaussian beam ``b`` fitted to the frame (:class:`emdenoise.classical.flatfield.FlatField`) times
the normalised convolution ``G*k / G*(b x_hat)`` (Gaussian, sigma = side / :data:`EXPOSURE_DIVISOR`), a smooth
level that absorbs brightness errors of the estimate but not lattice-scale structure. The counts are
``noisy x s`` with ``s`` the recorded dose (per pixel at the beam centre, as the generator stores it) or,
without one, the count scale estimated from the frame (:func:`emdenoise.classical.filters.estimate_count_scale`);
a frame of detector values on an offset (STEM, CCD) is first mapped to counts by its own photon-transfer fit,
the estimate through the same map (:func:`emdenoise.classical.detector.offset_model`). Dead pixels are left out.

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

Three tests, each a typed :class:`Test` saying whether it fired and why (:attr:`Consistency.tests`); an estimate
is ``inconsistent`` when any fires:

- ``deviance``: the deviation exceeds ``max_deviation`` (default :data:`MAX_DEVIATION`: a structure error of 7 %
  of the signal) and z exceeds :data:`MIN_Z` (so that a chance excess, e.g. at a few counts per pixel, is not
  flagged). An absolute limit: it misses an erased lattice of a few % contrast.
- ``structure``: the estimate against a structureless one. The beam-only expectation ``lam0`` (the same exposure
  with a flat estimate) has its own deviance excess, ``structure_z`` standard deviations: the structure the counts
  show beyond the beam. ``unexplained`` = the estimate's excess / ``lam0``'s excess is the share of that
  structure the estimate fails to explain (0 for a correct estimate, 1 for a flat one); fires when the counts
  show structure (``structure_z`` > :data:`MIN_Z`), the estimate's own excess is significant (z > :data:`MIN_Z`)
  and ``unexplained`` > :data:`MAX_UNEXPLAINED`.
- ``lattice``: the residual's power at the lattice peaks of the counts and of the estimate
  (:mod:`emdenoise.evaluation.spectral`): erased, invented or misplaced lattice peaks, calibrated to a false-alarm
  probability of :data:`emdenoise.evaluation.spectral.ALPHA` per image.

``verdict``: ``inconsistent`` (a test fired), ``consistent`` (none fired and the counts confirm the estimate: it
explains at least half the structure they show beyond the beam, or the lattice peaks they show match its within
:data:`emdenoise.evaluation.spectral.MAX_FRACTION`) or ``cannot tell`` (none fired, nothing confirmed: at a few
counts per pixel an estimate's lattice is neither confirmed nor contradicted); ``undefined`` where the frame has
no counts. ``counts_show_structure`` says whether the counts show any structure above their noise. The JSON
summary's ``version`` is :data:`SUMMARY_VERSION` (2 added ``verdict``, ``tests``, ``structure_z``,
``unexplained_fraction``, ``counts_show_structure`` and ``lattice_peaks``; the version-1 keys are unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import poisson

from emdenoise.classical import detector, flatfield
from emdenoise.evaluation import spectral

EXPOSURE_DIVISOR = 12.0
BLOCK = 32
MAX_DEVIATION = 0.07
MIN_Z = 5.0
MAX_UNEXPLAINED = 0.5
QUANTUM_AGREES = (0.75, 1.4)  # step scale / estimated scale within which the values' step is one count
DISPERSION = 0.05  # share of the expected deviance a count scale estimated from the frame may add (see below)
SUMMARY_VERSION = 2
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


def estimate_exposure(
    counts: np.ndarray, estimate: np.ndarray, valid: np.ndarray, beam: np.ndarray, smoothed: np.ndarray | None = None
) -> np.ndarray:
    """Counts per unit of the estimate at each pixel: ``b G*(w k) / G*(w b x_hat)`` (see the module notes);
    ``smoothed``: ``G*(w k)`` when already computed (the slow part, at sigma = side / 12)."""
    sigma = max(counts.shape) / EXPOSURE_DIVISOR
    w = valid.astype(np.float64)
    if smoothed is None:
        smoothed = ndimage.gaussian_filter(w * counts, sigma, mode="reflect")
    den = ndimage.gaussian_filter(w * beam * np.maximum(estimate, 0.0), sigma, mode="reflect")
    return beam * smoothed / np.maximum(den, 1e-12)


def _deviation(excess, lam):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.maximum(excess, 0.0) / lam)


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    h, w = values.shape
    bh, bw = max(1, math.ceil(h / block)), max(1, math.ceil(w / block))
    padded = np.zeros((bh * block, bw * block))
    padded[:h, :w] = values
    return padded.reshape(bh, block, bw, block).sum(axis=(1, 3))


@dataclass(frozen=True)
class Test:
    """One test of the check: whether it ``fired``, its ``value`` against its ``limit``, and ``why`` in words."""

    name: str
    fired: bool
    value: float
    limit: float
    why: str

    def record(self) -> dict[str, Any]:
        return {"fired": self.fired, "value": _rounded(self.value, 5), "limit": self.limit, "why": self.why}


@dataclass
class Consistency:
    """The check of one estimate against its noisy frame: the deviance numbers, the beam-only comparison and the
    lattice test, and what they conclude (:attr:`tests`, :attr:`verdict`)."""

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
    structure_z: float = math.nan  # the beam-only expectation's deviance excess, in standard deviations
    unexplained: float = math.nan  # the estimate's excess / the beam-only one's
    unexplained_z: float = math.nan  # the estimate's excess beyond what a count scale error may add, in sds
    lattice: spectral.LatticeTest | None = field(default=None, repr=False)

    @property
    def tests(self) -> list[Test]:
        """The deviance, structure and lattice tests (see the module notes); none where the check is undefined."""
        if not math.isfinite(self.z):
            return []
        deviance = Test(
            "deviance",
            bool(self.deviation > self.max_deviation and self.z > MIN_Z),
            self.deviation,
            self.max_deviation,
            f"implied relative error {self.deviation:.3g} (limit {self.max_deviation:g}), z {self.z:.1f}",
        )
        shown = self.structure_z > MIN_Z
        fired = bool(shown and self.unexplained_z > MIN_Z and self.unexplained > MAX_UNEXPLAINED)
        why = (
            f"explains {1 - self.unexplained:.0%} of the structure the counts show beyond the beam "
            f"(z {self.structure_z:.1f}; limit {1 - MAX_UNEXPLAINED:.0%}), own excess z {self.unexplained_z:.1f}"
            if shown
            else f"the counts show no structure beyond the beam (z {self.structure_z:.1f} <= {MIN_Z:g})"
        )
        tests = [deviance, Test("structure", fired, self.unexplained, MAX_UNEXPLAINED, why)]
        if self.lattice is not None:
            value, fired = self.lattice.worst_fraction(), self.lattice.inconsistent
            tests.append(Test("lattice", fired, value, spectral.MAX_FRACTION, self.lattice.why()))
        return tests

    @property
    def inconsistent(self) -> bool:
        return any(test.fired for test in self.tests)

    @property
    def counts_show_structure(self) -> bool:
        """Whether the counts show structure beyond the beam (its deviance, or lattice peaks) to check against."""
        lattice = self.lattice is not None and self.lattice.counts_show_lattice
        return bool(self.structure_z > MIN_Z or lattice)

    @property
    def confirmed(self) -> bool:
        """Whether the counts confirm the estimate: it explains most of the structure they show beyond the beam,
        or its lattice peaks match theirs (:attr:`emdenoise.evaluation.spectral.LatticeTest.confirms`)."""
        lattice = self.lattice is not None and self.lattice.confirms
        return bool((self.structure_z > MIN_Z and self.unexplained <= MAX_UNEXPLAINED) or lattice)

    @property
    def verdict(self) -> str:
        """``inconsistent``, ``consistent``, ``cannot tell`` or ``undefined`` (see the module notes)."""
        if not self.tests:
            return "undefined"
        if self.inconsistent:
            return "inconsistent"
        return "consistent" if self.confirmed else "cannot tell"

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (test_metrics.json, the denoise sidecar). A number the check cannot give (a frame
        without counts: no signal to compare with) is null, and ``undefined`` says why."""
        ok = np.isfinite(self.local_deviation)
        finite = self.local_deviation[ok]
        flagged = (finite > self.max_deviation) & (self.local_z[ok] > LOCAL_Z)
        out: dict[str, Any] = {
            "version": SUMMARY_VERSION,
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
            "verdict": self.verdict,
            "counts_show_structure": self.counts_show_structure,
            "structure_z": _rounded(self.structure_z, 3),
            "unexplained_fraction": _rounded(self.unexplained, 5),
            "tests": {test.name: test.record() for test in self.tests},
        }
        if self.lattice is not None:
            shown = self.lattice.fired or sorted(self.lattice.peaks, key=lambda p: -p.counts)
            out["lattice_peaks"] = [p.record(self.lattice.threshold) for p in shown[:6]]
        computed = ("deviance_ratio", "z", "deviation", "deviance_per_pixel", "expected_per_pixel", "mean_counts")
        undefined = [key for key in computed if out[key] is None]
        if undefined:
            why = self.note or f"mean counts {self.mean_counts:g}: no signal to check the estimate against"
            out["undefined"] = f"{', '.join(undefined)}: not defined for this frame ({why}), written as null"
        return out


def why_flagged(check: dict[str, Any]) -> str:
    """The tests that fired on the first flagged frame of a ``denoise`` sidecar's ``consistency`` record, and why
    (a version-1 record: its deviation)."""
    frame = check["frames"][check["inconsistent_frames"][0]]
    fired = [f"{name}: {test['why']}" for name, test in frame.get("tests", {}).items() if test["fired"]]
    return "; ".join(fired) or (
        f"Poisson deviance implies a relative error of {check['worst_deviation']:.3g} > denoise.max_deviation "
        f"{check['max_deviation']:.3g}"
    )


def _rounded(value: float, digits: int) -> float | None:
    """``value`` rounded, None when it is not finite (JSON holds no NaN or infinity)."""
    return round(float(value), digits) if math.isfinite(value) else None


def _deviance_terms(counts: np.ndarray, lam: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-pixel deviance and its exact mean and variance given ``lam``, zero at invalid pixels."""
    deviance = np.where(valid, poisson_deviance(counts, lam), 0.0)
    mean, var = deviance_moments(lam)
    return deviance, np.where(valid, mean, 0.0), np.where(valid, var, 0.0)


def _structure(
    counts: np.ndarray, ff: flatfield.FlatField, excess: float, dispersion: float, smoothed: np.ndarray
) -> tuple[float, float, np.ndarray]:
    """The beam-only expectation ``lam0`` (a flat estimate), its excess beyond ``dispersion`` x its expected
    deviance in standard deviations (the structure the counts show beyond the beam) and the estimate's
    ``excess`` as a share of ``lam0``'s."""
    lam0 = estimate_exposure(counts, np.ones_like(counts), ff.valid, ff.beam, smoothed)
    deviance, mean, var = _deviance_terms(counts, lam0, ff.valid)
    expected0, spread = float(mean.sum()), math.sqrt(max(float(var.sum()), 1e-300))
    excess0 = float(deviance.sum()) - expected0
    structure_z = (excess0 - dispersion * expected0) / spread
    return structure_z, (excess / excess0 if excess0 > 0 else math.nan), np.where(ff.valid, lam0, 0.0)


def count_scale(noisy: np.ndarray, dose: float | None) -> tuple[float, bool]:
    """``(counts per stored unit, whether exact)``: the ``dose`` when given; else the step of the values when they
    are whole multiples of one (a stored ``counts / dose``, a counting detector's integers) and the scale
    estimated from the noise agrees (:data:`QUANTUM_AGREES`: integers of a detector with 1.5 or more units per
    electron are not counts); else that estimate (a few % off, and low at high dose: not exact)."""
    from emdenoise.classical.noise import estimate_count_scale

    if dose:
        return float(dose), True
    estimate = estimate_count_scale(noisy)
    values = np.unique(noisy[noisy > 0])
    if values.size >= 2:
        steps = np.diff(values)
        step = float(np.mean(steps[steps < 1.5 * steps.min()]))  # neighbouring counts; float32 rounding averages
        k = np.rint(values / step)
        if QUANTUM_AGREES[0] < 1.0 / (step * estimate) < QUANTUM_AGREES[1] and np.max(np.abs(values / step - k)) < 0.02:
            return float(np.sum(k * k) / np.sum(values * k)), True
    return estimate, False


def check(
    noisy: np.ndarray, estimate: np.ndarray, dose: float | None = None, max_deviation: float = MAX_DEVIATION
) -> Consistency:
    """The deviance check of one 2-D ``estimate`` of the 2-D frame ``noisy`` (see the module notes)."""
    from emdenoise.classical.noise import counts_problem

    noisy = np.asarray(noisy, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    problem = counts_problem(noisy)
    if problem:  # not counts: no deviance to compute (and no silent clipping to make some)
        nan, empty = math.nan, np.zeros((0, 0))
        note = f"the input is not counts: {problem}"
        return Consistency(nan, nan, nan, nan, nan, nan, empty, empty, max_deviation, note)
    model = None if dose else detector.offset_model(noisy)
    if model is not None:  # detector values on an offset (STEM, CCD): the counts above it, and the estimate's
        counts, estimate = np.rint(detector.to_counts(noisy, model)), detector.to_counts(estimate, model)
        exact, ff = False, flatfield.FlatField.of(counts, 1.0)
    else:
        scale, exact = count_scale(noisy, dose)
        counts = np.rint(np.clip(noisy, 0.0, None) * scale)
        ff = flatfield.FlatField.of(noisy, scale)
    valid = ff.valid
    smoothed = ndimage.gaussian_filter(valid * counts, max(counts.shape) / EXPOSURE_DIVISOR, mode="reflect")
    exposure = estimate_exposure(counts, estimate, valid, ff.beam, smoothed)
    lam = np.where(valid, exposure * np.maximum(estimate, 0.0), 0.0)
    deviance, mean, var = _deviance_terms(counts, lam, valid)
    total, expected, variance = float(deviance.sum()), float(mean.sum()), float(var.sum())
    n = max(int(valid.sum()), 1)
    block_excess = _block_sums(deviance - mean, BLOCK)
    local = _deviation(block_excess, _block_sums(lam, BLOCK))
    with np.errstate(divide="ignore", invalid="ignore"):
        local_z = block_excess / np.sqrt(_block_sums(var, BLOCK))
    signal = bool(counts[valid].any())  # no counts (a blanked beam, an all-zero frame): nothing to check
    if not signal:
        nan = math.nan
        return Consistency(nan, nan, nan, total / n, expected / n, 0.0, local, local_z, max_deviation)
    dispersion = 0.0 if exact else DISPERSION
    structure_z, unexplained, lam0 = _structure(counts, ff, total - expected, dispersion, smoothed)
    return Consistency(
        ratio=total / expected if expected > 0 else math.inf,
        z=(total - expected) / math.sqrt(variance) if variance > 0 else 0.0,
        deviation=float(_deviation(total - expected, float(lam.sum()))),
        deviance_per_pixel=total / n,
        expected_per_pixel=expected / n,
        mean_counts=float(counts[valid].mean()),
        local_deviation=local,
        local_z=local_z,
        max_deviation=max_deviation,
        structure_z=structure_z,
        unexplained=unexplained,
        unexplained_z=(total - (1.0 + dispersion) * expected) / math.sqrt(variance) if variance > 0 else 0.0,
        lattice=spectral.lattice_test(counts, lam, lam0, valid, ff.beam, estimate),
    )
