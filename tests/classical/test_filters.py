"""The classical baselines: each beats the noisy input, tuning, the gain/offset fit, the noise estimates, the
Anscombe inverse, and the optional BM3D."""

import importlib.util
import math

import numpy as np
import pytest
from noisy_images import atom_image, beam, lattice_sites, poisson_noise, smooth_images
from scipy.stats import poisson

from emdenoise.classical import filters, tuning
from emdenoise.classical import methods as baselines
from emdenoise.classical.flatfield import FlatField
from emdenoise.evaluation.metrics import psnr_per_image, ssim_per_image

HAVE_BM3D = importlib.util.find_spec("bm3d") is not None


@pytest.mark.parametrize("name", ["gaussian", "median", "tv", "nlm"])
def test_every_classical_baseline_beats_the_noisy_input(name):
    rng = np.random.default_rng(4)
    val_clean, test_clean = smooth_images(rng, 3, 48), smooth_images(rng, 2, 48)
    val_noisy, test_noisy = poisson_noise(rng, val_clean, 20), poisson_noise(rng, test_clean, 20)
    r = float(test_clean.max() - test_clean.min())
    tuned = tuning.tune(name, val_noisy, val_clean, r)
    out = np.stack([tuned.apply(img) for img in test_noisy])
    assert out.shape == test_noisy.shape and out.dtype == np.float32
    gain = psnr_per_image(out, test_clean, r).mean() - psnr_per_image(test_noisy, test_clean, r).mean()
    assert gain > 3.0, f"{name}: only {gain:.2f} dB better than the noisy input"
    assert ssim_per_image(out, test_clean, r).mean() > ssim_per_image(test_noisy, test_clean, r).mean()


def test_tuning_picks_the_best_grid_value_and_smooths_more_at_low_dose():
    rng = np.random.default_rng(5)
    clean = smooth_images(rng, 3, 48)
    r = float(clean.max() - clean.min())
    low = tuning.tune("gaussian", poisson_noise(rng, clean, 3), clean, r)
    high = tuning.tune("gaussian", poisson_noise(rng, clean, 3000), clean, r)
    grid = baselines.get("gaussian").grid
    for tuned in (low, high):
        assert tuned.tuning is not None
        assert tuned.value in grid and set(tuned.tuning.grid_psnr) == set(grid)
        assert tuned.tuning.tune_psnr == max(tuned.tuning.grid_psnr.values())
        assert tuned.settings["sigma"] == tuned.value and tuned.settings["tuned_on_val_images"] == 3
    assert low.value > high.value


def test_gain_offset_fit_recovers_an_affine_map():
    rng = np.random.default_rng(6)
    f = rng.normal(size=(2, 8, 8))
    gain, offset = tuning.fit_gain_offset(f, 2.5 * f - 0.3)
    assert gain == pytest.approx(2.5) and offset == pytest.approx(-0.3)
    assert tuning.fit_gain_offset(np.ones((4, 4)), np.full((4, 4), 7.0)) == (0.0, 7.0)


@pytest.mark.parametrize("scale", [5.0, 50.0])
def test_count_scale_is_estimated_from_the_image(scale):
    rng = np.random.default_rng(7)
    clean = smooth_images(rng, 1, 128)[0]
    noisy = rng.poisson(clean * scale) / scale
    assert filters.estimate_count_scale(noisy) == pytest.approx(scale, rel=0.1)


def test_noise_sigma_of_gaussian_noise():
    rng = np.random.default_rng(8)
    image = smooth_images(rng, 1, 128)[0] + rng.normal(0, 0.05, (128, 128))
    assert filters.noise_sigma(image) == pytest.approx(0.05, rel=0.1)


def test_inverse_anscombe_is_unbiased_for_poisson_counts():
    for lam in (0.5, 2.0, 10.0, 50.0):
        k = np.arange(0, int(lam + 20 * math.sqrt(lam) + 30))
        expected = np.sum(poisson.pmf(k, lam) * filters.anscombe(k))
        assert float(filters.inverse_anscombe_unbiased(expected)) == pytest.approx(lam, rel=0.02, abs=0.01)
        if lam == 2.0:  # the algebraic inverse is biased at low counts: that is why the unbiased one is used
            assert abs((expected / 2) ** 2 - 3 / 8 - lam) > 0.2
    zero = filters.anscombe(np.array(0.0))
    assert float(filters.inverse_anscombe_unbiased(zero)) == pytest.approx(0.0, abs=1e-9)
    assert float(filters.inverse_anscombe_unbiased(np.array(0.5))) == 0.0


@pytest.mark.skipif(not HAVE_BM3D, reason="the optional bm3d package is not installed")
@pytest.mark.slow
def test_anscombe_bm3d_beats_gaussian_on_poisson_images():
    rng = np.random.default_rng(9)
    clean = smooth_images(rng, 2, 64)
    noisy = poisson_noise(rng, clean, 10)
    r = float(clean.max() - clean.min())
    scores = {}
    for name in ("gaussian", "anscombe_bm3d"):
        tuned = tuning.tune(name, noisy[:1], clean[:1], r)
        scores[name] = float(psnr_per_image(tuned.apply(noisy[1]), clean[1], r)[0])
    assert scores["anscombe_bm3d"] > scores["gaussian"]


def _beam_lattice_pairs(rng, n: int, size: int = 96, dose: float = 30.0):
    """Lattice images under a Gaussian beam, Poisson noise at ``dose``: (noisy, clean)."""
    clean = np.stack([atom_image(size, lattice_sites(size, 7.0 + 0.3 * i, angle=0.2 + 0.4 * i)) for i in range(n)])
    return poisson_noise(rng, clean * beam(size), dose), clean


def test_the_beam_is_fitted_from_the_frame_alone():
    rng = np.random.default_rng(10)
    clean = atom_image(128, lattice_sites(128, 8.0))
    truth = beam(128, center=(0.3, 0.8), sigma=0.4)
    noisy = poisson_noise(rng, clean[None] * truth, 20)[0]
    noisy[rng.random(noisy.shape) < 0.002] = 0.0  # dead pixels
    ff = FlatField.of(noisy)
    assert ff.scale == pytest.approx(20, rel=0.15)
    assert np.abs(ff.beam - truth / truth.max()).max() < 0.05
    assert not ff.valid.all() and ff.valid.mean() > 0.99


def test_lattice_peaks_are_found_at_the_lattice_frequency():
    clean = atom_image(128, lattice_sites(128, 8.0, kind="square", angle=0.0))
    ff = FlatField.of(poisson_noise(np.random.default_rng(11), clean[None], 50)[0])
    assert ff.period == pytest.approx(8.0, rel=0.05)
    assert len(ff.peaks) >= 4  # (+-1, 0), (0, +-1) of the square lattice at least
    offsets = filters.lattice_offsets((128, 128), ff.peaks)
    assert (8, 0) in offsets or (-8, 0) in offsets


@pytest.mark.parametrize("name", ["flat_gaussian", "bragg", "wiener", "pnlm"])
def test_the_beam_aware_baselines_beat_the_plain_filter_under_a_beam(name):
    rng = np.random.default_rng(12)
    val_noisy, val_clean = _beam_lattice_pairs(rng, 2)
    test_noisy, test_clean = _beam_lattice_pairs(rng, 2)
    r = float(test_clean.max() - test_clean.min())
    scores = {}
    for method in ("gaussian", name):
        tuned = tuning.tune(method, val_noisy, val_clean, r)
        out = np.stack([tuned.apply(img) for img in test_noisy])
        scores[method] = float(psnr_per_image(out, test_clean, r).mean())
    assert scores[name] > scores["gaussian"] + 1.0, scores
