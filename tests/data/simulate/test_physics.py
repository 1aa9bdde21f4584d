"""Image formation: wavelengths, the lens, the projected potential, weak-phase contrast, CTF zeros, the detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support import power_spectrum, radial_mean

from emdenoise.data.simulate import physics, scenes
from emdenoise.data.simulate.physics import Optics

SIZE, PIXEL = 256, 0.2  # a 51.2 A field: one frequency bin is 1 / 51.2 A


def lattice_scene(material: str = "graphene", seed: int = 0) -> scenes.Scene:
    return scenes.draw_scene(np.random.default_rng(seed), SIZE, PIXEL, material, kind="lattice")


def potential_of(scene: scenes.Scene) -> np.ndarray:
    return physics.projected_potential(scene.atoms_yx_A, scene.z, (SIZE, SIZE), PIXEL)


def strongest_period(img: np.ndarray) -> float:
    """Real-space period (A) of the strongest Fourier peak away from the slowest variations."""
    power = power_spectrum(img)
    f = np.fft.fftfreq(SIZE) * SIZE
    radius = np.hypot(f[:, None], f[None, :])
    power[radius < 5] = 0
    return SIZE * PIXEL / float(radius.ravel()[np.argmax(power)])


@pytest.mark.parametrize(("kv", "expected"), [(80, 0.0418), (100, 0.0370), (200, 0.0251), (300, 0.0197)])
def test_wavelengths(kv, expected):
    assert physics.wavelength_angstrom(kv) == pytest.approx(expected, abs=5e-5)


def test_interaction_constant_is_relativistic():
    # Kirkland (2010), table: sigma = 0.00072884 rad/(V A) at 200 kV; the non-relativistic pi/(lambda V) is
    # 10 % smaller at 200 kV and goes to it at low voltage.
    assert physics.interaction_constant(200) == pytest.approx(7.2884e-4, rel=2e-3)
    for kv in (1, 80, 300):
        nonrel = math.pi / (physics.wavelength_angstrom(kv) * kv * 1e3)
        assert physics.interaction_constant(kv) > nonrel
    assert physics.interaction_constant(1) == pytest.approx(math.pi / (physics.wavelength_angstrom(1) * 1e3), rel=2e-3)


def test_optics_are_validated_and_scherzer_is_the_textbook_value():
    with pytest.raises(ValueError, match="voltage_kv"):
        Optics(voltage_kv=-80, defocus_angstrom=0, cs_mm=0)
    with pytest.raises(ValueError, match="aperture_mrad"):
        Optics(voltage_kv=80, defocus_angstrom=0, cs_mm=0, aperture_mrad=-1)
    optics = Optics(voltage_kv=200, defocus_angstrom=0, cs_mm=1.0)
    assert optics.scherzer_defocus == pytest.approx(-1.2 * math.sqrt(1e7 * 0.02508), rel=1e-3)  # -601 A


def test_draw_optics_covers_both_regimes():
    rng = np.random.default_rng(0)
    drawn = [physics.draw_optics(rng) for _ in range(400)]
    corrected = [o for o in drawn if o.voltage_kv < 100]
    assert 0.65 < len(corrected) / len(drawn) < 0.85
    assert {o.voltage_kv for o in drawn} == {60.0, 80.0, 200.0, 300.0}
    for o in corrected:
        assert abs(o.cs_mm) <= 0.04 and abs(o.defocus_angstrom) <= 80
    for o in drawn:
        if o.voltage_kv >= 200:
            assert 0.5 <= o.cs_mm <= 1.5
            assert 0.6 <= o.defocus_angstrom / o.scherzer_defocus <= 1.4
    assert all(physics.draw_optics(rng, "uncorrected").voltage_kv >= 200 for _ in range(20))
    with pytest.raises(ValueError, match="regime"):
        physics.draw_optics(rng, "cryo")


def test_ctf_has_the_textbook_envelopes_and_aperture():
    optics = Optics(80, -50.0, 0.01, focal_spread_angstrom=30, convergence_mrad=0.2, aperture_mrad=40)
    k = np.linspace(0, 1.2, 200)
    h = physics.ctf(k, optics)
    lam = optics.wavelength
    np.testing.assert_allclose(np.angle(h[k < 0.9]), -np.angle(np.exp(1j * physics.chi(k[k < 0.9], optics))), atol=1e-9)
    e_t = np.exp(-0.5 * (math.pi * lam * 30) ** 2 * k**4)
    e_s = np.exp(-((math.pi * 2e-4) ** 2) * (-50 * k + 1e5 * lam**2 * k**3) ** 2)
    inside = lam * k <= 0.040
    np.testing.assert_allclose(np.abs(h), e_t * e_s * inside, atol=1e-12)
    assert abs(h[0]) == 1.0 and not inside.all()


def test_scattering_factor_and_potential_integral():
    # f_e(0) of carbon is 2.51 A; the projected potential of one atom integrates to 47.88 V A^2 f_e(0).
    assert float(physics.scattering_factor(6, 0.0)) == pytest.approx(2.51, abs=0.01)
    assert physics.POTENTIAL_PER_SCATTERING_FACTOR == pytest.approx(47.878, abs=0.01)
    f = physics.scattering_factor(42, np.array([0.0, 0.5, 2.0]))
    assert f[0] > f[1] > f[2] > 0 and f[0] > 3 * float(physics.scattering_factor(6, 0.0))
    scene = lattice_scene()
    v = potential_of(scene)
    per_atom = v.sum(dtype=np.float64) * PIXEL**2 / len(scene.z)
    assert per_atom == pytest.approx(physics.POTENTIAL_PER_SCATTERING_FACTOR * 2.5092, rel=1e-4)
    with pytest.raises(ValueError, match="Z = 92"):
        physics.scattering_factor(92, 0.0)


def test_potential_maxima_sit_on_the_recorded_columns():
    """Sub-pixel: the interpolated maximum of V near each column is within 0.05 A of it."""
    scene = lattice_scene(seed=3)
    v = potential_of(scene).astype(np.float64)
    cols = scene.columns_yx_A / PIXEL
    away = np.all((cols > 4) & (cols < SIZE - 5), axis=1)
    errors = []
    for y, x in cols[away]:
        iy, ix = round(y), round(x)
        win = v[iy - 2 : iy + 3, ix - 2 : ix + 3]
        a, b = np.unravel_index(np.argmax(win), win.shape)
        a, b = a + iy - 2, b + ix - 2
        dy = 0.5 * (v[a - 1, b] - v[a + 1, b]) / (v[a - 1, b] - 2 * v[a, b] + v[a + 1, b])
        dx = 0.5 * (v[a, b - 1] - v[a, b + 1]) / (v[a, b - 1] - 2 * v[a, b] + v[a, b + 1])
        errors.append(math.hypot(a + dy - y, b + dx - x) * PIXEL)
    assert len(errors) > 800
    assert max(errors) < 0.05, max(errors)


def test_potential_moves_with_sub_pixel_shifts():
    """Shifting every atom by a fraction of a pixel shifts the potential (Fourier shift), up to 2 % at low k."""
    scene = lattice_scene(seed=4)
    shift = np.array([0.3, 0.45])
    v = potential_of(scene)
    moved = physics.projected_potential(scene.atoms_yx_A + shift * PIXEL, scene.z, (SIZE, SIZE), PIXEL)
    fy, fx = physics.frequencies((SIZE, SIZE), 1.0)
    expected = np.fft.fft2(v) * np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1]))
    err = np.abs(np.fft.fft2(moved) - expected) ** 2
    ref = np.abs(expected) ** 2
    low = np.hypot(fy, fx) < 0.2
    assert math.sqrt(err[low].sum() / ref[low].sum()) < 0.02


@pytest.mark.parametrize(
    ("material", "period"), [("graphene", 2.46 * math.sqrt(3) / 2), ("mos2", 3.16 * math.sqrt(3) / 2)]
)
def test_lattice_period_from_the_fft_peak(material, period):
    """Image of a perfect lattice through a corrected 80 kV lens: the strongest peak is the {100} spacing."""
    optics = Optics(80, -40.0, 0.01, focal_spread_angstrom=20, convergence_mrad=0.1, aperture_mrad=50)
    img = physics.image(potential_of(lattice_scene(material)), optics, PIXEL)
    assert strongest_period(img) == pytest.approx(period, rel=0.03)


def test_square_lattice_has_its_own_period():
    v = potential_of(lattice_scene("srtio3"))
    # Sr, TiO and O columns on a square lattice: every column is in phase in the {200} reflection, a / 2.
    assert strongest_period(v) == pytest.approx(3.905 / 2, rel=0.03)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weak_phase_contrast_of_graphene_at_80_kv_is_a_few_per_cent(seed):
    rng = np.random.default_rng(seed)
    optics = physics.draw_optics(rng, "corrected")
    img = physics.image(potential_of(lattice_scene(seed=seed)), optics, PIXEL)
    assert abs(float(img.mean()) - 1) < 0.01
    assert 0.005 < float(img.std()) < 0.08, (optics, img.std())
    # A heavier lattice (Mo, S2 columns) gives more contrast through the same lens.
    heavy = physics.image(potential_of(lattice_scene("mos2", seed=seed)), optics, PIXEL)
    assert heavy.std() > img.std()


def test_vacuum_images_as_one_and_the_exit_wave_is_a_pure_phase():
    flat = np.zeros((64, 64), np.float32)
    img = physics.image(flat, Optics(300, -500, 1.2, 40, 0.3, 15), 0.1, detector_blur_px=0.7)
    np.testing.assert_allclose(img, 1.0, atol=1e-5)
    wave = physics.exit_wave(potential_of(lattice_scene()), 80)
    np.testing.assert_allclose(np.abs(wave), 1.0, atol=1e-5)


def test_contrast_reverses_with_defocus():
    """Weak phase, Cs = 0: underfocus (sin chi < 0 in the passband) gives dark atoms, overfocus bright ones."""
    v = potential_of(lattice_scene(seed=5))
    for df, sign in ((-50.0, -1), (50.0, 1)):
        img = physics.image(v, Optics(80, df, 0.0, aperture_mrad=28), PIXEL, detector_blur_px=None)
        corr = np.corrcoef(img.ravel(), v.ravel())[0, 1]
        assert sign * corr > 0.5, (df, corr)


def test_ctf_zeros_are_where_sin_chi_vanishes():
    """Amorphous carbon through an uncorrected 200 kV lens, coherent, no aperture: the power spectrum divided by
    |f_e|^2 follows sin^2 chi, with its minima (Thon rings) at the zeros of chi = -n pi."""
    optics = Optics(200, -1000.0, 0.5)
    ratio = 0.0
    for seed in range(4):
        scene = scenes.draw_scene(np.random.default_rng(seed), SIZE, PIXEL, kind="amorphous")
        img = physics.image(potential_of(scene), optics, PIXEL, detector_blur_px=None)
        ratio = ratio + radial_mean(np.abs(np.fft.fft2(img - img.mean())) ** 2)
    k = np.arange(len(ratio)) / (SIZE * PIXEL)
    keep = (k > 0.05) & (k < 0.8)
    ratio = ratio[keep] / physics.scattering_factor(6, k[keep]) ** 2
    sin2 = np.sin(physics.chi(k[keep], optics)) ** 2
    assert np.corrcoef(ratio, sin2)[0, 1] > 0.8
    assert ratio[sin2 < 0.05].mean() < 0.3 * ratio[sin2 > 0.9].mean()
    # The zeros of sin chi (chi a multiple of pi), where they are at least 4 bins apart: a local minimum of the
    # measured ratio within one bin of each.
    fine = np.linspace(0.05, 0.8, 20001)
    turns = np.floor(physics.chi(fine, optics) / math.pi)
    zeros = fine[1:][np.diff(turns) != 0]
    bin_k = 1 / (SIZE * PIXEL)
    gaps = np.diff(np.concatenate([[0.0], zeros, [1.0]]))
    isolated = zeros[(gaps[:-1] >= 4 * bin_k) & (gaps[1:] >= 4 * bin_k)]
    assert len(isolated) >= 3
    for k_zero in isolated:
        near = np.abs(k[keep] - k_zero) <= 2 * bin_k
        k_min = k[keep][near][np.argmin(ratio[near])]
        assert abs(k_min - k_zero) <= 1.01 * bin_k, (k_min, k_zero)


def test_detector_mtf():
    mtf = physics.detector_mtf((64, 64))
    assert mtf[0, 0] == 1.0
    assert mtf[0, 32] == pytest.approx(2 / math.pi)  # a pixel aperture at Nyquist
    blurred = physics.detector_mtf((64, 64), 1.0)
    assert blurred[0, 16] == pytest.approx(mtf[0, 16] * math.exp(-2 * math.pi**2 / 16))


@pytest.mark.parametrize("size", [96, 128, 288, 375])
def test_the_image_transfer_is_the_ctf_at_every_frequency(size):
    """physics.image's mirrored quadrant equals ctf evaluated on the whole fft2 grid, also for sizes where
    fftfreq(n) * n is not exact in floating point (96, 288 and 375 are padded sizes the generator uses)."""
    optics = Optics(300, -722.5, 1.27, 40, 0.3, 12)
    ky, kx = physics.frequencies((size, size), 0.2)
    np.testing.assert_allclose(
        physics._transfer((size, size), 0.2, optics), physics.ctf(np.hypot(ky, kx), optics), atol=1e-6
    )
