"""The table of classical baselines as methods: the default settings without tuning data (``build``), the
callable that a tuned baseline becomes, the schema's lists taken from the table."""

import numpy as np
import pytest
from noisy_images import atom_image, beam, lattice_sites, poisson_noise, smooth_images

from emdenoise.classical import filters, tuning
from emdenoise.classical import methods as classical
from emdenoise.classical import names as classical_names
from emdenoise.config import params
from emdenoise.method import Context, Method


def test_build_gives_a_method_with_the_default_setting():
    wiener = classical.build("wiener", Context(pixel_size=0.2))
    assert isinstance(wiener, Method) and wiener.name == "wiener" and wiener.kind == "classical"
    assert wiener.settings["floor"] == 2 and wiener.settings["tuned"] is False
    assert (wiener.gain, wiener.offset) == (1.0, 0.0)
    assert classical.build("wiener", Context(), value=3.0).value == 3.0


@pytest.mark.parametrize(("pixel_size", "sigma"), [(0.15, 2.0), (0.05, 3.0), (1.0, 0.5), (None, 1.0)])
def test_the_gaussian_default_is_0_3_angstrom_in_pixels_within_0_5_to_3(pixel_size, sigma):
    assert classical.build("gaussian", Context(pixel_size=pixel_size)).value == pytest.approx(sigma)
    assert classical.build("flat_gaussian", Context(pixel_size=pixel_size)).value == pytest.approx(2 * sigma)


def test_an_unknown_baseline_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown baseline 'wienr'; known: gaussian, median"):
        classical.build("wienr", Context())


def test_a_method_filters_each_frame_and_applies_its_gain_offset():
    frames = smooth_images(np.random.default_rng(0), 3, 24)
    method = classical.Classical(classical.get("gaussian"), 1.5, gain=2.0, offset=0.5)
    out = method(frames, Context())
    assert out.shape == frames.shape and out.dtype == np.float32
    for frame, estimate in zip(frames, out):
        expected = 2.0 * filters.gaussian(frame.astype(np.float64), 1.5) + 0.5
        np.testing.assert_allclose(estimate, expected, rtol=1e-6)


def test_the_beam_aware_filters_take_the_count_scale_from_the_context():
    rng = np.random.default_rng(1)
    clean = atom_image(64, lattice_sites(64, 7.0)) * beam(64)
    frame = poisson_noise(rng, clean[None], 40)[0]
    bragg = classical.build("bragg", Context())
    given = bragg(frame[None], Context(count_scale=40.0))[0]
    np.testing.assert_allclose(given, filters.bragg(frame.astype(np.float64), 2.0, 40.0).astype(np.float32))
    assert not np.allclose(given, bragg(frame[None], Context(count_scale=4.0))[0])  # the scale is used


def test_a_tuned_baseline_reports_its_tuning():
    rng = np.random.default_rng(2)
    clean = smooth_images(rng, 2, 32)
    tuned = tuning.tune("median", poisson_noise(rng, clean, 30), clean, 1.0)
    assert isinstance(tuned, Method) and tuned.tuning is not None and tuned.tuning.seconds is not None
    settings = tuned.settings
    assert settings["size"] in (3, 5, 7) and settings["tuned_on_val_images"] == 2
    assert set(settings["grid"]) == {"3", "5", "7"} and settings["tune_seconds"] >= 0


def test_the_schema_takes_its_baseline_lists_from_the_table():
    assert classical_names.ALL == classical.names()
    expected = ("gaussian", "median", "tv", "nlm", "flat_gaussian", "bragg", "wiener", "pnlm")
    assert classical.DEFAULT_BASELINES == expected
    defaults = params.defaults()
    assert defaults.test.baselines == list(classical.DEFAULT_BASELINES) == defaults.study.baselines
    with pytest.raises(Exception, match="wienr"):
        params.validate({"test": {"baselines": ["wienr"]}})


@pytest.mark.parametrize("name,value", [("wiener", 2.0), ("bragg", 2.0), ("pnlm", 0.8), ("flat_gaussian", 2.0)])
def test_a_filter_of_counts_gives_the_same_estimate_on_detector_values(name, value):
    """Readings ``30000 + 8 x counts`` (a STEM detector): the filter works on the counts above the offset its
    own noise gives, so its output is ``30000 + 8 x`` its output on the counts, up to the fitted gain's error
    (measured 0.07-0.23 of the output's spread; on the readings themselves it was 1.4-4.4)."""
    side = 256
    lam = 80.0 * atom_image(side, lattice_sites(side, 8.0, angle=0.3), contrast=0.25) * beam(side)
    counts = np.random.default_rng(1).poisson(lam).astype(float)
    baseline = classical.BASELINES[name]
    on_counts = baseline.apply(counts, value)
    on_values = baseline.apply(30000 + 8 * counts, value)
    assert np.sqrt(np.mean(((on_values - 30000) / 8 - on_counts) ** 2)) < 0.35 * on_counts.std()


def test_tuning_on_a_flat_clean_image_is_finite_and_writes_as_json():
    """A val image that a filter restores exactly (a flat clean image: the fitted gain/offset hits it) counts as
    tuning.EXACT_PSNR, not inf, which the JSON report could not hold."""
    import json

    clean = np.ones((2, 32, 32))
    noisy = poisson_noise(np.random.default_rng(0), clean, 50)
    tuned = tuning.tune("gaussian", noisy, clean, 1.0)
    grid = tuned.tuning.grid_psnr
    assert all(np.isfinite(v) for v in grid.values()) and max(grid.values()) == tuning.EXACT_PSNR
    json.dumps(tuned.settings, allow_nan=False)
