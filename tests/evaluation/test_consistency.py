"""The hallucination check: the Poisson deviance, its exact expected value at low counts, and both ways round:
an estimate of a frame's own kind is consistent, one that paints another lattice over it is flagged."""

import math

import numpy as np
import pytest
from noisy_images import atom_image, beam, lattice_sites, poisson_noise
from scipy.stats import poisson

from emdenoise.classical import filters as baselines
from emdenoise.classical.flatfield import FlatField
from emdenoise.evaluation import consistency

SIDE = 128


def test_the_deviance_of_hand_computed_cases():
    d = consistency.poisson_deviance([0, 2, 3], [2.0, 2.0, 1.0])
    assert d == pytest.approx([4.0, 0.0, 2 * (3 * math.log(3) - 2)])


@pytest.mark.parametrize("lam", [0.01, 0.3, 2.0, 40.0, 3e4])
def test_the_expected_deviance_is_exact_at_low_counts(lam):
    k = np.arange(int(lam + 15 * math.sqrt(lam) + 50))
    p = poisson.pmf(k, lam)
    d = consistency.poisson_deviance(k, lam)
    mean, var = consistency.deviance_moments(np.array([lam]))
    assert mean[0] == pytest.approx(np.sum(p * d), rel=2e-3)
    assert var[0] == pytest.approx(np.sum(p * d * d) - np.sum(p * d) ** 2, rel=2e-2)
    if lam < 0.1:  # far from the large-count value 1: why the exact expectation is needed
        assert mean[0] < 0.2


def _hex(shift: float = 0.0) -> np.ndarray:
    return atom_image(SIDE, lattice_sites(SIDE, 8.0, angle=0.3) + shift, contrast=0.25)


def _square() -> np.ndarray:
    return atom_image(SIDE, lattice_sites(SIDE, 6.0, kind="square", angle=1.0), contrast=0.4, width=1.5)


def _noisy(rng, clean: np.ndarray, dose: float) -> np.ndarray:
    return poisson_noise(rng, (clean * beam(SIDE))[None], dose)[0]


class FixedLatticeFilter:
    """A denoiser that learnt its lattice: the Bragg windows of the lattice peaks of its training frames, kept
    fixed and applied to any frame (what a model trained on one material does to another)."""

    def __init__(self, training_frames):
        peaks = [FlatField.of(frame).peaks for frame in training_frames]
        self.peaks = np.unique(np.concatenate(peaks), axis=0)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        ff = FlatField.of(frame)
        low = ff.low(4.0)
        spectrum = np.fft.fft2(ff.flat - low)
        return low + np.fft.ifft2(spectrum * baselines.bragg_mask(frame.shape, self.peaks, 1.5)).real


@pytest.mark.parametrize("dose", [20.0, 80.0])
def test_a_correct_estimate_is_consistent_with_dose_known_or_not(dose):
    rng = np.random.default_rng(1)
    clean = _square()
    noisy = _noisy(rng, clean, dose)
    for known in (dose, None):
        result = consistency.check(noisy, clean, known)
        assert abs(result.z) < 5 and result.ratio == pytest.approx(1.0, abs=0.03)
        assert not result.inconsistent and result.summary()["flagged_fraction"] < 0.1


def test_a_model_of_one_lattice_is_consistent_on_it_and_flagged_on_another():
    rng = np.random.default_rng(2)
    model = FixedLatticeFilter([_noisy(rng, _hex(s), 60.0) for s in (0.0, 2.5)])
    own = _noisy(rng, _hex(1.3), 60.0)
    other = _noisy(rng, _square(), 60.0)
    on_own = consistency.check(own, model(own))
    on_other = consistency.check(other, model(other))
    assert not on_own.inconsistent, on_own.summary()
    assert on_other.inconsistent, on_other.summary()
    assert on_other.deviation > 2 * on_own.deviation
    assert on_other.summary()["flagged_fraction"] > 0.5 > on_own.summary()["flagged_fraction"]
