"""The synthetic generator: lattice physics, shot-noise statistics, dead pixels, beam profile, files on disk."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from support import power_spectrum

from emdenoise.data import synthetic
from emdenoise.data.synthetic import (
    FRINGE_PX,
    add_noise,
    beam_profile,
    clean_scene,
    draw_beam,
    draw_dose,
    image_seed,
    make_pair,
    write_dataset,
)
from emdenoise.outputs import Transaction

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def ring_power(power: np.ndarray, radius: float, angle_deg: float) -> float:
    """Power summed within two bins of the frequency (radius, angle) (cycles per image, degrees)."""
    size = power.shape[0]
    iy = int(round(radius * math.sin(math.radians(angle_deg))))
    ix = int(round(radius * math.cos(math.radians(angle_deg))))
    rows = [(iy + d) % size for d in range(-2, 3)]
    cols = [(ix + d) % size for d in range(-2, 3)]
    return float(power[np.ix_(rows, cols)].sum())


def angle_diff_mod60(a: float, b: float) -> float:
    d = (a - b) % 60.0
    return min(d, 60.0 - d)


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
# clean images: the graphene lattice
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lattice_fringe_is_10_to_12_px_and_hexagonal(seed):
    size = 256
    clean, material, info = clean_scene(seed, size, "lattice")
    assert material.min() == 1.0 and info["n_grains"] == 1
    power = power_spectrum(clean)
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(size) * size, np.fft.fftfreq(size) * size, indexing="ij"))
    power[freq < 4] = 0  # ignore the slowest variations
    iy, ix = np.unravel_index(np.argmax(power), power.shape)
    fy, fx = np.fft.fftfreq(size)[iy] * size, np.fft.fftfreq(size)[ix] * size
    radius = math.hypot(fy, fx)
    period = size / radius
    assert 10.0 <= period <= 12.0, period
    assert abs(period - FRINGE_PX) < 0.6
    # The strongest peak points along one of the recorded first-order wave vectors (modulo 60 degrees) ...
    angle = math.degrees(math.atan2(fy, fx))
    assert angle_diff_mod60(angle, info["rotations_deg"][0]) < 3.0
    # ... and the lattice is hexagonal: the peaks 60 and 120 degrees on are (almost) as strong.
    peak = ring_power(power, radius, angle)
    for turn in (60, 120):
        assert ring_power(power, radius, angle + turn) > 0.5 * peak
    # A direction 30 degrees off carries no first-order fringe.
    assert ring_power(power, radius, angle + 30) < 0.01 * peak


def test_lattice_atoms_sit_on_the_predicted_sites():
    """The sites returned by atom_sites are maxima of the lattice contrast (the atoms), 1.42 A bonds apart."""
    rng = np.random.default_rng(5)
    rotation, shift = 0.4, (30.3, 71.9)
    lat = synthetic.lattice(128, rotation=rotation, shift=shift, second_order=0.3, blur_px=0.5)
    sites = synthetic.atom_sites(
        40, rng, 128, rotation=rotation, fringe_px=FRINGE_PX, shift=shift, cluster_fraction=1.0
    )
    inside = sites[(sites >= 2).all(axis=1) & (sites <= 125).all(axis=1)]
    values = lat[np.round(inside[:, 1]).astype(int), np.round(inside[:, 0]).astype(int)]
    assert len(inside) > 30
    assert values.min() > 0.8 * lat.max()
    # each clustered site came with two neighbours at the C-C bond length (2/3 of the fringe spacing)
    base, extra = sites[:40], sites[40:].reshape(2, 40, 2)
    bond = np.linalg.norm(extra - base[None], axis=2)
    np.testing.assert_allclose(bond, FRINGE_PX * 2 / 3, rtol=1e-9)


def test_grains_show_their_own_rotations():
    """In a two-grain field the spectrum has each grain's fringes at its recorded rotation, far above the power
    at other orientations on the same ring."""
    size = 256
    for seed in range(300):
        clean, _, info = clean_scene(seed, size, "random")
        if (
            info["n_grains"] == 2
            and not info["bilayer"]
            and min(info["grain_fractions"]) > 0.3
            and info["material_fraction"] > 0.9
            and angle_diff_mod60(*info["rotations_deg"]) > 15
        ):
            break
    else:
        pytest.fail("no two-grain scene among 300 seeds")
    power = power_spectrum(clean)
    radius = size / info["fringe_px"]
    elsewhere = [
        ring_power(power, radius, a)
        for a in np.arange(0, 360, 1.0)
        if min(angle_diff_mod60(a, r) for r in info["rotations_deg"]) > 12
    ]
    for rotation in info["rotations_deg"]:
        assert ring_power(power, radius, rotation) > 5 * np.median(elsewhere)


def test_random_scenes_are_physical():
    """Non-negative values of order 1; vacuum (holes, edges, empty fields) is flat at 1; graphene has contrast."""
    seen = {"holes": 0, "vacuum_edge": 0, "reversed": 0, "multi_grain": 0}
    for seed in range(40):
        clean, material, info = clean_scene(seed, 128, "random")
        assert clean.dtype == np.float32 and clean.shape == (128, 128)
        assert np.isfinite(clean).all() and clean.min() >= 0.0
        assert 0.3 < clean.mean() < 1.5 and clean.max() < 3.0
        vacuum = material < 1e-4
        if vacuum.any():
            np.testing.assert_allclose(clean[vacuum], 1.0, atol=1e-3)
        graphene = material > 0.99
        if graphene.sum() > 500:
            assert clean[graphene].std() > 0.02  # the lattice shows
        seen["holes"] += info["holes"]
        seen["vacuum_edge"] += info["vacuum_edge"]
        seen["reversed"] += info["contrast_sign"] == -1
        seen["multi_grain"] += info["n_grains"] > 1
    assert all(count > 0 for count in seen.values()), seen
    empty, material, info = clean_scene(0, 64, "vacuum")
    assert info["empty"] and (empty == 1.0).all() and (material == 0).all()


def test_contrast_reversal_flips_the_atoms():
    """Atoms (at the sites predicted from the recorded rotation and shift) are darker than the graphene around
    them, or brighter when the contrast is reversed."""
    found = {}
    for seed in range(300):
        clean, material, info = clean_scene(seed, 128, "random")
        if info["n_grains"] == 1 and not info["bilayer"] and material.mean() > 0.8:
            found.setdefault(info["contrast_sign"], (clean, material, info))
        if len(found) == 2:
            break
    assert set(found) == {1, -1}
    for sign, (clean, material, info) in found.items():
        sites = synthetic.atom_sites(
            400,
            np.random.default_rng(0),
            128,
            rotation=math.radians(info["rotations_deg"][0]),
            fringe_px=info["fringe_px"],
            shift=info["shifts_px"][0],
        )
        iy, ix = np.round(sites[:, 1]).astype(int), np.round(sites[:, 0]).astype(int)
        inside = (iy >= 0) & (iy < 128) & (ix >= 0) & (ix < 128)
        iy, ix = iy[inside], ix[inside]
        on_graphene = material[iy, ix] > 0.99
        atoms = clean[iy[on_graphene], ix[on_graphene]].mean()
        around = clean[material > 0.99].mean()
        assert on_graphene.sum() > 100
        assert (atoms - around) * sign < 0, (sign, atoms, around)


def test_smooth_fields_have_unit_variance_and_the_asked_correlation_length():
    corr = 16.0
    fields = synthetic.smooth_fields(np.random.default_rng(2), 128, [corr] * 40)
    assert fields.shape == (40, 128, 128) and fields.dtype == np.float32
    assert 0.85 < fields.var(axis=(1, 2)).mean() + fields.mean(axis=(1, 2)).var() < 1.15
    for lag in (8, 16, 32):
        # a Gaussian kernel of sigma l gives the correlation exp(-d^2 / (4 l^2))
        measured = np.corrcoef(fields[:, :, :-lag].ravel(), fields[:, :, lag:].ravel())[0, 1]
        assert abs(measured - math.exp(-(lag**2) / (4 * corr**2))) < 0.06, lag


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
        if info["empty"]:
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
    files = write_dataset(
        tmp_path,
        seed=7,
        train_images=n["train"],
        test_images=n["test"],
        image_size=64,
        dose_min=10.0,
        dose_max=50.0,
        workers=1,
    )
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
            assert fn.attrs["generator_version"] == synthetic.GENERATOR_VERSION and fn.attrs["split"] == split
            assert fn.attrs["seed"] == 7
            # row i is exactly the pair drawn from the image's own seed
            for i in range(n[split]):
                want_noisy, want_clean, info = make_pair(
                    image_seed(7, split, i), image_size=64, dose_min=10.0, dose_max=50.0
                )
                np.testing.assert_array_equal(noisy[i, :, :, 0], want_noisy)
                np.testing.assert_array_equal(clean[i, :, :, 0], want_clean)
                assert dose[i] == np.float32(info["dose"])
                assert noisy.attrs["dead_pixels"][i] == info["dead_pixels"]
                assert clean.attrs["n_grains"][i] == info["n_grains"]
    # train and test are different images
    with h5py.File(files[1], "r") as a, h5py.File(files[3], "r") as b:
        assert not np.array_equal(a["images"][0], b["images"][0])


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    kwargs = dict(train_images=6, test_images=3, image_size=48)
    write_dataset(tmp_path / "one", seed=1, workers=1, **kwargs)
    write_dataset(tmp_path / "two", seed=1, workers=2, **kwargs)
    write_dataset(tmp_path / "other", seed=2, workers=1, **kwargs)
    one, two, other = (file_digests(tmp_path / d) for d in ("one", "two", "other"))
    assert len(one) == 4
    assert one == two
    assert set(one) == set(other) and all(one[k] != other[k] for k in one)


def test_failed_write_leaves_existing_files_untouched(tmp_path, monkeypatch):
    kwargs = dict(seed=0, train_images=3, test_images=2, image_size=32, workers=1)
    write_dataset(tmp_path, **kwargs)
    before = file_digests(tmp_path)
    real = synthetic.make_pair

    def failing(rng, **kw):
        if rng.spawn_key == (synthetic.SPLIT_KEYS["test"], 1):
            raise RuntimeError("disk on fire")
        return real(rng, **kw)

    monkeypatch.setattr(synthetic, "make_pair", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_dataset(tmp_path, **dict(kwargs, seed=5))
    assert file_digests(tmp_path) == before


def test_write_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="train_images"):
        write_dataset(tmp_path, seed=0, train_images=0, test_images=1)
    with pytest.raises(ValueError, match="dose_min"):
        write_dataset(tmp_path, seed=0, train_images=1, test_images=1, dose_min=50.0, dose_max=5.0)
    with pytest.raises(ValueError, match="scene"):
        clean_scene(0, 32, "moon")
    assert not any(tmp_path.iterdir())


def test_write_dataset_into_a_callers_transaction_commits_with_it(tmp_path):
    tx = Transaction()
    written = write_dataset(tmp_path, seed=0, train_images=2, test_images=1, image_size=32, workers=1, tx=tx)
    assert not any(p.exists() for p in written) and all(tx.is_staged(p) for p in written)  # staged, not placed
    tx.commit()
    assert all(p.is_file() for p in written) and not list(tmp_path.rglob(".staging"))
