"""The lattice half of the hallucination check: does the estimate carry the periodic structure the counts show,
and only that? Part of :mod:`emdenoise.evaluation.consistency`, which calls :func:`lattice_test`.

A lattice's signal sits in a few Fourier peaks, so a test there sees what the whole-image deviance drowns: a
square lattice of 4 % contrast erased at 200 e/px leaves the deviance within its noise (z below 1), while its
peaks stand far above the noise floor. The counts are split into two independent Poisson halves (``a ~
Binomial(k, 1/2)`` and ``k - a``, :func:`thinned_halves`): the frequencies are chosen on one and tested on the
other, so that a noise peak chosen for its height does not test as structure. With the test half ``k'``, the
estimate's expected counts ``lam`` and the beam-only expectation ``lam0`` (the same exposure with a structureless
estimate), three spectra on the valid pixels, each weighted by ``w = 1 / sqrt(lam0 / 2)`` and divided by
``sum w^2 lam / 2`` (the variance of any Fourier coefficient of the weighted noise):

- the counts' structure ``|F(w (k' - lam0 / 2))|^2``: what the counts show beyond the beam;
- the estimate's structure ``|F(w (lam / 2 - lam0 / 2))|^2``: what the estimate puts there;
- the residual ``|F(w (k' - lam / 2))|^2``: for a correct estimate pure noise, each coefficient ``Exp(1)`` (the
  Fourier coefficients of independent noise over many pixels are complex Gaussian, at any dose). The weight
  makes the noise's variance about 1 at every pixel: noise whose variance follows the beam has correlated
  neighbouring Fourier coefficients (by the beam's own spectrum), and their sums a heavier tail.

Powers are summed over the 3 x 3 bins around each tested frequency (a peak off the grid spreads over them), so a
correct estimate's residual there is ``Gamma(9, 1)``. Tested frequencies: the lattice peaks
(:func:`emdenoise.classical.flatfield.lattice_peaks`) of the choosing half, flat-fielded, and of the estimate where
its power there is above the noise of a box (a trace of noise the estimate kept peaks where the noise is high),
one of each ``+-f`` pair, merged within 2 bins. A peak **fires** when its residual power exceeds the ``Gamma(9)``
quantile of false-alarm probability :data:`ALPHA` / (peaks tested) (Bonferroni) and the residual's power above
noise is more than :data:`MAX_FRACTION` of the peak's (the larger of the counts' above noise and the
estimate's): the estimate got at least half the peak's amplitude wrong. All peaks together are tested the same
way (their summed residual against the ``Gamma(9 n)`` quantile of probability :data:`ALPHA`), which sees a
lattice of many weak peaks; so a correct estimate is flagged with probability at most ``2 ALPHA``. What a fired
peak is: ``erased`` (the counts show it, the estimate has under a quarter of its power), ``invented`` (the
estimate has it, the counts do not show it) or ``wrong`` (another phase or strength: a shifted lattice). The
counts **show a lattice** when the counts' power at a peak, or at all together, exceeds the same quantiles, and
**confirm** the estimate's where, besides, the residual there is at most :data:`MAX_FRACTION` of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import gamma

from emdenoise.classical.flatfield import lattice_peaks

ALPHA = 5e-4  # false-alarm probability per image of each lattice test (by peak, all peaks) for a correct estimate
MAX_FRACTION = 0.25  # residual power above noise / the peak's power: half the peak's amplitude wrong
BOX = 3  # bins summed around each tested frequency (a Gamma(BOX^2) under noise)
MERGE_BINS = 2  # tested frequencies closer than this (in bins) are one


@dataclass(frozen=True)
class Peak:
    """One tested frequency: powers summed over the bins around it, in units of the noise of one coefficient."""

    frequency: tuple[int, int]  # signed FFT index (row, col)
    period_px: float
    counts: float  # the counts' power beyond the beam (noise included: BOX^2 on average without structure)
    estimate: float  # the estimate's power beyond the beam
    residual: float  # the residual's power (BOX^2 on average for a correct estimate)

    def fraction(self) -> float:
        """Residual power above noise over the peak's power (the counts' above noise or the estimate's)."""
        noise = float(BOX * BOX)
        return max(self.residual - noise, 0.0) / max(self.counts - noise, self.estimate, 1e-9)

    def kind(self, threshold: float) -> str:
        """``erased``, ``invented`` or ``wrong`` (see the module notes)."""
        if self.counts <= threshold:
            return "invented"
        return "erased" if self.estimate < MAX_FRACTION * (self.counts - BOX * BOX) else "wrong"

    def record(self, threshold: float) -> dict[str, object]:
        return {
            "frequency": list(self.frequency),
            "period_px": round(self.period_px, 3),
            "counts_power": round(self.counts, 2),
            "estimate_power": round(self.estimate, 2),
            "residual_power": round(self.residual, 2),
            "fraction": round(self.fraction(), 4),
            "kind": self.kind(threshold),
        }


@dataclass(frozen=True)
class LatticeTest:
    """The lattice test of one estimate (see the module notes)."""

    peaks: list[Peak]
    threshold: float  # the residual power a correct estimate exceeds at one peak with probability ALPHA / peaks
    combined_threshold: float  # the same for the sum over all peaks, probability ALPHA

    def _sums(self) -> tuple[float, float, float]:
        """Summed over the peaks: residual power, counts' power, the peaks' power (as in :meth:`Peak.fraction`)."""
        noise = float(BOX * BOX)
        peak = sum(max(p.counts - noise, p.estimate) for p in self.peaks)
        return sum(p.residual for p in self.peaks), sum(p.counts for p in self.peaks), peak

    @property
    def counts_show_lattice(self) -> bool:
        """Whether the counts show power above noise at one peak, or at all of them together."""
        return any(p.counts > self.threshold for p in self.peaks) or self._sums()[1] > self.combined_threshold

    def combined_fraction(self, significant: bool = True) -> float:
        """Residual power above noise over the peaks' power, all peaks together (with ``significant``: 0 when
        the summed residual is within noise)."""
        residual, _, peak = self._sums()
        if significant and residual <= self.combined_threshold:
            return 0.0
        return max(residual - BOX * BOX * len(self.peaks), 0.0) / max(peak, 1e-9)

    @property
    def confirms(self) -> bool:
        """Whether the counts confirm the estimate's lattice: they show power at a peak (or at all together) and
        the residual there is at most :data:`MAX_FRACTION` of it."""
        single = any(p.counts > self.threshold and p.fraction() <= MAX_FRACTION for p in self.peaks)
        together = self._sums()[1] > self.combined_threshold and self.combined_fraction(False) <= MAX_FRACTION
        return single or together

    @property
    def fired(self) -> list[Peak]:
        """The peaks whose residual is significant and a large part of the peak, worst first."""
        hits = [p for p in self.peaks if p.residual > self.threshold and p.fraction() > MAX_FRACTION]
        return sorted(hits, key=lambda p: -p.residual)

    @property
    def inconsistent(self) -> bool:
        """A peak fired, or all of them together did."""
        return bool(self.fired) or self.combined_fraction() > MAX_FRACTION

    def worst_fraction(self) -> float:
        """The largest :meth:`Peak.fraction` among the significant peaks, or all peaks' together (0: none)."""
        single = max((p.fraction() for p in self.peaks if p.residual > self.threshold), default=0.0)
        return max(single, self.combined_fraction())

    def why(self) -> str:
        """One phrase: what fired, or why nothing did."""
        hits, n = self.fired, len(self.peaks)
        residual, _, _ = self._sums()
        if hits:
            kinds = sorted({p.kind(self.threshold) for p in hits})
            worst = hits[0]
            return (
                f"{len(hits)} of {n} lattice peak(s) {'/'.join(kinds)}: at period {worst.period_px:.2f} px the "
                f"residual power is {worst.residual:.0f} (noise {BOX * BOX}, limit {self.threshold:.0f}), "
                f"{worst.fraction():.0%} of the peak's"
            )
        if self.inconsistent:
            return (
                f"the {n} lattice peaks together: residual power {residual:.0f} (noise {BOX * BOX * n}, limit "
                f"{self.combined_threshold:.0f}), {self.combined_fraction():.0%} of the peaks'"
            )
        if not self.peaks:
            return "no lattice peaks in the counts or the estimate"
        if not self.counts_show_lattice:
            return f"the counts show none of the {n} lattice peak(s) above noise; none contradicted"
        if not self.confirms:
            return f"the counts show {n} lattice peak(s) too faintly to confirm or contradict the estimate's"
        return f"the estimate matches the {n} lattice peak(s) the counts show, within noise"


def _box_power(values: np.ndarray, noise: float) -> np.ndarray:
    """``|F(values)|^2 / noise`` summed over the BOX x BOX bins around each frequency (wrapping)."""
    power = np.abs(np.fft.fft2(values)) ** 2 / noise
    return ndimage.uniform_filter(power, BOX, mode="wrap") * (BOX * BOX)


def _candidates(flat_counts: np.ndarray, estimate: np.ndarray, estimate_power: np.ndarray) -> list[tuple[int, int]]:
    """The lattice peaks of the (choosing half of the) counts and those of the estimate where its power is above
    the noise of a box (:data:`BOX` squared: a fainter peak of an estimate that kept a trace of the noise sits
    where the noise is high, and would test as structure), one of each +-f pair, merged within MERGE_BINS."""
    h, w = estimate.shape
    own = [(r, c) for r, c in lattice_peaks(estimate).tolist() if estimate_power[r % h, c % w] > BOX * BOX]
    out: list[tuple[int, int]] = []
    for r, c in [*lattice_peaks(flat_counts).tolist(), *own]:
        if r < 0 or (r == 0 and c < 0):  # one of each conjugate pair
            r, c = -r, -c
        if all(max(abs(r - a), abs(c - b)) > MERGE_BINS for a, b in out):
            out.append((int(r), int(c)))
    return out


def thinned_halves(counts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two independent Poisson halves of whole-number ``counts`` (``a ~ Binomial(k, 1/2)``, ``k - a``), each of
    half the mean; a fixed ``seed``, so that a frame's check does not change between runs."""
    a = np.random.default_rng(seed).binomial(counts.astype(np.int64), 0.5).astype(np.float64)
    return a, counts - a


def lattice_test(
    counts: np.ndarray, lam: np.ndarray, lam0: np.ndarray, valid: np.ndarray, beam: np.ndarray, estimate
) -> LatticeTest:
    """The lattice test (module notes): whole-number ``counts``, the estimate's expected counts ``lam``, the
    beam-only ``lam0``, the valid-pixel mask, the beam and the estimate, all 2-D of one shape. The frequencies
    are chosen on one thinned half of the counts and tested on the other (:func:`thinned_halves`): chosen and
    tested on the same counts, a noise peak picked for its height would test as structure."""
    choose, test = thinned_halves(counts)
    flat = np.where(valid, choose / np.maximum(beam, 1e-3), 0.0)
    flat = np.where(valid, flat, flat[valid].mean() if valid.any() else 0.0)
    half0 = np.maximum(0.5 * lam0, 1e-3 * max(float(lam0[valid].mean()) if valid.any() else 1.0, 1e-9))
    w = valid / np.sqrt(half0)  # whitening: Poisson noise of variance lam / 2 becomes about 1 at every pixel
    noise = max(float(np.sum(w * w * 0.5 * lam)), 1e-9)
    pairs = ((test, 0.5 * lam0), (0.5 * lam, 0.5 * lam0), (test, 0.5 * lam))
    spectra = [_box_power(w * (a - b), noise) for a, b in pairs]
    shape = counts.shape
    peaks = []
    for r, c in _candidates(flat, estimate, spectra[1]):
        period = 1.0 / max(float(np.hypot(r / shape[0], c / shape[1])), 1e-9)
        k_power, e_power, r_power = (float(s[r % shape[0], c % shape[1]]) for s in spectra)
        peaks.append(Peak((r, c), period, k_power, e_power, r_power))
    threshold = float(gamma.isf(ALPHA / max(len(peaks), 1), BOX * BOX))
    return LatticeTest(peaks, threshold, float(gamma.isf(ALPHA, BOX * BOX * max(len(peaks), 1))))
