"""download.source abtem: abTEM's multislice against the fast generator (the cross-check), structure files, the
checks before anything is written, resumable chunks, and the task end to end."""

from __future__ import annotations

import math
import sys

import h5py
import numpy as np
import pytest
from support import one_error, power_spectrum, radial_mean, run_here, task_paths

from emdenoise.data.simulate import abtem_source, physics, scenes, writer
from emdenoise.data.simulate.physics import Optics
from emdenoise.errors import InputError

# The cross-check's optics: aberration-corrected 80 kV and uncorrected 300 kV, envelopes and apertures on.
CORRECTED = Optics(80, -60.0, 0.02, focal_spread_angstrom=20, convergence_mrad=0.1, aperture_mrad=50)
UNCORRECTED = Optics(300, -500.0, 1.2, focal_spread_angstrom=40, convergence_mrad=0.2, aperture_mrad=20)
# Tolerances of the cross-check (README, "abTEM multislice"): measured differences are 0.0005, 0.5 % and 2 %.
MEAN_ATOL = 0.002
STD_RTOL = 0.03
PEAK_RATIO_RTOL = 0.10


def both(scene: scenes.Scene, optics: Optics) -> tuple[np.ndarray, np.ndarray]:
    """(abTEM, fast generator) clean images of the same atoms through the same optics, ideal detector."""
    n, pixel = scene.size_px, scene.pixel_size
    fast = physics.image(physics.projected_potential(scene.atoms_yx_A, scene.z, (n, n), pixel), optics, pixel)
    return abtem_source.render_scene(scene, optics), fast


def peak_ratio(img: np.ndarray, pixel: float, material: scenes.Material) -> float:
    """Power in the first-order lattice ring ({100}, d = a sqrt(3) / 2) over that of the second order ({110},
    d = a / 2), each a ring of +-6 % in |k|."""
    power = power_spectrum(img)
    f = np.fft.fftfreq(img.shape[0], d=pixel)
    k = np.hypot(f[:, None], f[None, :])
    first, second = 2 / (material.a * math.sqrt(3)), 2 / material.a
    return float(power[abs(k - first) < 0.06 * first].sum() / power[abs(k - second) < 0.06 * second].sum())


# -- conventions ----------------------------------------------------------------------------------------------
@pytest.mark.extra("abtem")
@pytest.mark.parametrize("optics", [CORRECTED, UNCORRECTED, Optics(200, 300.0, -0.5, 10, 0.5, 0)])
def test_abtem_ctf_is_the_physics_ctf(optics):
    """abtem_source.ctf maps physics.Optics onto abTEM's conventions (defocus sign, focal spread 1/e vs sigma,
    angular spread, hard aperture): applied to a point wave, its transfer equals physics.ctf."""
    abtem = abtem_source.require()
    n, pixel = 64, 0.1
    delta = np.zeros((n, n), np.complex64)
    delta[0, 0] = 1
    wave = abtem.Waves(delta, energy=optics.voltage_kv * 1e3, sampling=pixel)
    transfer = np.fft.fft2(np.asarray(wave.apply_ctf(abtem_source.ctf(optics)).array))
    ky, kx = physics.frequencies((n, n), pixel)
    np.testing.assert_allclose(transfer, physics.ctf(np.hypot(ky, kx), optics), atol=2e-5)


def test_missing_abtem_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(abtem_source, "_ABTEM", None)
    monkeypatch.setitem(sys.modules, "abtem", None)  # what an environment without the extra looks like
    with pytest.raises(InputError) as err:
        abtem_source.require("p.yaml")
    assert err.value.message.startswith("p.yaml: download.source: ")
    assert "pip install 'emdenoise[abtem]'" in err.value.message and "\n" not in err.value.message


# -- the cross-check ------------------------------------------------------------------------------------------
@pytest.mark.extra("abtem")
@pytest.mark.slow
@pytest.mark.parametrize(
    "optics,size", [(CORRECTED, 128), (UNCORRECTED, 96)], ids=["80kV-corrected-128px", "300kV-uncorrected-96px"]
)
def test_abtem_and_the_fast_generator_agree_on_a_graphene_lattice(optics, size):
    """Same atoms, same optics: mean and standard deviation of the clean image, and the ratio of first- to
    second-order lattice peaks, within the stated tolerances (96 px: a size where fftfreq(n) * n is inexact)."""
    scene = scenes.draw_scene(np.random.default_rng(3), size, 0.15, "graphene", kind="lattice")
    multislice, fast = both(scene, optics)
    assert abs(multislice.mean() - fast.mean()) <= MEAN_ATOL
    assert fast.std() > 0.01  # weak-phase contrast of a few per cent: there is something to compare
    assert abs(multislice.std() / fast.std() - 1) <= STD_RTOL
    ratios = [peak_ratio(img, scene.pixel_size, scenes.MATERIALS["graphene"]) for img in (multislice, fast)]
    assert abs(ratios[0] / ratios[1] - 1) <= PEAK_RATIO_RTOL, ratios
    assert np.corrcoef(multislice.ravel(), fast.ravel())[0, 1] > 0.99


@pytest.mark.extra("abtem")
@pytest.mark.slow
def test_abtem_and_the_fast_generator_put_the_ctf_zeros_in_the_same_place():
    """Amorphous carbon through an uncorrected 200 kV lens: the first Thon-ring minima of both images' power
    spectra lie within one frequency bin of each other and of the zeros of sin chi."""
    size, pixel = 256, 0.2
    optics = Optics(200, -1000.0, 0.5)
    spectra = [0.0, 0.0]
    for seed in range(2):
        scene = scenes.draw_scene(np.random.default_rng(seed), size, pixel, kind="amorphous")
        for i, img in enumerate(both(scene, optics)):
            spectra[i] = spectra[i] + radial_mean(np.abs(np.fft.fft2(img - img.mean())) ** 2)
    bin_k = 1 / (size * pixel)
    k = np.arange(len(spectra[0])) * bin_k
    fine = np.linspace(0.05, 0.8, 20001)
    turns = np.floor(physics.chi(fine, optics) / math.pi)
    zeros = fine[1:][np.diff(turns) != 0]
    gaps = np.diff(np.concatenate([[0.0], zeros, [1.0]]))
    isolated = zeros[(gaps[:-1] >= 4 * bin_k) & (gaps[1:] >= 4 * bin_k)][:3]
    assert len(isolated) == 3
    for k_zero in isolated:
        near = np.abs(k - k_zero) <= 2 * bin_k
        minima = [k[near][np.argmin(spectrum[near])] for spectrum in spectra]
        assert abs(minima[0] - minima[1]) <= 1.01 * bin_k, (minima, k_zero)
        assert abs(minima[0] - k_zero) <= 1.01 * bin_k, (minima, k_zero)


# -- structure files ------------------------------------------------------------------------------------------
@pytest.fixture
def graphene_file(tmp_path):
    from ase.build import graphene

    def write(fmt: str, name: str):
        path = tmp_path / name
        graphene(a=2.46, vacuum=5.0).write(path, format=fmt)
        return path

    return write


@pytest.mark.extra("abtem")
@pytest.mark.parametrize("fmt,name", [("extxyz", "g.extxyz"), ("cif", "g.cif"), ("vasp", "POSCAR")])
def test_a_structure_file_is_read_and_repeated_over_the_field(graphene_file, fmt, name):
    structure = abtem_source.read_structure(graphene_file(fmt, name))
    assert structure.nearest_column == pytest.approx(2.46 / math.sqrt(3), rel=1e-3)  # C-C 1.42 A
    size, pixel = 96, 0.2
    scene = abtem_source.structure_scene(structure, size, pixel, np.random.default_rng(1))
    yx = scene.columns_yx_A / pixel
    assert np.all((yx >= -0.5) & (yx < size - 0.5))
    expected = 2 * (size * pixel) ** 2 / (2.46**2 * math.sqrt(3) / 2)  # two columns per hexagonal cell
    assert abs(len(yx) / expected - 1) < 0.05
    d = np.linalg.norm(yx[:, None] - yx[None], axis=-1) * pixel
    assert d[d > 0].min() == pytest.approx(1.42, abs=0.01)
    assert set(scene.z.tolist()) == {6} and not scene.columns_vacant.any()
    other = abtem_source.structure_scene(structure, size, pixel, np.random.default_rng(2))
    assert not np.allclose(other.columns_yx_A[:5], scene.columns_yx_A[:5])  # a new view per image


@pytest.mark.extra("abtem")
def test_bad_structure_files_are_one_line_errors(tmp_path, graphene_file):
    from ase import Atoms

    garbage = tmp_path / "garbage.cif"
    garbage.write_text("this is not a crystal\n")
    molecule = tmp_path / "molecule.xyz"
    Atoms("CO", positions=[(0, 0, 0), (0, 0, 1.1)]).write(molecule, format="xyz")  # no cell
    for path, words in (
        (tmp_path / "missing.cif", "existing structure file"),
        (garbage, "ASE can read"),
        (molecule, "periodic in x and y"),
    ):
        with pytest.raises(InputError) as err:
            abtem_source.read_structure(path, "p.yaml")
        assert err.value.message.startswith(f"p.yaml: download.structure: {path}: "), err.value.message
        assert words in err.value.message and "\n" not in err.value.message


def test_a_pixel_that_aliases_the_lattice_is_refused():
    abtem_source.check_material("graphene", 0.7, "p.yaml", "download.pixel_size_max")  # 1.42 / 2: resolved
    with pytest.raises(InputError, match="aliases graphene"):
        abtem_source.check_material("graphene", 0.8, "p.yaml", "download.pixel_size_max")
    with pytest.raises(InputError, match="aliases srtio3"):
        abtem_source.check_material("srtio3", 1.0, "p.yaml", "download.pixel_size_max")
    # mixed: every material must be resolved; graphene, the finest, is the one named
    with pytest.raises(InputError, match="aliases graphene"):
        abtem_source.check_material("mixed", 0.8, "p.yaml", "download.pixel_size_max")
    abtem_source.check_material("mixed", 0.7, "p.yaml", "download.pixel_size_max")


# -- resumable chunks -----------------------------------------------------------------------------------------
def test_a_rerun_reuses_the_finished_chunks(tmp_path):
    """write_dataset keeps each finished chunk in resume_dir and a rerun takes it instead of making it again
    (shown with the fast renderer and a chunk whose images were replaced)."""
    chunks = tmp_path / "chunks"
    settings = writer.GeneratorSettings.of(seed=0, train_images=3, test_images=2, image_size=32)
    writer.write_dataset(tmp_path / "a", settings, workers=1, resume_dir=chunks)
    names = sorted(p.name for p in chunks.iterdir())
    assert names == ["test-0000000-0000002.npz", "train-0000000-0000002.npz", "train-0000002-0000003.npz"]
    first = writer._load_chunk(chunks / names[1])
    assert first is not None
    noisy, clean, attrs, atoms = first
    writer._save_chunk(chunks / names[1], (noisy, np.full_like(clean, 7.0), attrs, atoms))
    writer.write_dataset(tmp_path / "b", settings, workers=1, resume_dir=chunks)
    with (
        h5py.File(tmp_path / "a/train/graphene_img_clean.h5") as a,
        h5py.File(tmp_path / "b/train/graphene_img_clean.h5") as b,
    ):
        assert np.all(b["images"][:2] == 7.0)
        np.testing.assert_array_equal(a["images"][2:], b["images"][2:])
        np.testing.assert_array_equal(a["atom_yx"][:], b["atom_yx"][:])
        np.testing.assert_array_equal(a["atom_offsets"][:], b["atom_offsets"][:])


# -- the task ---------------------------------------------------------------------------------------------------
SMALL = ("download.source=abtem", "download.train_images=2", "download.test_images=1", "download.image_size=64")


@pytest.mark.extra("abtem")
@pytest.mark.slow
def test_download_from_abtem_of_a_structure_file(tmp_path, capsys, graphene_file):
    paths = task_paths(tmp_path, "download")
    structure = graphene_file("cif", "graphene.cif")
    sets = (*SMALL, f"download.structure={structure}", "download.workers=1", "download.abtem_oversampling=1")
    code, err = run_here(capsys, "download", paths, *sets)
    assert code == 0, err
    raw = paths["raw_data_dir"]
    assert not (raw / ".abtem-chunks").exists()
    with h5py.File(raw / "train/graphene_img_clean.h5") as f:
        assert f.attrs["generator"] == "emdenoise.data.abtem_source"  # a stable identifier: the name before the layout
        assert f.attrs["material"] == "structure:graphene.cif"
        assert f.attrs["abtem_version"] == abtem_source.abtem_version()
        clean = f["images"][..., 0]
        assert f["atom_offsets"][-1] == len(f["atom_z"]) > 0 and set(f["atom_z"][:].tolist()) == {6}
    assert 0.9 < clean.mean() < 1.1 and clean.std() > 0.005
    before = (raw / "MANIFEST.json").read_bytes()
    code, err = run_here(capsys, "download", paths, *sets)
    assert code == 0 and "nothing to generate" in err
    assert (raw / "MANIFEST.json").read_bytes() == before


@pytest.mark.extra("abtem")
@pytest.mark.parametrize(
    "sets,words",
    [
        (("download.pixel_size_min=0.8", "download.pixel_size_max=0.9"), ("download.pixel_size_max", "aliases")),
        (("download.structure=/nonexistent/graphene.cif",), ("download.structure", "existing structure file")),
    ],
)
def test_bad_abtem_settings_stop_before_anything_is_written(tmp_path, capsys, sets, words):
    paths = task_paths(tmp_path, "download")
    code, err = run_here(capsys, "download", paths, *SMALL, *sets)
    one_error(code, err, 2, *words)
    assert not any(p.is_file() for p in paths["raw_data_dir"].rglob("*"))


def test_a_structure_needs_the_abtem_source(tmp_path, capsys):
    paths = task_paths(tmp_path, "download")
    code, err = run_here(capsys, "download", paths, "download.source=synthetic", "download.structure=g.cif")
    one_error(code, err, 2, "download.structure", "unless download.source is abtem")


def test_download_without_abtem_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(abtem_source, "_ABTEM", None)
    monkeypatch.setitem(sys.modules, "abtem", None)
    paths = task_paths(tmp_path, "download")
    code, err = run_here(capsys, "download", paths, *SMALL)
    one_error(code, err, 2, "download.source", "pip install 'emdenoise[abtem]'")


@pytest.mark.extra("abtem")
@pytest.mark.slow
def test_abtem_files_are_the_same_bytes_whatever_the_worker_count(tmp_path):
    settings = writer.GeneratorSettings.of(
        seed=3, train_images=2, test_images=1, image_size=32, renderer="abtem", oversampling=1
    )
    written = [writer.write_dataset(tmp_path / f"w{w}", settings, workers=w) for w in (1, 2)]
    for one, two in zip(*written):
        assert one.read_bytes() == two.read_bytes(), one
