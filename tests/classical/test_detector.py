"""The photon-transfer estimate of a detector's offset and gain (emdenoise.classical.detector): recovered on
synthetic lattice frames of known offset, gain and read noise at several doses and contrasts; counts left as
they are; refusals of what is no detector response; the real STEM frames of ../shared/realdata."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from noisy_images import atom_image, beam, lattice_sites

from emdenoise.classical.detector import (
    DetectorModel,
    NotDetector,
    combine,
    counts_of,
    counts_pair,
    describe,
    estimate_detector,
    from_card,
    looks_like_counts,
    offset_model,
    to_counts,
)

HAADF = "srtio3_haadf_osiris/Tecnai_Osiris_SrTiO3.tif"  # under ../shared/realdata (the realdata fixture)
ABF = "srtio3_abf_movie/abf_movie_5x512x512.tif"
OFFSET, GAIN, READ = 1000.0, 7.5, 5.0  # detector units, detector units per electron, detector units
EFFECTIVE_OFFSET = OFFSET - READ**2 / GAIN  # where the variance extrapolates to zero


def lattice(size: int, contrast: float) -> np.ndarray:
    """Bright atom columns (Gaussians of 2.5 px on a square lattice of 12 px) on a background of 1:
    ``contrast`` is the columns' height over the background."""
    dark = atom_image(size, lattice_sites(size, 12.0, "square"), contrast=contrast, width=2.5)
    return 2.0 - dark.astype(np.float64)  # columns bright, background 1


def scene(size: int, contrast: float, lit: bool = True) -> np.ndarray:
    """The lattice under a Gaussian beam (0.3 + a peak of 1: levels spread over a factor of about 4, as the
    illumination and thickness of a real frame spread them), or flat (``lit`` False)."""
    return lattice(size, contrast) * ((0.3 + beam(size)) if lit else 1.0)


def detector_frames(rng, dose: float, contrast: float, n: int = 4, size: int = 512, lit: bool = True) -> np.ndarray:
    """``n`` uint16 frames ``OFFSET + GAIN x Poisson(dose x scene) + N(0, READ)``, rounded."""
    counts = rng.poisson(dose * scene(size, contrast, lit), (n, size, size))
    values = OFFSET + GAIN * counts + rng.normal(0.0, READ, counts.shape)
    return np.round(values).astype(np.uint16)


@pytest.mark.parametrize("dose", [5.0, 50.0, 500.0])
@pytest.mark.parametrize("contrast", [0.05, 0.5])
def test_gain_and_effective_offset_are_recovered_at_several_doses(dose, contrast):
    rng = np.random.default_rng(int(dose * 10 + contrast * 100))
    model = estimate_detector(detector_frames(rng, dose, contrast))
    assert abs(model.gain / GAIN - 1.0) < 0.08, model  # the standard error is about 2.6 %
    assert abs(model.gain - GAIN) < 3.5 * model.gain_error, model  # the reported error covers the truth
    assert abs(model.offset - EFFECTIVE_OFFSET) < 3.5 * model.offset_error, model
    assert model.read_noise is None  # not identifiable without a dark level
    expected = np.median(dose * scene(512, contrast))
    assert model.counts_median == pytest.approx(expected, rel=0.1, abs=1.0)


def test_a_dark_level_gives_the_read_noise():
    rng = np.random.default_rng(3)
    model = estimate_detector(detector_frames(rng, 5.0, 0.5), dark=OFFSET)
    assert model.read_noise is not None and 0.0 <= model.read_noise < 3 * READ
    assert "dark level" in model.source


def test_a_flat_frame_with_a_few_percent_of_contrast_is_refused_or_its_error_covers_the_truth():
    rng = np.random.default_rng(4)
    try:
        model = estimate_detector(detector_frames(rng, 50.0, 0.03, n=1, size=256, lit=False))
    except NotDetector as exc:
        assert "gain known to" in str(exc) or "R^2" in str(exc) or "rise with the signal" in str(exc)
    else:
        assert abs(model.gain - GAIN) < 3.5 * model.gain_error


@pytest.mark.parametrize("dose", [2.0, 30.0])
def test_pure_poisson_counts_have_gain_one_and_offset_zero(dose):
    rng = np.random.default_rng(int(dose))
    counts = rng.poisson(dose * scene(512, 0.5), (4, 512, 512))
    model = estimate_detector(counts)
    assert abs(model.gain - 1.0) < 0.08 and abs(model.offset) < max(3.5 * model.offset_error, 0.5), model
    assert looks_like_counts(model)
    assert not looks_like_counts(estimate_detector(detector_frames(rng, dose, 0.5)))


def test_counts_from_detector_values_have_variance_equal_to_mean():
    rng = np.random.default_rng(5)
    frames = detector_frames(rng, 40.0, 0.5, n=2)
    model = estimate_detector(frames)
    counts = to_counts(frames[1].astype(np.float64) - frames[0] + frames[0].mean(), model)  # flat: no lattice
    diff = (frames[1].astype(np.float64) - frames[0]) / model.gain  # two frames of the same scene
    level = to_counts(frames, model).mean()
    assert np.var(diff) / 2 == pytest.approx(level, rel=0.1)  # Poisson: variance = mean, in counts
    assert counts.min() >= 0.0


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (np.full((64, 64), 3.0e4), "every pixel is the same"),
        (np.random.default_rng(1).poisson(20.0, (256, 256)), "signal levels|gain known"),  # one level: no line
        (np.random.default_rng(0).normal(100.0, 5.0, (256, 256)), "gain"),  # Gaussian noise: no shot noise
        (np.zeros((4, 4)), "at least 10x10"),
        (np.array([[np.nan] * 16] * 16), "finite"),
    ],
)
def test_what_is_no_detector_response_is_refused_in_one_line(frames, reason):
    with pytest.raises(NotDetector, match=reason) as info:
        estimate_detector(frames)
    assert "\n" not in str(info.value)


def test_variance_falling_with_the_mean_is_refused():
    rng = np.random.default_rng(6)
    level = 50.0 * lattice(512, 0.5)
    frame = 4.0e4 - 7.5 * rng.poisson(level)  # an inverted response: the noise is largest where values are low
    with pytest.raises(NotDetector, match="rise with the signal"):
        estimate_detector(frame)
    assert describe(frame)["refused"].startswith("expected the noise variance to rise")


def test_the_model_travels_through_a_card_and_combines_over_files():
    model = DetectorModel(1000.0, 7.5, None, "test", offset_error=2.0, gain_error=0.1, r2=0.99, levels=24)
    assert from_card(model.card_fields()) == DetectorModel(1000.0, 7.5, None, "test", 2.0, 0.1, 0.99, 0, None)
    assert from_card({}) is None and from_card({"detector_gain": -1.0, "detector_offset": 0.0}) is None
    other = DetectorModel(1001.0, 7.6, None, "test", offset_error=2.0, gain_error=0.1)
    both = combine([model, other])
    assert both.gain == pytest.approx(7.55) and both.gain_error == pytest.approx(0.1 / math.sqrt(2))
    with pytest.raises(NotDetector, match="gains differ"):
        combine([model, DetectorModel(1000.0, 9.0, None, "test", offset_error=2.0, gain_error=0.1)])


def test_counts_of_falls_back_to_the_count_scale_for_counts_and_refuses_negative_values():
    flat = np.random.default_rng(7).poisson(20.0, (64, 64)).astype(np.float64)  # one level: no line to fit
    counts, model = counts_of(flat)
    assert model.offset == 0.0 and "count scale" in model.source and counts.mean() == pytest.approx(20.0, rel=0.1)
    from emdenoise.classical.noise import NotCounts

    with pytest.raises(NotCounts):
        counts_of(flat - 100.0)


def test_counts_pair_puts_the_frame_and_its_estimate_on_one_scale():
    rng = np.random.default_rng(9)
    truth = 40.0 * scene(256, 0.5)
    frame = OFFSET + GAIN * rng.poisson(truth) + rng.normal(0, READ, truth.shape)
    counts, estimate, model = counts_pair(frame, OFFSET + GAIN * truth)
    assert np.array_equal(counts, np.rint(counts)) and counts.min() >= 0
    assert float(np.mean(counts - estimate)) == pytest.approx(0.0, abs=0.01 * float(truth.mean()))  # one scale
    ratio = float(np.median(estimate / truth))  # the offset left the estimate too: only the model's errors are left
    error = model.gain_error / model.gain + model.offset_error / (model.gain * float(np.median(truth)))
    assert abs(ratio - 1.0) < 4 * error and error < 0.25  # with the offset in it, the ratio would be about 4


def _real(folder: Path, name: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(folder / name)


def test_the_real_haadf_frame_gives_a_positive_gain_and_poisson_counts(realdata):
    frame = _real(realdata, HAADF)
    model = estimate_detector(frame)
    assert math.isfinite(model.gain) and model.gain > 0 and model.gain_error < 0.2 * model.gain
    assert model.offset < frame.min()  # every pixel holds counts
    counts, _ = counts_of(frame, model)
    # the Haar detail's variance, in counts, against the mean counts: Poisson statistics hold
    c = counts[:512, :512]
    detail = (c[0::2, 0::2] - c[0::2, 1::2] - c[1::2, 0::2] + c[1::2, 1::2]) / 2.0
    assert np.mean(detail**2) == pytest.approx(c.mean(), rel=0.15)


def test_the_real_abf_movie_is_refused_its_noise_falls_with_the_signal(realdata):
    frames = _real(realdata, ABF)
    with pytest.raises(NotDetector, match="rise with the signal"):
        estimate_detector(frames)


@pytest.mark.extra("formats")
@pytest.mark.parametrize(  # the EMD file's 2048x2048 frame: about 1.3 s of fitting
    ("name", "counts"),
    [
        ("example_Se_implanted_MoS2.dm3", (5.0, 20.0)),
        pytest.param("example_Au_nanoparticle.emd", (100.0, 250.0), marks=pytest.mark.slow),
    ],
)
def test_the_real_microscope_files_give_an_offset_below_the_data_and_counts(example_files, name, counts):
    from emdenoise.io import micrographs

    with micrographs.open_input(example_files[name]) as src:
        (image,) = src.images
        frame = np.asarray(image.read(0))
    model = estimate_detector(frame)
    assert model.gain > 0 and model.gain_error < 0.1 * model.gain and model.r2 > 0.9
    assert model.offset < np.percentile(frame, 1)  # the darkest pixels still hold counts
    assert counts[0] < model.counts_median < counts[1]


def test_the_offset_model_of_a_frame_is_remembered_by_its_content():
    """Asked again of the same values (another array), the same answer without a second fit; changed values
    are fitted anew."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[:256, :256]
    expected = 40.0 + 30.0 * np.cos(2 * np.pi * x / 9) ** 2 + 0.2 * y
    frame = 30000.0 + 8.0 * rng.poisson(expected)
    first = offset_model(frame)
    assert first is not None and first.gain == pytest.approx(8.0, rel=0.15)
    assert offset_model(frame.copy()) is first
    changed = frame.copy()
    changed[0, 0] += 8.0
    assert offset_model(changed) is not first
