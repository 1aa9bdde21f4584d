"""The structure metrics against cases computed by hand: the lattice-band PSNR, the FRC resolution and the
atom-column detection (a perfect estimate, a shifted one, a missing atom, an invented one)."""

import math

import numpy as np
import pytest
from noisy_images import atom_image, lattice_sites

from emdenoise.evaluation import metrics

SIDE = 64


def _cosine(period: float, amplitude: float = 1.0, shift: float = 0.0) -> np.ndarray:
    x = np.arange(SIDE)[None, :] + np.zeros((SIDE, 1))
    return amplitude * np.cos(2 * np.pi * (x - shift) / period)


def test_band_psnr_ignores_the_brightness_level_and_sees_the_lattice():
    clean = 0.5 + _cosine(8.0, 0.2)
    band = (5.0, 18.0)
    assert metrics.band_psnr(clean[None], clean[None], 1.0, band)[0] == math.inf
    shaded = clean + 0.3 + _cosine(32.0, 0.1)  # brighter, slow shading: outside the band
    assert metrics.band_psnr(shaded[None], clean[None], 1.0, band)[0] > 200
    # an error of amplitude 0.1 in the band: MSE = 0.1^2 / 2, PSNR = 10 log10(1 / 0.005) = 23.0103 dB
    wrong = clean + _cosine(8.0, 0.1, shift=2.0)
    assert metrics.band_psnr(wrong[None], clean[None], 1.0, band)[0] == pytest.approx(10 * math.log10(200), abs=1e-6)
    # the lattice shifted by half a period: difference -2 x 0.2 cos, MSE = 0.08
    half = 0.5 + _cosine(8.0, 0.2, shift=4.0)
    assert metrics.band_psnr(half[None], clean[None], 1.0, band)[0] == pytest.approx(10 * math.log10(1 / 0.08))


def test_band_periods_come_from_the_pixel_size():
    assert metrics.band_periods_px((1.0, 3.5), 0.25) == (4.0, 14.0)
    assert metrics.band_periods_px((1.0, 3.5), None) == metrics.BAND_PX_UNKNOWN


def test_frc_resolution_of_perfect_low_passed_and_inverted_estimates():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(SIDE, SIDE))
    assert metrics.frc_resolution_px(clean, clean) == metrics.NYQUIST_PX
    # keep only the frequencies up to 8 / 64 cycles/px: resolved down to a period of 64 / 8 = 8 px
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(SIDE), np.fft.fftfreq(SIDE), indexing="ij")) * SIDE
    low = np.fft.ifft2(np.fft.fft2(clean) * (radius <= 8.0)).real
    assert metrics.frc_resolution_px(low, clean) == pytest.approx(8.0)
    assert metrics.frc_resolution_px(-clean, clean) == math.inf


def _truth(contrast: float = 0.3, margin: float = 4.0):
    sites = lattice_sites(SIDE, 7.0, margin=margin)
    vacant = np.zeros(len(sites), dtype=bool)
    vacant[[3, len(sites) // 2]] = True
    clean = atom_image(SIDE, sites[~vacant], contrast=contrast)
    return clean, sites, vacant, metrics.AtomTruth.of(clean, sites, vacant)


@pytest.mark.parametrize("contrast", [0.3, -0.3])  # dark atoms, bright atoms
def test_a_perfect_estimate_finds_every_atom_and_every_vacancy(contrast):
    clean, sites, vacant, truth = _truth(contrast)
    assert truth.sign == (-1.0 if contrast > 0 else 1.0)
    assert truth.nn_px == pytest.approx(7.0, rel=0.01)
    score = metrics.atom_scores(clean, truth, 2.0).summary(0.19)
    assert score["precision"] == score["recall"] == score["f1"] == 1.0
    assert score["vacancy_precision"] == 1.0  # every site called vacant is
    assert score["vacancy_recall"] == 1.0 and score["vacancies"] == 2 and score["atoms"] == int((~vacant).sum())
    assert score["rms_error_px"] < 0.1


def test_a_shifted_estimate_is_matched_within_the_tolerance_only():
    clean, _, _, truth = _truth()
    shifted = np.roll(clean, 1, axis=1)
    inside = metrics.atom_scores(shifted, truth, 2.0).summary(0.19)
    assert inside["recall"] == 1.0 and inside["rms_error_px"] == pytest.approx(1.0, abs=0.1)
    assert inside["rms_error_pm"] == pytest.approx(19.0, abs=2.0)  # 1 px of 0.19 A
    outside = metrics.atom_scores(shifted, truth, 0.5).summary(0.19)
    assert outside["recall"] == 0.0 and outside["precision"] == 0.0 and outside["rms_error_px"] is None


def test_a_missing_atom_lowers_recall_and_an_invented_one_precision_and_vacancy_recall():
    clean, sites, vacant, truth = _truth()
    n = int((~vacant).sum())
    erased = atom_image(SIDE, sites[~vacant][1:])
    missing = metrics.atom_scores(erased, truth, 2.0).summary(None)
    assert missing["recall"] == pytest.approx((n - 1) / n) and missing["precision"] == 1.0
    assert missing["rms_error_pm"] is None  # no pixel size: px only
    filled = metrics.atom_scores(atom_image(SIDE, sites), truth, 2.0).summary(None)
    assert filled["vacancy_recall"] == 0.0 and filled["precision"] == pytest.approx(n / (n + 2))
    assert filled["recall"] == 1.0


def test_counts_add_up_over_images():
    clean, _, _, truth = _truth()
    total = metrics.AtomCounts()
    total += metrics.atom_scores(clean, truth, None)
    total += metrics.atom_scores(np.ones_like(clean), truth, None)  # a flat estimate finds nothing
    summary = total.summary(None)
    assert summary["recall"] == pytest.approx(0.5) and summary["precision"] == 1.0


# --------------------------------------------------------------------------------------------------------------
# Vacancies need the lattice around them; the truth row is the ceiling
# --------------------------------------------------------------------------------------------------------------


def test_a_flat_image_finds_no_vacancy():
    """Nothing detected: no site has its lattice found, so no vacancy is called (recall 0 of 2, not 1)."""
    _, _, _, truth = _truth()
    flat = metrics.atom_scores(np.ones((SIDE, SIDE)), truth, 2.0)
    assert (flat.detected, flat.vacancies, flat.vacancies_found, flat.vacancies_called) == (0, 2, 0, 0)
    score = flat.summary(None)
    assert score["vacancy_recall"] == 0.0 and score["vacancy_precision"] is None


def test_a_missed_atom_inside_a_found_lattice_is_a_false_vacancy():
    """One atom erased, its neighbours found: three sites called vacant, two of them truly: precision 2/3."""
    clean, sites, vacant, truth = _truth()
    present = sites[~vacant]
    erased = atom_image(SIDE, np.delete(present, len(present) // 3, axis=0))
    score = metrics.atom_scores(erased, truth, 2.0)
    assert (score.vacancies_found, score.vacancies_called) == (2, 3)
    assert score.summary(None)["vacancy_recall"] == 1.0
    assert score.summary(None)["vacancy_precision"] == pytest.approx(2 / 3)


def test_vacancy_calls_by_hand():
    """Three sites on a line, 7 px apart; the middle one without a peak is called vacant only while a
    neighbour has one."""
    sites = np.array([[10.0, 3.0], [10.0, 10.0], [10.0, 17.0]])
    present = np.array([True, False, True])
    both = metrics.vacancy_calls(np.array([[10.0, 3.0], [10.0, 17.0]]), sites, present, 7.0, 2.0)
    assert both.tolist() == [False, True, False]
    none = metrics.vacancy_calls(np.zeros((0, 2)), sites, present, 7.0, 2.0)
    assert none.tolist() == [False, False, False]
    # one of the two present neighbours found is half of them: enough; the far end has no present neighbour
    # within 1.5 x 7 px (the middle site is vacant), so it is never called
    one = metrics.vacancy_calls(np.array([[10.0, 3.0]]), sites, present, 7.0, 2.0)
    assert one.tolist() == [False, True, False]
