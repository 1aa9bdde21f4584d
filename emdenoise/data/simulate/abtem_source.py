"""``download.source: abtem``: multislice images from abTEM (optional extra ``emdenoise[abtem]``, GPL-3.0).

The fast generator (:mod:`emdenoise.data.simulate.pairs`) images a phase object through the lens formulas of
:mod:`emdenoise.data.simulate.physics`. This source takes the same specimens (the scenes of
:mod:`emdenoise.data.simulate.scenes`,
drawn from the same per-image seeds, or the atoms of a structure file the user gives, ``download.structure``)
and lets abTEM do the scattering: Lobato projected potentials of every atom, multislice propagation through
slices of ``SLICE_THICKNESS_ANGSTROM``, abTEM's contrast transfer function with the same optics. Only the
detector and everything after it (MTF, beam profile, Poisson shot noise, dead pixels) are the fast generator's,
so the two sources differ exactly in the physics of the specimen and the lens.

Conventions (checked by ``tests/data/test_abtem_source.py``):

- abTEM indexes its arrays (x, y); emdenoise (row, column) = (y, x). :func:`render` transposes.
- abTEM's ``defocus`` is ``-C10``: positive is underfocus. :mod:`emdenoise.data.simulate.physics` uses ``C10`` itself
  (negative is underfocus), so ``defocus = -optics.defocus_angstrom``.
- abTEM's ``focal_spread`` is the 1/e half-width of the focal distribution; physics' ``focal_spread_angstrom``
  is its standard deviation: ``focal_spread = sqrt(2) * focal_spread_angstrom``. abTEM's ``angular_spread``
  (mrad) is physics' ``convergence_mrad`` as it is (both give ``exp(-(pi alpha)^2 (df k + Cs lambda^2 k^3)^2)``).
- The aperture is hard (``soft=False``), as in physics.
- The field is periodic in both codes (atoms near one edge act on the other), and the scenes put atoms only
  inside it.

A structure file (``download.structure``: anything ``ase.io.read`` reads: CIF, extxyz, POSCAR, ...) is viewed
along z (the beam): its cell must be periodic in x and y with the third cell vector along z; it is repeated to
cover the field, turned by a random angle about z and shifted at random for each image (a new view of the same
crystal), and its projected columns (atoms closer than ``COLUMN_TOLERANCE_ANGSTROM`` in x and y) are the
recorded atom columns.

abTEM is imported lazily (:func:`require`), configured for reproducible CPU work: numpy's FFT (FFTW's measured
plans may differ between runs), no lazy dask graphs, dask's synchronous scheduler, no progress bars of its own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import fft as sfft

from emdenoise.data.simulate import physics
from emdenoise.data.simulate.scenes import MATERIALS, MIXED, Scene
from emdenoise.errors import InputError
from emdenoise.outputs import sha256_file

INSTALL_HINT = "pip install 'emdenoise[abtem]'"
SLICE_THICKNESS_ANGSTROM = 1.0
OVERSAMPLING = 2  # abTEM's grid is this many times finer than the image's
BAND_LIMIT = 2 / 3  # of the image's Nyquist frequency: the wave is cut there (physics.projected_potential's)
# Vertical spacing of the atoms stacked in one column of a scene (A): the S-S distance of MoS2, half the
# SrTiO3 cell (Sr-Sr 3.905 A, Ti and O alternating at 1.95 A); a graphene column holds one atom.
COLUMN_SPACING_ANGSTROM = {"graphene": 3.35, "mos2": 3.17, "srtio3": 3.905 / 2}
COLUMN_TOLERANCE_ANGSTROM = 0.1
VACUUM_ANGSTROM = 2.0  # above and below the specimen in the potential's cell
MAX_STRUCTURE_ATOMS = 2_000_000  # atoms of a tiled structure in one field

_ABTEM: Any = None


def require(where: Any = "parameters") -> Any:
    """Import and configure abTEM (once per process); a missing abTEM is a one-line :class:`InputError`."""
    global _ABTEM
    if _ABTEM is not None:
        return _ABTEM
    try:
        import abtem
        import dask
    except ImportError as exc:
        raise InputError.at(
            where, "download.source", f"abtem needs abTEM and ASE, which are not installed ({exc}): {INSTALL_HINT}"
        ) from None
    abtem.config.set(
        {
            "device": "cpu",
            "fft": "numpy",
            "precision": "float32",
            "dask.lazy": False,
            "diagnostics.progress_bar": False,
            "diagnostics.task_progress": False,
        }
    )
    dask.config.set(scheduler="synchronous")
    _ABTEM = abtem
    return abtem


def abtem_version() -> str:
    return str(require().__version__)


# --------------------------------------------------------------------------------------------------------------
# Optics and images
# --------------------------------------------------------------------------------------------------------------


def ctf(optics: physics.Optics) -> Any:
    """abTEM's CTF for ``optics`` (the conventions of the module docstring)."""
    abtem = require()
    return abtem.CTF(
        semiangle_cutoff=optics.aperture_mrad if optics.aperture_mrad > 0 else np.inf,
        soft=False,
        focal_spread=math.sqrt(2) * optics.focal_spread_angstrom,
        angular_spread=optics.convergence_mrad,
        energy=optics.voltage_kv * 1e3,
        defocus=-optics.defocus_angstrom,
        Cs=optics.cs_mm * 1e7,
    )


def column_heights(atoms_yx_A: np.ndarray, material: str) -> np.ndarray:
    """Heights (A, about 0) of scene atoms: the atoms sharing one position (a column) stacked symmetrically
    about 0 at the material's spacing, single atoms at 0."""
    yx = np.asarray(atoms_yx_A, np.float64).reshape(-1, 2)
    heights = np.zeros(len(yx))
    if len(yx) == 0:
        return heights
    key = np.round(yx / 1e-6).astype(np.int64)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(yx), np.int64)
    rank[order] = np.arange(len(yx)) - np.repeat(starts, counts)
    n = counts[inverse]
    return (rank - (n - 1) / 2) * COLUMN_SPACING_ANGSTROM.get(material, 2.0)


def render(
    atoms_yx_A: np.ndarray,
    z: np.ndarray,
    heights: np.ndarray,
    size_px: int,
    pixel_size: float,
    optics: physics.Optics,
    *,
    detector_blur_px: float | None = 0.0,
    oversampling: int = OVERSAMPLING,
) -> np.ndarray:
    """The clean image (float32, size_px x size_px, vacuum about 1) of atoms at (y, x) A (pixel [r, c] centred at
    (r, c) * pixel_size) and ``heights`` (A) through abTEM's multislice and CTF, then the detector.

    abTEM runs on a grid ``oversampling`` times finer than the image (see the module docstring); the wave is cut
    at the fast generator's band limit, 2/3 of the image's Nyquist frequency. The detector is that of
    :func:`emdenoise.data.simulate.physics.image`: ``detector_blur_px`` (image pixels) the Gaussian spread of
    :func:`~emdenoise.data.simulate.physics.detector_mtf` times the pixel aperture; None: an ideal detector (the fine
    intensity sampled at the pixel centres).
    """
    abtem = require()
    from ase import Atoms

    s = int(oversampling)
    fine = size_px * s
    extent = size_px * pixel_size
    yx = np.asarray(atoms_yx_A, np.float64).reshape(-1, 2)
    h = np.asarray(heights, np.float64).reshape(-1)
    # The cell: the specimen's mid-plane (height 0) in the middle of a slice, at least VACUUM_ANGSTROM of vacuum
    # above and below. abTEM transmits each slice at its entrance and then propagates the wave through it, so the
    # exit wave (at the cell's bottom) is the mid-plane slice's wave propagated by pad + t / 2.
    t = SLICE_THICKNESS_ANGSTROM
    reach = float(np.abs(h).max()) if len(h) else 0.0
    pad = math.ceil((reach + VACUUM_ANGSTROM) / t) * t + t / 2
    thickness = 2 * pad
    positions = np.stack([yx[:, 1], yx[:, 0], h + pad], axis=1) if len(yx) else np.zeros((0, 3))
    atoms = Atoms(numbers=np.asarray(z, np.int64), positions=positions, cell=[extent, extent, thickness], pbc=True)
    atoms.wrap()
    potential = abtem.Potential(
        atoms,
        gpts=(fine, fine),
        slice_thickness=t,
        parametrization="lobato",
        projection="infinite",
    )
    band_limit_mrad = 1e3 * optics.wavelength * BAND_LIMIT * 0.5 / pixel_size
    aperture = min(optics.aperture_mrad, band_limit_mrad) if optics.aperture_mrad > 0 else band_limit_mrad
    # The lens images the mid-plane: the free propagation to the exit plane is a defocus (C10) already applied.
    propagated = pad + t / 2
    lens = dataclasses.replace(optics, aperture_mrad=aperture, defocus_angstrom=optics.defocus_angstrom - propagated)
    wave = abtem.PlaneWave(energy=optics.voltage_kv * 1e3)
    measured = wave.multislice(potential).apply_ctf(ctf(lens)).intensity()
    if hasattr(measured, "compute"):
        measured = measured.compute()
    intensity = np.ascontiguousarray(np.asarray(measured.array, np.float32).T)  # (x, y) -> (y, x)
    if detector_blur_px is not None:
        fy, fx = physics.frequencies((fine, fine), 1.0 / s, real=True)  # cycles per image pixel
        mtf = np.sinc(fy) * np.sinc(fx) * np.exp(-2 * np.pi**2 * detector_blur_px**2 * (fy**2 + fx**2))
        spectrum = sfft.rfft2(intensity, workers=1) * mtf.astype(np.float32)
        intensity = sfft.irfft2(spectrum, s=(fine, fine), workers=1)
    return np.ascontiguousarray(intensity[::s, ::s], dtype=np.float32)


def render_scene(
    scene: Scene, optics: physics.Optics, *, detector_blur_px: float | None = 0.0, oversampling: int = OVERSAMPLING
) -> np.ndarray:
    """:func:`render` of a scene of :mod:`emdenoise.data.simulate.scenes` (or of :func:`structure_scene`: its
    ``info["heights_A"]`` are the atoms' heights; otherwise :func:`column_heights`)."""
    heights = scene.info.get("heights_A")
    if heights is None:
        heights = column_heights(scene.atoms_yx_A, scene.material)
    return render(
        scene.atoms_yx_A,
        scene.z,
        heights,
        scene.size_px,
        scene.pixel_size,
        optics,
        detector_blur_px=detector_blur_px,
        oversampling=oversampling,
    )


# --------------------------------------------------------------------------------------------------------------
# Structure files
# --------------------------------------------------------------------------------------------------------------


class Structure:
    """A crystal read from a file: its in-plane lattice (rows a, b as (y, x) A), the atoms of one cell
    ((y, x) A, heights A, atomic numbers) and the shortest distance between two projected columns."""

    def __init__(self, path: Path, lattice_yx: np.ndarray, yx: np.ndarray, heights: np.ndarray, z: np.ndarray):
        self.path = path
        self.lattice_yx = lattice_yx
        self.yx = yx
        self.heights = heights
        self.z = z
        self.nearest_column = _nearest_column(yx, lattice_yx)

    @property
    def name(self) -> str:
        return self.path.name


def read_structure(path: str | Path, where: Any = "parameters") -> Structure:
    """Read ``download.structure`` with ASE; anything unusable is a one-line :class:`InputError`."""
    require(where)
    import ase.io

    path = Path(path).expanduser()

    def bad(expected: str) -> InputError:
        return InputError.at(where, "download.structure", f"{path}: {expected}")

    if not path.is_file():
        raise bad("expected an existing structure file (CIF, extxyz, POSCAR ... anything ase.io.read reads)")
    try:
        atoms = ase.io.read(str(path))
    except Exception as exc:  # ASE raises anything from its many readers
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise bad(f"expected a structure file ASE can read, got an error: {first[:200]}") from None
    if isinstance(atoms, list):
        atoms = atoms[-1]
    if len(atoms) == 0:
        raise bad("expected at least one atom, the file has none")
    cell = np.asarray(atoms.cell.array, np.float64)
    if not np.all(atoms.cell.lengths()[:2] > 0.5):
        raise bad("expected a cell periodic in x and y (two in-plane cell vectors of at least 0.5 A)")
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6:
        raise bad("expected the first two cell vectors in the x-y plane (the beam runs along z)")
    area = abs(cell[0, 0] * cell[1, 1] - cell[0, 1] * cell[1, 0])
    if area < 0.25:
        raise bad("expected a cell with an in-plane area of at least 0.25 A^2")
    numbers = np.asarray(atoms.numbers, np.int64)
    if numbers.min() < 1 or numbers.max() > 98:
        raise bad("expected elements with atomic numbers 1-98")
    pos = np.asarray(atoms.positions, np.float64)
    if not np.all(np.isfinite(pos)):
        raise bad("expected finite atom positions")
    lattice_yx = cell[:2, 1::-1].copy()  # rows a, b as (y, x)
    frac = np.linalg.solve(cell[:2, :2].T, pos[:, :2].T).T % 1.0  # in-plane fractional coordinates
    yx = frac @ lattice_yx
    return Structure(path, lattice_yx, yx, pos[:, 2] - pos[:, 2].mean(), numbers.astype(np.uint8))


@functools.lru_cache(maxsize=4)
def cached_structure(path: str) -> Structure:
    """:func:`read_structure` once per process (the workers read the file the parent checked)."""
    return read_structure(path)


def _nearest_column(yx: np.ndarray, lattice_yx: np.ndarray) -> float:
    """Shortest projected distance between two distinct columns of a periodic crystal (inf: one column)."""
    shifts = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], np.float64) @ lattice_yx
    d = np.linalg.norm(yx[:, None, None, :] - yx[None, :, None, :] - shifts[None, None], axis=-1)
    d = d[d > COLUMN_TOLERANCE_ANGSTROM]
    return float(d.min()) if d.size else math.inf


def tile_structure(structure: Structure, size_px: int, pixel_size: float, rng: np.random.Generator) -> dict:
    """The atoms of ``structure`` over a field of ``size_px`` pixels, turned by a random angle about z and
    shifted at random: ``atoms_yx_A``, ``heights``, ``z`` and the projected columns ``columns_yx_A``,
    ``columns_z`` (the heaviest element of each), all inside ``[-0.5, size_px - 0.5) * pixel_size``."""
    extent = size_px * pixel_size
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    lattice = structure.lattice_yx @ rot
    origin = rng.uniform(0, 1, 2) @ lattice
    lo = -0.5 * pixel_size
    corners = np.array([[lo, lo], [lo, extent], [extent, lo], [extent, extent]]) - origin
    frac = corners @ np.linalg.inv(lattice)
    i = np.arange(math.floor(frac[:, 0].min()) - 1, math.ceil(frac[:, 0].max()) + 1)
    j = np.arange(math.floor(frac[:, 1].min()) - 1, math.ceil(frac[:, 1].max()) + 1)
    if len(i) * len(j) * len(structure.z) > MAX_STRUCTURE_ATOMS:
        raise InputError.at(
            "parameters",
            "download.structure",
            f"{structure.path}: a field of {extent:.0f} A holds more than {MAX_STRUCTURE_ATOMS} of its atoms: "
            f"expected a smaller download.image_size or a smaller cell",
        )
    ij = np.stack(np.meshgrid(i, j, indexing="ij"), -1).reshape(-1, 1, 2).astype(np.float64)
    cell_atoms = (structure.yx @ rot)[None] + (ij @ lattice) + origin  # (cells, atoms, 2)
    yx = cell_atoms.reshape(-1, 2)
    inside = np.all((yx >= lo) & (yx < extent + lo), axis=1)
    n_cells = len(ij)
    heights = np.tile(structure.heights, n_cells)[inside]
    z = np.tile(structure.z, n_cells)[inside]
    yx = yx[inside]
    key = np.round(yx / COLUMN_TOLERANCE_ANGSTROM).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    heaviest = np.zeros(len(first), np.uint8)
    np.maximum.at(heaviest, inverse.reshape(-1), z)
    return {
        "atoms_yx_A": yx,
        "heights": heights,
        "z": z,
        "columns_yx_A": yx[first],
        "columns_z": heaviest,
        "rotation_deg": math.degrees(theta),
    }


def structure_scene(structure: Structure, size_px: int, pixel_size: float, rng: np.random.Generator) -> Scene:
    """A :class:`~emdenoise.data.simulate.scenes.Scene` of :func:`tile_structure` (no vacancies; the heights in
    ``info["heights_A"]``, the material the file's name)."""
    tiled = tile_structure(structure, size_px, pixel_size, rng)
    return Scene(
        atoms_yx_A=tiled["atoms_yx_A"],
        z=tiled["z"],
        columns_yx_A=tiled["columns_yx_A"],
        columns_z=tiled["columns_z"],
        columns_vacant=np.zeros(len(tiled["columns_z"]), bool),
        size_px=int(size_px),
        pixel_size=float(pixel_size),
        material=structure.name,
        info={
            "structure": structure.name,
            "rotation_deg": tiled["rotation_deg"],
            "heights_A": tiled["heights"],
            "n_grains": 1,
            "vacancies": 0,
            "contamination_atoms": 0,
            "material_fraction": 1.0,
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Checks of the settings (before anything is written)
# --------------------------------------------------------------------------------------------------------------


def check_sampling(pixel_size: float, nearest_column: float, what: str, where: Any, field: str) -> None:
    """A pixel larger than half the shortest projected column distance cannot resolve the lattice: it aliases."""
    if not pixel_size > 0:
        raise InputError.at(where, field, f"expected a pixel size > 0 A, got {pixel_size}")
    if pixel_size > nearest_column / 2:
        raise InputError.at(
            where,
            field,
            f"a pixel size of {pixel_size:g} A aliases {what}: its closest columns are {nearest_column:.3g} A apart, "
            f"so the pixel size must be at most {nearest_column / 2:.3g} A",
        )


def check_material(material: str, max_pixel_size: float, where: Any, field: str) -> None:
    """The largest pixel size the generator may draw must resolve ``material`` (each of them, for ``mixed``)."""
    for name in MATERIALS if material == MIXED else (material,):
        check_sampling(max_pixel_size, MATERIALS[name].nearest_neighbour, name, where, field)


def settings(params: Any, where: Any = "parameters") -> dict:
    """Check the download parameters of an abtem run before anything is made, and return what identifies it
    beyond the generator's own settings: ``structure`` (the resolved path, or ``none``), ``structure_sha256``,
    ``abtem_oversampling`` and ``abtem_version``.

    A missing abTEM, an unreadable structure file or a largest pixel size (``download.pixel_size_max``) that
    aliases the specimen (the structure's, or those of ``download.material`` and, with a generalisation split,
    ``download.generalisation_material``) are one-line :class:`InputError`.
    """
    abtem = require(where)
    out: dict[str, Any] = {"structure": "none", "structure_sha256": None}
    if params.structure != "none":
        structure = read_structure(params.structure, where)
        check_sampling(
            params.pixel_size_max, structure.nearest_column, structure.name, where, "download.pixel_size_max"
        )
        out["structure"] = str(structure.path.resolve())
        out["structure_sha256"] = sha256_file(structure.path)
    else:
        check_material(params.material, params.pixel_size_max, where, "download.pixel_size_max")
    if params.generalisation_count > 0:
        check_material(params.generalisation_material, params.pixel_size_max, where, "download.pixel_size_max")
    out.update(abtem_oversampling=int(params.abtem_oversampling), abtem_version=str(abtem.__version__))
    return out
