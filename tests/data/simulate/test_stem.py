"""STEM in the generator: the probe against the Airy formula, HAADF and ABF column signals against their Z
laws, the detector's mean-variance line, the scan distortions, and STEM sets written and read back."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from emdenoise.data.simulate import pairs, physics, stem
from emdenoise.data.simulate.writer import GeneratorSettings, write_dataset

PIXEL = 0.1


def isolated(z_values, n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Atoms of the given Z on pixel centres, 4 nm apart from each other (and their periodic images)."""
    yx = np.array([[n // 4, n // 4 + i * (n // 2)] for i in range(len(z_values))], np.float64) * PIXEL
    return yx, np.asarray(z_values, np.uint8)


def peak(image: np.ndarray, yx_angstrom: np.ndarray) -> np.ndarray:
    rc = np.rint(yx_angstrom / PIXEL).astype(int)
    return image[rc[:, 0], rc[:, 1]]


# ---------------------------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv,alpha,pixel", [(200.0, 25.0, 0.08), (80.0, 30.0, 0.1), (300.0, 10.0, 0.2)])
def test_aberration_free_probe_is_the_airy_disc(kv, alpha, pixel):
    """FWHM of |FT(aperture)|^2: 2 x 1.6163 / (2 pi) lambda / alpha = 0.5145 lambda / alpha (the half maximum of
    [2 J1(v) / v]^2 is at v = 1.6163)."""
    optics = stem.StemOptics(kv, alpha)
    airy = 2 * 1.6163 / (2 * math.pi) * physics.wavelength_angstrom(kv) / (alpha * 1e-3)
    probe = stem.make_probe(optics, 256, pixel)
    assert probe.fwhm_angstrom == pytest.approx(airy, rel=0.015)
    assert probe.spectrum[0, 0] == pytest.approx(1.0, abs=1e-6)  # the intensity integrates to 1


def test_defocus_spherical_aberration_and_source_widen_the_probe():
    ideal = stem.make_probe(stem.StemOptics(200.0, 20.0), 128, 0.1)
    sharp = ideal.fwhm_angstrom
    for optics in (
        stem.StemOptics(200.0, 20.0, defocus_angstrom=-150.0),
        stem.StemOptics(200.0, 20.0, source_size_angstrom=0.4),
    ):
        assert stem.make_probe(optics, 128, 0.1).fwhm_angstrom > 1.1 * sharp, optics
    # uncorrected Cs at a corrected probe's angle: the peak falls (its electrons go into a halo)
    halo = stem.make_probe(stem.StemOptics(200.0, 20.0, cs_mm=1.0), 128, 0.1)
    centre = [np.fft.irfft2(p.spectrum, s=(128, 128))[0, 0] for p in (ideal, halo)]
    assert centre[1] < 0.5 * centre[0]
    # a Gaussian source of sigma s adds (2.355 s)^2 to a Gaussian-like probe's FWHM^2, roughly
    wide = stem.make_probe(stem.StemOptics(200.0, 20.0, source_size_angstrom=0.4), 128, 0.1).fwhm_angstrom
    assert wide == pytest.approx(math.hypot(sharp, stem.FWHM_PER_SIGMA * 0.4), rel=0.1)


def test_drawn_probes_are_of_their_regimes():
    rng = np.random.default_rng(0)
    corrected = [stem.draw_stem_optics(rng, "corrected") for _ in range(20)]
    uncorrected = [stem.draw_stem_optics(rng, "uncorrected") for _ in range(20)]
    assert all(20 <= o.convergence_mrad <= 35 and o.voltage_kv in (60, 80) for o in corrected)
    assert all(
        6 <= o.convergence_mrad <= 12 and o.voltage_kv in (200, 300) and o.defocus_angstrom < 0 for o in uncorrected
    )
    fwhm = [stem.make_probe(o, 64, 0.15).fwhm_angstrom for o in corrected[:5] + uncorrected[:5]]
    assert max(fwhm[:5]) < min(fwhm[5:])  # corrected probes are the sharp ones


# ---------------------------------------------------------------------------------------------------------------
# HAADF and ABF
# ---------------------------------------------------------------------------------------------------------------


def test_haadf_column_ratio_is_z_to_the_1_7():
    """Mo and S atoms far apart under the same probe: peak ratio (42 / 16)^1.7 = 5.16; each atom's integrated
    signal its cross-section; vacuum 0."""
    yx, z = isolated([42, 16])
    probe = stem.make_probe(stem.StemOptics(200.0, 25.0, source_size_angstrom=0.1), 128, PIXEL)
    image = stem.yield_image(yx, z, probe, PIXEL, "haadf")
    mo, s = peak(image, yx)
    assert mo / s == pytest.approx((42 / 16) ** stem.HAADF_EXPONENT, rel=0.005)
    expected_total = stem.cross_section([42, 16], "haadf").sum()
    assert image.sum() * PIXEL**2 == pytest.approx(expected_total, rel=0.01)
    assert image[100, 10] < 1e-3 * s


def test_abf_columns_are_dark_light_and_heavy_alike():
    """Bright background (ABF_BACKGROUND), every column darker, the dips in the ratio (Z1 / Z2)^0.6."""
    yx, z = isolated([6, 42])
    probe = stem.make_probe(stem.StemOptics(80.0, 30.0), 128, PIXEL)
    image = stem.yield_image(yx, z, probe, PIXEL, "abf")
    background = stem.ABF_BACKGROUND
    assert image[100, 10] == pytest.approx(background, abs=1e-4)
    c, mo = background - peak(image, yx)
    assert 0.02 * background < c < mo < background
    assert mo / c == pytest.approx((42 / 6) ** stem.ABF_EXPONENT, rel=0.005)
    rc = np.unravel_index(np.argmin(image), image.shape)
    assert rc == tuple(np.rint(yx[1] / PIXEL).astype(int))  # the darkest ABF spot is the Mo column


# ---------------------------------------------------------------------------------------------------------------
# detector
# ---------------------------------------------------------------------------------------------------------------


def test_detector_mean_variance_line():
    """Constant expected electrons lam: mean = offset + gain lam, variance = gain (mean - offset) + read_noise^2
    + 1/12 (the rounding); the line's slope is the gain, its intercept read_noise^2 + 1/12 - gain offset."""
    detector = stem.Detector(offset=33000.0, gain=4.0, read_noise=3.0)
    rng = np.random.default_rng(1)
    levels = np.array([0.0, 1.0, 3.0, 10.0])
    readings = [stem.detect(rng, np.full(200_000, lam, np.float32), detector).astype(np.float64) for lam in levels]
    means = np.array([r.mean() for r in readings])
    variances = np.array([r.var() for r in readings])
    assert means == pytest.approx(detector.expected(levels.astype(np.float32)), abs=0.05)
    slope, intercept = np.polyfit(means - detector.offset, variances, 1)
    assert slope == pytest.approx(detector.gain, rel=0.02)
    assert intercept == pytest.approx(detector.read_noise**2 + 1 / 12, rel=0.05)
    _, raw_intercept = np.polyfit(means, variances, 1)  # against the readings themselves
    hand = detector.read_noise**2 + 1 / 12 - detector.gain * detector.offset
    assert raw_intercept == pytest.approx(hand, abs=0.02 * detector.gain * detector.offset)
    assert all(np.all(r == np.rint(r)) and r.min() >= 0 and r.max() <= 65535 for r in readings)


def test_detector_clips_to_uint16():
    reading = stem.detect(np.random.default_rng(0), np.full(10, 1e5, np.float32), stem.Detector(60000.0, 10.0, 1.0))
    assert np.all(reading == 65535)


# ---------------------------------------------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------------------------------------------


def test_jitter_is_one_shift_per_line_seen_in_the_image():
    """A field varying along x only, scanned with jitter: each line's measured shift is its recorded jitter;
    the lines are independent and their RMS is the recorded one."""
    size, period = 128, 16.0
    x = np.arange(size)
    field = np.tile(np.cos(2 * np.pi * x / period), (size, 1))
    rng = np.random.default_rng(3)
    scan = stem.draw_scan(rng, size, jitter_px=0.5, drift_px=0.0, flyback_px=0.0)
    image = stem.sample(field, *stem.scan_positions(scan, size))
    measured = np.angle((image * np.exp(-2j * np.pi * x / period)).sum(axis=1)) * period / (2 * np.pi)
    assert measured == pytest.approx(scan.jitter_px, abs=0.01)
    assert 0 < scan.jitter_rms <= 0.5
    assert np.sqrt(np.mean(measured**2)) == pytest.approx(scan.jitter_rms, rel=0.05)
    lag1 = np.corrcoef(scan.jitter_px[:-1], scan.jitter_px[1:])[0, 1]
    assert abs(lag1) < 3 / math.sqrt(size)
    rms = [stem.draw_scan(rng, 256, 0.3, 0.0, 0.0).jitter_rms for _ in range(300)]
    assert np.mean(rms) == pytest.approx(0.15, rel=0.1)  # uniform in [0, 0.3]
    assert max(rms) <= 0.3 * 1.2


def test_drift_is_affine_and_flyback_compresses_the_line_starts():
    size = 64
    drift = stem.Scan(np.zeros(size, np.float32), drift_yx_px=(2.0, -3.0))
    y, x = stem.scan_positions(drift, size)
    r, c = np.mgrid[0:size, 0:size]
    t = (r * size + c) / size**2
    assert y == pytest.approx(r + 2.0 * t) and x == pytest.approx(c - 3.0 * t)
    flyback = stem.Scan(np.zeros(size, np.float32), flyback_px=2.0, flyback_tau_px=3.2)
    _, x = stem.scan_positions(flyback, size)
    step = np.diff(x[0])
    assert x[0, 0] == pytest.approx(2.0) and step[0] < 0.6 and step[-1] == pytest.approx(1.0, abs=1e-6)
    assert np.all(step > 0)  # compressed, never folded back


def test_image_positions_invert_the_scan():
    rng = np.random.default_rng(4)
    size = 96
    scan = stem.draw_scan(rng, size, jitter_px=0.5, drift_px=4.0, flyback_px=3.0)
    y, x = stem.scan_positions(scan, size)
    pick = rng.integers(0, size, (200, 2))
    true = np.stack([y[pick[:, 0], pick[:, 1]], x[pick[:, 0], pick[:, 1]]], 1)
    assert stem.image_positions(scan, size, true) == pytest.approx(pick.astype(float), abs=2e-3)


# ---------------------------------------------------------------------------------------------------------------
# pairs and files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", stem.MODES)
def test_pairs_record_the_columns_where_the_image_shows_them(mode):
    """A MoS2 lattice with scan distortions: the brightest (HAADF) or darkest (ABF) spot near every recorded
    Mo column is on it (the recorded positions went through the scan's distortions)."""
    settings = {"jitter_px": 0.5, "drift_px": 3.0, "flyback_px": 2.0, "dose_min": 1e4, "dose_max": 1e4}
    noisy, clean, info = pairs.make_pair(
        7, image_size=96, imaging=mode, stem_settings=settings, material="mos2", scene="lattice",
        optics_regime="corrected", pixel_size_min=0.2, pixel_size_max=0.2,
    )  # fmt: skip
    assert info["imaging_mode"] == stem.MODE_CODES[mode] and info["scan_flyback_px"] > 0
    yx, z = info["atoms"]["yx"], info["atoms"]["z"]
    mo = yx[(z == 42) & np.all((yx > 4) & (yx < 91), axis=1)]
    assert len(mo) > 20
    sign = 1.0 if mode == "haadf" else -1.0
    errors = []
    for (r, c), true in zip(np.rint(mo).astype(int), mo):
        window = sign * clean[r - 3 : r + 4, c - 3 : c + 4]
        dr, dc = np.unravel_index(np.argmax(window), window.shape)
        errors.append(math.hypot(r - 3 + dr - true[0], c - 3 + dc - true[1]))
    assert np.median(errors) < 0.75 and max(errors) < 1.5


@pytest.mark.parametrize("units", stem.UNITS)
def test_clean_is_the_expectation_of_noisy_in_its_units(units):
    settings = {"units": units, "offset": 1000.0, "gain": 5.0, "read_noise": 2.0, "dose_min": 200.0, "dose_max": 200.0}
    noisy, clean, info = pairs.make_pair(2, image_size=128, imaging="abf", stem_settings=settings)
    dose = info["dose"]  # counts per stored unit (electrons: the dose; mean: the image's mean expected counts)
    if units == "mean":
        assert float(clean.mean(dtype=np.float64)) == pytest.approx(1.0, rel=1e-5)
        assert 0.3 * 200.0 < dose < 200.0  # ABF collects part of the probe's 200 electrons per position
    if units != "detector":  # back to the detector's whole units
        reading = noisy.astype(np.float64) * 5.0 * dose + 1000.0
        assert np.abs(reading - np.rint(reading)).max() < 0.05
        noisy, clean = reading, 1000.0 + 5.0 * dose * clean.astype(np.float64)
    residual = noisy - clean
    variance = 5.0 * (clean - 1000.0) + 4.0 + 1 / 12
    z = residual.sum() / math.sqrt(variance.sum())
    assert abs(z) < 4
    assert np.mean(residual**2 / variance) == pytest.approx(1.0, abs=0.03)
    assert info["dead_pixels"] == 0 and math.isnan(info["beam_sigma"])


def test_hrtem_pairs_are_unchanged_by_the_imaging_keyword():
    a = pairs.make_pair(5, image_size=64)
    b = pairs.make_pair(5, image_size=64, imaging="hrtem")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert "imaging" not in GeneratorSettings.of(seed=0).split_kwargs("train")
    assert "imaging" not in GeneratorSettings.of(seed=0).record()


def test_mixed_set_is_written_with_every_mode_and_its_records(tmp_path):
    settings = GeneratorSettings.of(
        seed=3, train_images=9, test_images=2, image_size=32, imaging="mixed", stem_units="electrons",
        generalisation_count=2,
    )  # fmt: skip
    assert settings.record()["imaging"] == "mixed" and settings.record()["stem_units"] == "electrons"
    write_dataset(tmp_path, settings, workers=1)
    with h5py.File(tmp_path / "train" / "graphene_img_noise.h5") as fh:
        attrs = fh["images"].attrs
        modes = attrs["imaging_mode"]
        assert set(modes) == {0, 1, 2} and fh.attrs["imaging"] == "mixed"
        stem_rows = modes > 0
        assert np.all(np.isnan(attrs["probe_fwhm_angstrom"][~stem_rows]))
        assert np.all(attrs["probe_fwhm_angstrom"][stem_rows] > 0)
        assert np.all(np.isnan(attrs["beam_sigma"][stem_rows])) and np.all(attrs["beam_sigma"][~stem_rows] > 0)
        assert attrs["scan_drift_yx_px"].shape == (9, 2)
        gains = attrs["detector_gain"][stem_rows]
        with h5py.File(tmp_path / "generalisation" / "graphene_img_noise.h5") as other:
            assert other.attrs["material"] == "mos2" and len(other["images"].attrs["imaging_mode"]) == 2
        assert np.all((gains > 0) & (gains <= 4.0)) and "imaging_mode: 0 hrtem" in attrs["units"]


def test_a_vacuum_image_in_mean_units_keeps_its_counts():
    """No atoms, no HAADF signal: no mean to divide by, so the stored values are counts (dose 1)."""
    settings = {"units": "mean", "dose_min": 1e4, "dose_max": 1e4}
    noisy, clean, info = pairs.make_pair(2, image_size=64, imaging="haadf", stem_settings=settings, scene="vacuum")
    assert info["dose"] == 1.0 and float(np.abs(clean).max()) == 0.0 and float(noisy.std()) < 2.0


@pytest.mark.slow
@pytest.mark.parametrize("units", ["detector", "mean"])
def test_haadf_download_preprocess_train_test(tmp_path, capsys, units):
    """download with imaging: haadf writes a raw set preprocess accepts; a tiny model trains and is tested on it
    (the PSNR range and normalisation in detector units; in mean units the card and the model file say the frames
    are counts / mean, the level denoise brings a microscope's STEM frames to)."""
    import json

    from support import params_file, run_here

    from emdenoise import cli
    from emdenoise.io import modelfile

    folders = {name: tmp_path / name for spec in cli.TASKS.values() for name in spec.inputs + spec.outputs}
    params = params_file(
        tmp_path / "p.yaml",
        download={"source": "synthetic", "imaging": "haadf", "train_images": 10, "test_images": 4,
                  "image_size": 32, "stem_dose_min": 2000.0, "stem_dose_max": 8000.0, "material": "mos2",
                  "workers": 1, "stem_units": units},
        train={"model": "dncnn", "epochs": 1, "batch_size": 4, "device": "cpu", "precision": "fp32",
               "patch_size": 16},
        test={"baselines": ["gaussian"], "device": "cpu", "precision": "fp32", "figure_images": 0},
    )  # fmt: skip
    for task in ("download", "preprocess", "train", "test"):
        spec = cli.TASKS[task]
        paths = {name: folders[name] for name in spec.inputs + spec.outputs} | {"parameters_file": params}
        code, err = run_here(capsys, task, paths)
        assert code == 0, (task, err)
    card = json.loads((folders["data_dir"] / "dataset_card.json").read_text())
    if units == "detector":
        assert card["normalisation"]["noisy"]["mean"] > 32000  # detector units went through unchanged
        assert not card["has_dose"] and "input_units" not in card
    else:
        assert card["normalisation"]["clean"]["mean"] == pytest.approx(1.0, rel=1e-4)
        assert card["has_dose"] and card["input_units"] == "counts / mean"
    _, model = modelfile.load_model(next(folders["model_dir"].rglob("*.h5")))
    assert model["input_units"] == (None if units == "detector" else "counts / mean")
    metrics = json.loads(next(folders["output_dir"].rglob("test_metrics.json")).read_text())
    assert "dncnn" in json.dumps(metrics) and "gaussian" in json.dumps(metrics)


def test_a_saturated_detector_reads_and_expects_65535():
    detector = stem.Detector(33000.0, 4.0, 3.0)
    electrons = np.array([8000.0, 9000.0, 1e5], np.float32)
    assert detector.expected(electrons).tolist() == [65000.0, 65535.0, 65535.0]
    assert stem.detect(np.random.default_rng(0), electrons[1:], detector).tolist() == [65535.0, 65535.0]


def test_the_detector_gain_is_turned_down_before_saturation():
    """ABF at 10^6 electrons per position: the gain falls so the brightest expected pixel reads at 80 % of the
    range; the recorded gain is the one used, and clean is still the expectation of noisy."""
    settings = {"offset": 33000.0, "gain": 4.0, "dose_min": 1e6, "dose_max": 1e6}
    noisy, clean, info = pairs.make_pair(1, image_size=64, imaging="abf", stem_settings=settings)
    assert info["detector_gain"] < 4.0 and clean.max() == pytest.approx(33000 + 0.8 * 32535, rel=1e-4)
    assert noisy.max() < 65535
    low = stem.fitted_detector(stem.Detector(33000.0, 4.0, 3.0), 1000.0)
    assert low == stem.Detector(33000.0, 4.0, 3.0)  # nothing to fit: unchanged
