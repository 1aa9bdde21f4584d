"""Frames brought to a counts / dose or counts / mean model's level and back (emdenoise.inference.levels), and the
engine that does it only for models of those units under ``frame_level: auto``."""

from __future__ import annotations

import numpy as np
import pytest
from support import save_model

from emdenoise import api
from emdenoise.data.simulate import pairs as generator
from emdenoise.errors import InputError
from emdenoise.inference import levels
from emdenoise.inference.denoiser import DeepMethod, Tiling


def _pair(seed: int, dose: float, size: int = 128) -> tuple[np.ndarray, np.ndarray, dict]:
    """(noisy counts / dose, clean, info) at ``dose`` e/px, graphene at 0.2 A/px."""
    return generator.make_pair(seed, image_size=size, dose=dose, pixel_size=0.2, dead_pixel_fraction=0.0)


def test_the_level_is_scale_free_and_near_one_where_the_specimen_is():
    noisy, _, info = _pair(1, 400.0)
    counts = noisy * info["dose"]
    for frame in (counts, counts * 7.5, noisy):
        into = levels.Level.of(frame).into(frame)
        assert into.dtype == np.float32
        np.testing.assert_allclose(into, levels.Level.of(counts).into(counts), rtol=1e-4)
    level = levels.Level.of(counts)
    assert level.dose == pytest.approx(info["dose"], rel=0.25)  # the beam-centre dose, from the frame alone
    assert level.beam is not None and level.beam.max() == pytest.approx(1.0)
    assert 0.75 < float(np.median(level.into(counts) / level.beam)) < 1.25  # flat-fielded: about 1


def test_detector_values_on_an_offset_go_in_as_their_counts():
    rng = np.random.default_rng(3)
    _, clean, _ = _pair(2, 300.0, size=192)
    yx = np.mgrid[:192, :192] / 192 - 0.5
    beam = np.exp(-(yx**2).sum(axis=0) / (2 * 0.3**2))  # a beam falling off: levels for the fit to see the slope
    counts = rng.poisson(300.0 * clean * beam).astype(np.float64)
    detector = 5000.0 + 4.0 * counts  # offset and gain a photon-transfer fit recovers
    level = levels.Level.of(detector)
    assert level.offset == pytest.approx(5000.0, abs=200) and level.gain == pytest.approx(4.0, rel=0.1)
    ratio = np.median(level.into(detector)) / np.median(levels.Level.of(counts).into(counts))
    assert ratio == pytest.approx(1.0, rel=0.05)
    assert level.beam is not None
    out = level.back(level.into(detector) / level.beam)  # a model that only flat-fields: back in detector values
    np.testing.assert_allclose(np.median(out), np.median(5000.0 + 4.0 * counts / level.beam), rtol=0.03)


def test_back_gives_the_restored_image_at_the_frames_dose():
    """An ideal model returns the clean image (level 1): back scales it by the dose the frame's counts hold."""
    noisy, clean, info = _pair(4, 800.0)
    counts = noisy * info["dose"]
    level = levels.Level.of(counts)
    out = level.back(clean)
    assert out.dtype == np.float32
    # the beam is removed (the output is flat-illuminated), so the level is the beam-centre dose within the fit
    assert float(np.median(out / clean)) == pytest.approx(info["dose"], rel=0.1)
    assert levels.Level.of(np.zeros((32, 32))).into(np.zeros((32, 32))).max() == 0  # no level: as it is


def test_stream_returns_each_output_by_its_own_frames_level():
    frames = [_pair(5, 200.0)[0] * 200.0, _pair(6, 3000.0)[0] * 3000.0]
    flat = list(levels.stream(iter(frames), lambda xs: (np.ones_like(x) for x in xs), levels.COUNTS_PER_DOSE))
    for frame, out in zip(frames, flat, strict=True):
        level = levels.Level.of(frame)
        assert level.beam is not None
        np.testing.assert_allclose(out, level.back(np.ones_like(frame)), rtol=1e-6)
        # the flat output seen through the beam holds the frame's counts
        assert float((out * level.beam).sum()) == pytest.approx(float(frame.sum()), rel=1e-4)
    assert flat[1].mean() / flat[0].mean() == pytest.approx(15.0, rel=0.2)


def _stem_pair(units: str, **detector) -> tuple[np.ndarray, np.ndarray, dict]:
    """A HAADF SrTiO3 pair at 5e4 electrons per probe position, 0.15 A/px, in ``units``."""
    settings = {"units": units, "dose_min": 5e4, "dose_max": 5e4, **detector}
    return generator.make_pair(
        4,
        image_size=128,
        imaging="haadf",
        material="srtio3",
        pixel_size_min=0.15,
        pixel_size_max=0.15,
        stem_settings=settings,
    )


def test_a_flat_level_takes_stem_readings_to_the_generators_mean_units():
    """The same HAADF frame as detector readings (offset 33,000, gain 4) and in the generator's mean units: the
    flat level (no beam fitted) takes the readings to the mean-unit frame, and back holds the frame's counts."""
    readings, _, _ = _stem_pair("detector")
    noisy, clean, info = _stem_pair("mean")
    level = levels.Level.of(readings, levels.COUNTS_PER_MEAN)
    assert level.offset == pytest.approx(33000.0, abs=30) and level.gain == pytest.approx(4.0, rel=0.1)
    # the fitted offset is a few units off (2.5 % of this frame's mean signal); into() does not depend on the gain
    assert level.dose * level.gain == pytest.approx(info["dose"] * 4.0, rel=0.05) and np.all(level.beam == 1.0)
    into = level.into(readings)
    assert float(into.mean()) == pytest.approx(1.0, abs=0.01)
    np.testing.assert_allclose(into, noisy, atol=0.05 * float(noisy.std()) + 0.02 * float(np.abs(noisy).max()))
    back = level.back(clean)  # the clean image brought back: the readings' expectation
    assert float(back.mean()) == pytest.approx(float(readings.mean()), rel=1e-3)


@pytest.mark.parametrize(
    ("units", "frame_level", "on"),
    [
        ("counts / dose", "auto", "counts / dose"),
        ("counts / mean", "auto", "counts / mean"),
        ("counts / dose", "as_is", None),
        (None, "auto", None),
    ],
)
def test_the_engine_levels_frames_only_for_models_of_known_units(tmp_path, units, frame_level, on):
    path = save_model(tmp_path, "dncnn", extra_meta={"input_units": units}, depth=3, channels=8)
    method = DeepMethod.from_file(path, "cpu", "fp32", Tiling(frame_level=frame_level))
    assert method.levels == on and method.info()["input_units"] == units
    assert method.settings["frame_level"] == frame_level


def test_an_unknown_frame_level_is_one_line_naming_the_field(tmp_path):
    path = save_model(tmp_path, "dncnn", depth=3, channels=8)
    with pytest.raises(InputError, match=r"frame_level: expected one of auto, as_is, got 'asis'"):
        DeepMethod.from_file(path, "cpu", "fp32", Tiling(frame_level="asis"))


def test_a_zoo_model_restores_a_counts_frame_as_it_restores_its_counts_per_dose():
    """The shipped model on the microscope's numbers (counts, hundreds per pixel) gives what it gives on the same
    frame as counts / dose, times the level: without levels it returned nonsense (PSNR below 0 dB)."""
    noisy, clean, info = _pair(7, 500.0)
    as_is = api.denoise(noisy, "zoo:hrtem-ffdnet", 0.2, frame_level="as_is", max_deviation=0).image
    counts = api.denoise(noisy * info["dose"], "zoo:hrtem-ffdnet", 0.2, max_deviation=0).image
    gain = float((counts * as_is).sum() / (as_is * as_is).sum())
    assert gain == pytest.approx(info["dose"], rel=0.15)
    residual = counts / gain - as_is
    assert float(np.sqrt((residual**2).mean())) < 0.02 * float(clean.max() - clean.min())
