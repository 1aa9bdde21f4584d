"""The synthetic generator: clean images from the physics, atoms and metadata recorded, shot-noise statistics,
dead pixels, beam profile, files on disk, the generalisation split."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from support import power_spectrum

from emdenoise.data.simulate import pairs, scenes, writer
from emdenoise.data.simulate.pairs import (
    add_noise,
    beam_profile,
    clean_image,
    delocalisation_px,
    draw_beam,
    draw_detector_blur,
    draw_dose,
    draw_pixel_size,
    image_seed,
    make_pair,
)
from emdenoise.data.simulate.physics import Optics
from emdenoise.data.simulate.writer import GeneratorSettings, write_dataset
from emdenoise.errors import InputError
from emdenoise.outputs import Transaction

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def fit_gaussian_beam(img: np.ndarray, blur: float, min_level: float):
    """Centre (row, col) and sigma of a Gaussian bright patch: fit a paraboloid to log(blurred image).

    Works whether or not the centre lies inside the field; blurring a Gaussian by ``blur`` adds blur^2 to its
    variance, which is removed again.
    """
    smooth = gaussian_filter(img.astype(np.float64), blur, mode="nearest")
    margin = int(3 * blur)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float64)
    keep = np.zeros(img.shape, bool)
    keep[margin:-margin, margin:-margin] = True
    keep &= smooth > min_level
    y, x, v = yy[keep], xx[keep], np.log(smooth[keep])
    design = np.stack([np.ones_like(y), y, x, y * y + x * x], axis=1)
    weight = np.sqrt(smooth[keep])
    coef, *_ = np.linalg.lstsq(design * weight[:, None], v * weight, rcond=None)
    _, b, c, d = coef
    assert d < 0, "no bright patch found"
    sigma2 = -1.0 / (2 * d) - blur**2
    return (-b / (2 * d), -c / (2 * d)), math.sqrt(max(sigma2, 0.0))


def file_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------------------------
# clean images: what the physics gives
# ---------------------------------------------------------------------------------------------------------------


def test_clean_images_are_physical():
    """Finite, non-negative, mean about 1, a few per cent of contrast for graphene; vacuum is exactly 1."""
    stds = []
    for seed in range(12):
        clean, info = clean_image(seed, 96)
        assert clean.dtype == np.float32 and clean.shape == (96, 96)
        assert np.isfinite(clean).all() and clean.min() >= 0.0
        assert 0.9 < clean.mean() < 1.05, info
        if not info.get("empty") and info["material_fraction"] > 0.9:
            stds.append(float(clean.std()))
        assert 0.12 <= info["pixel_size"] <= 0.3 and info["material"] == "graphene"
    assert stds and 0.003 < np.median(stds) < 0.08, stds
    empty, info = clean_image(0, 64, scene="vacuum")
    assert info["empty"] and len(info["atoms"]["z"]) == 0
    np.testing.assert_allclose(empty, 1.0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_lattice_period_in_pixels_follows_the_recorded_pixel_size(seed):
    optics = Optics(80, -40.0, 0.0, focal_spread_angstrom=20, aperture_mrad=50)
    clean, info = clean_image(seed, 128, scene="lattice", optics=optics)
    power = power_spectrum(clean)
    f = np.fft.fftfreq(128) * 128
    radius = np.hypot(f[:, None], f[None, :])
    power[radius < 5] = 0
    period_px = 128 / float(radius.ravel()[np.argmax(power)])
    assert period_px * info["pixel_size"] == pytest.approx(2.46 * math.sqrt(3) / 2, rel=0.04)


def test_recorded_atoms_are_the_dark_columns_of_the_image():
    """Underfocus with Cs = 0 (weak phase): the recorded columns are darker than the image around them, and
    the recorded positions are in image pixels (shifting them by half the bond length loses the match)."""
    optics = Optics(80, -50.0, 0.0, focal_spread_angstrom=20, aperture_mrad=28)
    clean, info = clean_image(3, 128, scene="lattice", optics=optics, pixel_size=0.2)
    atoms = info["atoms"]
    assert atoms["yx"].dtype == np.float32 and atoms["z"].dtype == np.uint8 and atoms["vacant"].dtype == np.uint8
    assert (atoms["z"] == 6).all() and not atoms["vacant"].any()
    yx = atoms["yx"]
    assert ((yx >= -0.5) & (yx < 127.5)).all()
    assert len(yx) == pytest.approx(128**2 * 0.04 / (2.46**2 * math.sqrt(3) / 2 / 2), rel=0.05)

    def at(points):
        idx = np.clip(np.rint(points).astype(int), 0, 127)
        return clean[idx[:, 0], idx[:, 1]]

    z = (at(yx) - clean.mean()) / clean.std()
    assert z.mean() < -1.0
    moved = (at(yx + np.array([0.0, 0.71 / 0.2])) - clean.mean()) / clean.std()  # half a bond off
    assert moved.mean() > z.mean() + 0.5


def test_vacancies_are_recorded_at_lattice_sites():
    for seed in range(40):
        clean, info = clean_image(seed, 128)
        if info["vacancies"] >= 3 and not info["bilayer"]:
            break
    else:
        pytest.fail("no scene with vacancies among 40 seeds")
    atoms = info["atoms"]
    vacant = atoms["vacant"].astype(bool)
    assert vacant.sum() == info["vacancies"]
    # a vacant site is a site of the lattice: its nearest present column is one bond (1.42 A) away
    d, _ = cKDTree(atoms["yx"][~vacant]).query(atoms["yx"][vacant])
    assert np.median(d) * info["pixel_size"] == pytest.approx(1.42, rel=0.02)


def test_other_materials_and_optics_regimes():
    clean, info = clean_image(5, 96, material="srtio3", optics_regime="uncorrected")
    assert info["material"] == "srtio3" and info["voltage_kv"] >= 200
    assert set(np.unique(info["atoms"]["z"])) <= {8, 22, 38}
    assert 0.5 < clean.mean() < 1.05
    with pytest.raises(ValueError, match="material"):
        clean_image(0, 32, material="unobtainium")


def test_a_mixed_split_records_each_images_material(tmp_path):
    settings = GeneratorSettings.of(seed=3, train_images=9, test_images=1, image_size=48, material="mixed")
    write_dataset(tmp_path, settings, workers=1)
    with h5py.File(tmp_path / "train" / "graphene_img_clean.h5", "r") as f:
        codes, z, offsets = f["images"].attrs["material_code"], f["atom_z"][:], f["atom_offsets"][:]
        assert f.attrs["material"] == "mixed"
    with h5py.File(tmp_path / "train" / "graphene_img_noise.h5", "r") as f:
        assert "material_code: 0 graphene, 1 mos2, 2 srtio3" in f["images"].attrs["units"]
    names = {code: name for name, code in scenes.MATERIAL_CODES.items()}
    assert len(set(codes.tolist())) >= 2
    for i, code in enumerate(codes):  # the columns of image i are of the material its code names
        allowed = {z for *_, stack in scenes.MATERIALS[names[int(code)]].basis for z in stack}
        assert set(np.unique(z[offsets[i] : offsets[i + 1]]).tolist()) <= allowed


def test_pixel_size_and_detector_draws():
    rng = np.random.default_rng(0)
    sizes = np.array([draw_pixel_size(rng, 0.1, 0.4) for _ in range(4000)])
    assert sizes.min() >= np.float32(0.1) and sizes.max() <= np.float32(0.4)
    assert abs(np.median(np.log(sizes)) - 0.5 * (math.log(0.1) + math.log(0.4))) < 0.05  # log-uniform
    blurs = np.array([draw_detector_blur(rng) for _ in range(2000)])
    assert abs((blurs == 0).mean() - pairs.COUNTING_DETECTOR_FRACTION) < 0.05
    assert blurs[blurs > 0].min() >= 0.3 and blurs.max() <= 1.0


def test_margin_covers_the_lens_delocalisation():
    corrected = Optics(80, -50.0, 0.01, focal_spread_angstrom=30, convergence_mrad=0.1, aperture_mrad=50)
    uncorrected = Optics(300, -500.0, 1.2, focal_spread_angstrom=40, convergence_mrad=0.3, aperture_mrad=20)
    small, large = delocalisation_px(corrected, 0.2), delocalisation_px(uncorrected, 0.2)
    assert 0 < small < large
    _, info = clean_image(0, 256, optics=uncorrected, pixel_size=0.2)
    assert info["margin_px"] >= min(large, 256 // 4)


# ---------------------------------------------------------------------------------------------------------------
# noise: Poisson statistics, dead pixels, beam profile
# ---------------------------------------------------------------------------------------------------------------


def test_shot_noise_is_poisson_on_a_flat_field():
    rng = np.random.default_rng(11)
    flat = np.ones((256, 256), np.float32)
    dose = 20.0
    noisy, n_dead = add_noise(rng, flat, dose=dose, beam_center_yx=(128, 128), beam_sigma=1e7, dead_pixel_fraction=0.0)
    assert n_dead == 0
    counts = noisy.astype(np.float64) * dose
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # whole electrons
    n = counts.size
    assert abs(counts.mean() - dose) < 5 * math.sqrt(dose / n)
    assert abs(counts.var() / counts.mean() - 1) < 0.04  # variance = mean
    # At low dose the count distribution is Poisson, not Gaussian: P(0) = exp(-dose).
    low, _ = add_noise(rng, flat, dose=0.5, beam_center_yx=(128, 128), beam_sigma=1e7, dead_pixel_fraction=0.0)
    p0 = math.exp(-0.5)
    assert abs((low == 0).mean() - p0) < 5 * math.sqrt(p0 * (1 - p0) / n)
    assert abs((low * 0.5 == 1).mean() - 0.5 * p0) < 5 * math.sqrt(0.5 * p0 / n)  # P(1) = dose exp(-dose)


def test_noise_around_the_recorded_beam_and_dose_is_poisson():
    """For real pairs: (counts - dose*beam*clean) / sqrt(dose*beam*clean) has mean 0 and variance 1, using only
    the clean image and the recorded dose and beam; dividing out the beam, variance ~ mean on flat patches."""
    z_all = []
    for seed in range(4):
        noisy, clean, info = make_pair(seed, image_size=128, dead_pixel_fraction=0.0)
        beam = beam_profile(128, info["beam_center_yx"], info["beam_sigma"])
        lam = info["dose"] * beam.astype(np.float64) * clean
        counts = noisy.astype(np.float64) * info["dose"]
        np.testing.assert_allclose(counts, np.round(counts), atol=2e-3)
        keep = lam > 2
        z_all.append((counts[keep] - lam[keep]) / np.sqrt(lam[keep]))
    z = np.concatenate(z_all)
    assert len(z) > 10_000
    assert abs(z.mean()) < 0.03
    assert abs(z.var() - 1) < 0.05
    # a wrong beam (none) would not give unit variance: the check has teeth
    noisy, clean, info = make_pair(
        0, image_size=128, dead_pixel_fraction=0.0, beam_sigma=40.0, beam_center_yx=(0.0, 0.0)
    )
    lam_wrong = info["dose"] * clean.astype(np.float64)
    z_wrong = (noisy * info["dose"] - lam_wrong) / np.sqrt(lam_wrong)
    assert abs(z_wrong.mean()) > 0.5


def test_dead_pixel_fraction_matches():
    rng = np.random.default_rng(3)
    flat = np.ones((256, 256), np.float32)
    for fraction in (0.0, 0.001, 0.02):
        # at this dose a live pixel is never zero, so every zero is a dead pixel
        noisy, n_dead = add_noise(
            rng, flat, dose=1e4, beam_center_yx=(128, 128), beam_sigma=1e7, dead_pixel_fraction=fraction
        )
        zeros = int((noisy == 0).sum())
        assert zeros == n_dead
        n = noisy.size
        assert abs(zeros / n - fraction) <= 5 * math.sqrt(fraction * (1 - fraction) / n) + 1e-12
    # through make_pair, the recorded counts follow the default fraction
    dead = [make_pair(seed, image_size=128)[2]["dead_pixels"] for seed in range(8)]
    total = 8 * 128 * 128
    assert abs(sum(dead) / total - 0.001) < 5 * math.sqrt(0.001 / total)


@pytest.mark.parametrize("seed", range(5))
def test_beam_profile_is_recorded_and_visible(seed):
    """Fitting a Gaussian to the (blurred) noisy image of an empty field recovers the recorded beam, including
    centres off the image."""
    size = 128
    noisy, clean, info = make_pair(seed, image_size=size, scene="vacuum", dose=300.0)
    assert (clean == 1).all()
    (cy, cx), sigma = fit_gaussian_beam(noisy, blur=4.0, min_level=0.05)
    ry, rx = info["beam_center_yx"]
    assert -0.1 * size - 1 <= ry <= 1.1 * size + 1 and -0.1 * size - 1 <= rx <= 1.1 * size + 1
    assert 0.3 * size - 1 <= info["beam_sigma"] <= 0.6 * size + 1
    assert math.hypot(cy - ry, cx - rx) < 0.05 * size, ((cy, cx), (ry, rx))
    assert abs(sigma / info["beam_sigma"] - 1) < 0.1
    # the blurred noisy image follows the recorded beam
    beam = beam_profile(size, info["beam_center_yx"], info["beam_sigma"])
    assert np.corrcoef(gaussian_filter(noisy, 4).ravel(), beam.ravel())[0, 1] > 0.95


def test_beam_profile_shapes_graphene_images():
    """Blurred noisy / blurred clean of a graphene field is the recorded beam."""
    for seed in range(4):
        noisy, clean, info = make_pair(seed + 100, image_size=128, dose=200.0)
        if info.get("empty"):
            continue
        ratio = gaussian_filter(noisy, 6) / np.maximum(gaussian_filter(clean, 6), 1e-3)
        beam = beam_profile(128, info["beam_center_yx"], info["beam_sigma"])
        assert np.corrcoef(ratio.ravel(), beam.ravel())[0, 1] > 0.95


def test_dose_and_beam_draws_cover_their_ranges():
    rng = np.random.default_rng(0)
    doses = np.array([draw_dose(rng, 5.0, 100.0) for _ in range(4000)])
    assert doses.min() >= np.float32(5.0) and doses.max() <= np.float32(100.0)
    # log-uniform: log dose is uniform, so its median is the middle of the log range
    assert abs(np.median(np.log(doses)) - 0.5 * (math.log(5) + math.log(100))) < 0.1
    assert draw_dose(rng, 7.0, 7.0) == pytest.approx(7.0)
    beams = [draw_beam(rng, 100) for _ in range(2000)]
    centres = np.array([b[0] for b in beams])
    sigmas = np.array([b[1] for b in beams])
    assert centres.min() >= -10.001 and centres.max() <= 110.001
    assert (centres < 0).any() and (centres > 100).any()  # sometimes off the image
    assert sigmas.min() >= 29.99 and sigmas.max() <= 60.01


# ---------------------------------------------------------------------------------------------------------------
# files on disk
# ---------------------------------------------------------------------------------------------------------------


def test_write_dataset_layout(tmp_path):
    n = {"train": 5, "test": 3}
    settings = GeneratorSettings.of(
        seed=7, train_images=n["train"], test_images=n["test"], image_size=64, dose_min=10.0, dose_max=50.0
    )
    files = write_dataset(tmp_path, settings, workers=1)
    expected = [
        tmp_path / split / name
        for split in ("train", "test")
        for name in ("graphene_img_noise.h5", "graphene_img_clean.h5")
    ]
    assert files == expected
    # nothing else was left behind (no temporary files)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(expected)
    for split in ("train", "test"):
        with (
            h5py.File(tmp_path / split / "graphene_img_noise.h5", "r") as fn,
            h5py.File(tmp_path / split / "graphene_img_clean.h5", "r") as fc,
        ):
            noisy, clean = fn["images"], fc["images"]
            assert noisy.shape == clean.shape == (n[split], 64, 64, 1)
            assert noisy.dtype == clean.dtype == np.float32
            dose = noisy.attrs["dose"]
            assert dose.dtype == np.float32 and dose.shape == (n[split],)
            assert (dose >= np.float32(10.0)).all() and (dose <= np.float32(50.0)).all()
            assert noisy.attrs["beam_center_yx"].shape == (n[split], 2)
            assert noisy.attrs["dead_pixel_fraction"] == pytest.approx(0.001)
            assert fn.attrs["generator_version"] == pairs.GENERATOR_VERSION and fn.attrs["split"] == split
            assert fn.attrs["seed"] == 7
            assert fn.attrs["material"] == fc.attrs["material"] == "graphene"
            offsets = fc["atom_offsets"][()]
            assert offsets.dtype == np.int64 and offsets.shape == (n[split] + 1,) and offsets[0] == 0
            assert fc["atom_yx"].dtype == np.float32 and fc["atom_yx"].shape == (offsets[-1], 2)
            assert fc["atom_vacant"].dtype == fc["atom_z"].dtype == np.uint8
            assert fc["atom_vacant"].shape == fc["atom_z"].shape == (offsets[-1],)
            for name in ("pixel_size", "voltage_kv", "defocus_angstrom", "cs_mm"):
                assert noisy.attrs[name].dtype == np.float32 and noisy.attrs[name].shape == (n[split],)
            # row i is exactly the pair drawn from the image's own seed, with its metadata and atoms
            for i in range(n[split]):
                want_noisy, want_clean, info = make_pair(
                    image_seed(7, split, i), image_size=64, dose_min=10.0, dose_max=50.0
                )
                np.testing.assert_array_equal(noisy[i, :, :, 0], want_noisy)
                np.testing.assert_array_equal(clean[i, :, :, 0], want_clean)
                assert dose[i] == np.float32(info["dose"])
                assert noisy.attrs["dead_pixels"][i] == info["dead_pixels"]
                assert clean.attrs["n_grains"][i] == info["n_grains"]
                for name in ("pixel_size", "voltage_kv", "defocus_angstrom", "cs_mm", "aperture_mrad"):
                    assert noisy.attrs[name][i] == np.float32(info[name])
                rows = slice(offsets[i], offsets[i + 1])
                np.testing.assert_array_equal(fc["atom_yx"][rows], info["atoms"]["yx"])
                np.testing.assert_array_equal(fc["atom_vacant"][rows], info["atoms"]["vacant"])
                np.testing.assert_array_equal(fc["atom_z"][rows], info["atoms"]["z"])
    # train and test are different images
    with h5py.File(files[1], "r") as a, h5py.File(files[3], "r") as b:
        assert not np.array_equal(a["images"][0], b["images"][0])


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    kwargs = dict(train_images=6, test_images=3, image_size=48)
    write_dataset(tmp_path / "one", GeneratorSettings.of(seed=1, **kwargs), workers=1)
    write_dataset(tmp_path / "two", GeneratorSettings.of(seed=1, **kwargs), workers=2)
    write_dataset(tmp_path / "other", GeneratorSettings.of(seed=2, **kwargs), workers=1)
    one, two, other = (file_digests(tmp_path / d) for d in ("one", "two", "other"))
    assert len(one) == 4
    assert one == two
    assert set(one) == set(other) and all(one[k] != other[k] for k in one)


def test_failed_write_leaves_existing_files_untouched(tmp_path, monkeypatch):
    kwargs = dict(seed=0, train_images=3, test_images=2, image_size=32)
    write_dataset(tmp_path, GeneratorSettings.of(**kwargs), workers=1)
    before = file_digests(tmp_path)
    real = writer.make_pair

    def failing(rng, **kw):
        if rng.spawn_key == (pairs.SPLIT_KEYS["test"], 1):
            raise RuntimeError("disk on fire")
        return real(rng, **kw)

    monkeypatch.setattr(writer, "make_pair", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_dataset(tmp_path, GeneratorSettings.of(**dict(kwargs, seed=5)), workers=1)
    assert file_digests(tmp_path) == before


def test_write_dataset_rejects_bad_arguments(tmp_path):
    # the settings are the download section's, checked once, by the schema (one line naming the key)
    with pytest.raises(InputError, match="train_images"):
        GeneratorSettings.of(seed=0, train_images=0, test_images=1)
    with pytest.raises(InputError, match="dose_min"):
        GeneratorSettings.of(seed=0, train_images=1, test_images=1, dose_min=50.0, dose_max=5.0)
    with pytest.raises(InputError, match="pixel_size_min"):
        GeneratorSettings.of(seed=0, train_images=1, test_images=1, pixel_size_min=0.5, pixel_size_max=0.2)
    with pytest.raises(InputError, match="generalisation_material"):
        GeneratorSettings.of(seed=0, train_images=1, test_images=1, generalisation_material="cheese")
    with pytest.raises(InputError, match="optics"):
        GeneratorSettings.of(seed=0, train_images=1, test_images=1, optics="cryo")
    with pytest.raises(ValueError, match="renderer"):
        GeneratorSettings.of(seed=0, train_images=1, test_images=1, renderer="crayon")
    with pytest.raises(ValueError, match="kind"):
        clean_image(0, 32, scene="moon")
    assert not any(tmp_path.iterdir())


def test_write_dataset_into_a_callers_transaction_commits_with_it(tmp_path):
    tx = Transaction()
    settings = GeneratorSettings.of(seed=0, train_images=2, test_images=1, image_size=32)
    written = write_dataset(tmp_path, settings, workers=1, tx=tx)
    assert not any(p.exists() for p in written) and all(tx.is_staged(p) for p in written)  # staged, not placed
    tx.commit()
    assert all(p.is_file() for p in written) and not list(tmp_path.rglob(".staging"))


def test_generalisation_split_is_written_when_asked_and_removed_when_not(tmp_path):
    kwargs = dict(seed=3, train_images=2, test_images=1, image_size=32)
    gen_settings = GeneratorSettings.of(**kwargs, generalisation_count=2, generalisation_material="srtio3")
    files = write_dataset(tmp_path, gen_settings, workers=1)
    gen = [tmp_path / "generalisation" / name for name in ("graphene_img_noise.h5", "graphene_img_clean.h5")]
    assert files[-2:] == gen and all(p.is_file() for p in gen)
    with h5py.File(gen[0], "r") as fn, h5py.File(gen[1], "r") as fc:
        assert fn["images"].shape == (2, 32, 32, 1) and fn.attrs["split"] == "generalisation"
        assert fn.attrs["material"] == "srtio3"
        assert set(np.unique(fc["atom_z"][()])) <= {8, 22, 38}
        want, _, _ = make_pair(image_seed(3, "generalisation", 1), image_size=32, material="srtio3")
        np.testing.assert_array_equal(fn["images"][1, :, :, 0], want)
    with h5py.File(tmp_path / "train" / "graphene_img_noise.h5", "r") as fn:
        assert fn.attrs["material"] == "graphene"
    write_dataset(
        tmp_path, GeneratorSettings.of(**kwargs), workers=1
    )  # without one, an old generalisation split would be stale: it goes
    assert not any(p.exists() for p in gen)
