"""Specimens as atoms at real positions: 2-D crystals with grains, defects, holes, edges, bilayers, contamination.

Stable API (used by :mod:`emdenoise.data.simulate.pairs` and the abTEM source):

- :data:`MATERIALS`: name -> :class:`Material` (``graphene``, the default; ``mos2``; ``srtio3``), and
  :data:`MIXED` (``mixed``: one of them per field, drawn uniformly; :data:`MATERIAL_CODES` numbers them).
- :class:`Scene` (frozen): the atoms that scatter (``atoms_yx_A``, ``z``) and the lattice columns, present or
  vacant (``columns_yx_A``, ``columns_z``, ``columns_vacant``), of a square field of ``size_px`` pixels of
  ``pixel_size`` angstrom, plus ``info`` (what was drawn).
- :func:`draw_scene` ``(rng, size_px, pixel_size, material="graphene", kind="random")``.
- :func:`random_atoms` (amorphous carbon-like atoms; contamination and the CTF tests) and
  :func:`smooth_fields` (band-limited Gaussian random fields).

Coordinates are (y, x) in angstrom with pixel ``[r, c]`` centred at ``(r, c) * pixel_size``; the field covers
``[-0.5, size_px - 0.5) * pixel_size`` on each axis. A column is a lattice site seen in projection: one atom for
graphene, a Mo atom or an S2 pair for MoS2, a Sr, TiO or O column for SrTiO3 [001]; ``columns_z`` is the
heaviest element in it, and a vacant column is a site whose atoms were removed (the position is where they
would be). Contamination atoms scatter but are not columns.

``kind``: ``random`` (every feature, drawn at random; see :func:`draw_scene` for the probabilities and
ranges), ``lattice`` (one perfect grain filling the field), ``vacuum`` (no atoms), ``amorphous`` (random carbon
atoms only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Material:
    """A 2-D crystal seen along its zone axis: a lattice (``hexagonal``: 120 degrees, or ``square``) of
    constant ``a`` (A) and a basis of columns ``(u, v, atomic numbers stacked in that column)`` in fractional
    coordinates."""

    name: str
    lattice: str
    a: float
    basis: tuple[tuple[float, float, tuple[int, ...]], ...]
    description: str
    layered: bool = True  # may form bilayer / moire patches

    @property
    def cell(self) -> np.ndarray:
        """Lattice vectors as rows, (y, x) angstrom, before rotation."""
        if self.lattice == "hexagonal":
            return self.a * np.array([[0.0, 1.0], [math.sqrt(3) / 2, -0.5]])
        return self.a * np.array([[0.0, 1.0], [1.0, 0.0]])

    @property
    def nearest_neighbour(self) -> float:
        """Shortest projected distance between two columns, A."""
        sites = np.array([[u, v] for u, v, _ in self.basis]) @ self.cell
        shifts = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)]) @ self.cell
        d = np.linalg.norm(sites[:, None, None] - sites[None, :, None] - shifts[None, None], axis=-1)
        return float(d[d > 1e-9].min())


MATERIALS: dict[str, Material] = {
    "graphene": Material(
        "graphene",
        "hexagonal",
        2.46,
        ((1 / 3, 2 / 3, (6,)), (2 / 3, 1 / 3, (6,))),
        "single-layer graphene, a = 2.46 A, C-C 1.42 A",
    ),
    "mos2": Material(
        "mos2",
        "hexagonal",
        3.16,
        ((1 / 3, 2 / 3, (42,)), (2 / 3, 1 / 3, (16, 16))),
        "2H-MoS2 monolayer along [001]: Mo and S2 columns on a honeycomb, a = 3.16 A",
    ),
    "srtio3": Material(
        "srtio3",
        "square",
        3.905,
        ((0.0, 0.0, (38, 38)), (0.5, 0.5, (22, 8, 22, 8)), (0.5, 0.0, (8, 8)), (0.0, 0.5, (8, 8))),
        "SrTiO3 [001], two unit cells thick: Sr, TiO and O columns on a square lattice, a = 3.905 A",
        layered=False,
    ),
}

MIXED = "mixed"
MATERIAL_CODES = {name: code for code, name in enumerate(MATERIALS)}  # the per-image material_code of mixed runs


def material_choices() -> tuple[str, ...]:
    """What ``material`` may be: a name of :data:`MATERIALS` or :data:`MIXED`."""
    return (*MATERIALS, MIXED)


def pick_material(rng: np.random.Generator, material: str) -> str:
    """``material`` itself, or for :data:`MIXED` one of :data:`MATERIALS` drawn uniformly (one draw of ``rng``,
    made only then: a named material's scenes stay the same for the same seed)."""
    if material != MIXED:
        return material
    return list(MATERIALS)[int(rng.integers(len(MATERIALS)))]


@dataclass(frozen=True)
class Scene:
    """Atoms of one field (see the module docstring)."""

    atoms_yx_A: np.ndarray  # (K, 2) float64, every scattering atom
    z: np.ndarray  # (K,) uint8
    columns_yx_A: np.ndarray  # (M, 2) float64, lattice columns (present and vacant)
    columns_z: np.ndarray  # (M,) uint8, heaviest element of each column
    columns_vacant: np.ndarray  # (M,) bool
    size_px: int
    pixel_size: float
    material: str
    info: dict = field(default_factory=dict)

    @property
    def vacant_yx_A(self) -> np.ndarray:
        return self.columns_yx_A[self.columns_vacant]


# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------


def smooth_fields(rng: np.random.Generator, size: int, corr_px) -> np.ndarray:
    """Gaussian random fields, zero mean and unit variance, with Gaussian correlation of ``corr_px`` (one each).

    Each is a sum of plane waves with random complex amplitudes on a band-limited grid of frequencies with
    period 1.25 x size (so the fields do not wrap around the image edges), evaluated as two small complex
    matrix products. Returns float32 (len(corr_px), size, size).
    """
    corr_px = np.atleast_1d(np.asarray(corr_px, dtype=np.float64))
    period = 1.25 * size
    ax = np.arange(size, dtype=np.float64)
    out = np.empty((len(corr_px), size, size), np.float32)
    for i, corr in enumerate(corr_px):
        m = max(1, int(math.ceil(0.5 * period / corr)))  # beyond it the envelope is < exp(-4.9)
        fy = np.arange(-m, m + 1) / period
        fx = np.arange(0, m + 1) / period
        env = np.exp(-2 * np.pi**2 * corr**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))  # (2m+1, m+1)
        env[:, 0] *= math.sqrt(0.5)  # (fy, 0) and (-fy, 0) are the same physical frequency: count it once
        env /= math.sqrt((env**2).sum())  # Re(c e^{i phi}) with c standard complex normal has variance 1
        coef = (rng.standard_normal((2 * m + 1, m + 1)) + 1j * rng.standard_normal((2 * m + 1, m + 1))) * env
        ey = np.exp(2j * np.pi * ax[:, None] * fy[None, :]).astype(np.complex64)  # (S, 2m+1)
        ex = np.exp(2j * np.pi * fx[:, None] * ax[None, :]).astype(np.complex64)  # (m+1, S)
        out[i] = ((ey @ coef.astype(np.complex64)) @ ex).real
    return out


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, s], [-s, c]])  # rows: (y, x) vectors are rotated by v @ R


def crystal(material: Material, extent: float, *, rotation: float, origin_yx) -> tuple[np.ndarray, np.ndarray]:
    """Columns of an infinite crystal that fall in the square ``[-extent/10, 1.1 extent)^2`` (A): returns
    (column positions (M, 2) y, x A; basis index of each (M,))."""
    cell = material.cell @ _rotation(rotation)
    lo, hi = -0.1 * extent, 1.1 * extent
    corners = np.array([[lo, lo], [lo, hi], [hi, lo], [hi, hi]]) - np.asarray(origin_yx)
    frac = corners @ np.linalg.inv(cell)
    i = np.arange(math.floor(frac[:, 0].min()) - 1, math.ceil(frac[:, 0].max()) + 2)
    j = np.arange(math.floor(frac[:, 1].min()) - 1, math.ceil(frac[:, 1].max()) + 2)
    ij = np.stack(np.meshgrid(i, j, indexing="ij"), -1).reshape(-1, 1, 2).astype(np.float64)
    uv = np.array([[u, v] for u, v, _ in material.basis])[None]
    pos = ((ij + uv) @ cell).reshape(-1, 2) + np.asarray(origin_yx)
    kind = np.tile(np.arange(len(material.basis)), len(ij))
    inside = np.all((pos >= lo) & (pos < hi), axis=1)
    return pos[inside], kind[inside]


def random_atoms(rng: np.random.Generator, extent: float, density: float, z: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random atoms (a projected amorphous film) over ``[0, extent)^2`` A at ``density`` atoms/A^2."""
    n = int(rng.poisson(density * extent * extent))
    return rng.uniform(0, extent, (n, 2)), np.full(n, z, np.uint8)


def _sample(field_px: np.ndarray, yx_a: np.ndarray, pixel_size: float) -> np.ndarray:
    """Values of a grid of ``pixel_size`` A spacing at positions (A), bilinearly interpolated, clamped at edges."""
    n = field_px.shape[0]
    pos = np.clip(yx_a / pixel_size, 0, n - 1.000001)
    i = pos.astype(np.int64)
    f = pos - i
    fy, fx = f[:, 0], f[:, 1]
    iy, ix = i[:, 0], i[:, 1]
    top = field_px[iy, ix] * (1 - fx) + field_px[iy, ix + 1] * fx
    bottom = field_px[iy + 1, ix] * (1 - fx) + field_px[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


# --------------------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneRanges:
    """Probabilities and ranges of a ``random`` scene (documented in the README, "Synthetic data")."""

    empty: float = 0.03  # probability of a field with no specimen
    grain_counts: tuple[int, ...] = (1, 2, 3, 4)
    grain_probabilities: tuple[float, ...] = (0.45, 0.25, 0.2, 0.1)
    holes: float = 0.5
    vacuum_edge: float = 0.25
    bilayer: float = 0.15  # layered materials only
    contamination: float = 0.25
    vacancies_per_100nm2: tuple[float, float] = (0.0, 60.0)  # mean of a Poisson count, drawn uniformly
    multi_vacancy_fraction: float = 0.3
    contamination_density: tuple[float, float] = (0.1, 0.4)  # carbon atoms per A^2 in the patches


SCENE_RANGES = SceneRanges()
FIELD_COARSENING = 4  # the smooth fields of a scene are drawn on a grid this many times coarser than the pixels


def _expand(columns_yx: np.ndarray, kinds: np.ndarray, material: Material) -> tuple[np.ndarray, np.ndarray]:
    """Atoms of the given columns: each column's stack of atoms at its position."""
    atoms, zs = [np.zeros((0, 2))], [np.zeros(0, np.uint8)]
    for b, (_, _, stack) in enumerate(material.basis):
        mine = columns_yx[kinds == b]
        atoms.append(np.repeat(mine, len(stack), axis=0))
        zs.append(np.tile(np.asarray(stack, np.uint8), len(mine)))
    return np.concatenate(atoms), np.concatenate(zs)


@dataclass
class _Field:
    """The field a scene is drawn in, and the scene made of the columns and atoms drawn there."""

    material: str
    kind: str
    size_px: int
    pixel_size: float
    info: dict

    @property
    def mat(self) -> Material:
        return MATERIALS[self.material]

    @property
    def extent(self) -> float:
        return self.size_px * self.pixel_size

    @property
    def shift(self) -> np.ndarray:
        return np.array([0.5, 0.5]) * self.pixel_size  # the field starts half a pixel before pixel 0's centre

    def scene(self, cols, col_kinds, vacant, extra_atoms=None, extra_z=None) -> Scene:
        """The scene of the columns ``cols`` (A, their basis kinds and vacancy flags) and ``extra_atoms``."""
        mat, extent, pixel_size, info = self.mat, self.extent, self.pixel_size, self.info
        extra_atoms = np.zeros((0, 2)) if extra_atoms is None else extra_atoms
        extra_z = np.zeros(0, np.uint8) if extra_z is None else extra_z
        # Only the columns inside the field scatter: the potential's grid is periodic.
        inside = np.all((cols >= -0.5 * pixel_size) & (cols < extent - 0.5 * pixel_size), axis=1)
        present = inside & ~vacant
        atoms, z = _expand(cols[present], col_kinds[present], mat)
        heaviest = np.array([max(zs) for _, _, zs in mat.basis], np.uint8)
        expected_columns = len(mat.basis) * extent * extent / abs(np.linalg.det(mat.cell))
        info["material_fraction"] = round(float(min(1.0, present.sum() / max(1.0, expected_columns))), 4)
        return Scene(
            atoms_yx_A=np.concatenate([atoms, extra_atoms - self.shift]),
            z=np.concatenate([z, extra_z]).astype(np.uint8),
            columns_yx_A=cols[inside],
            columns_z=heaviest[col_kinds[inside]],
            columns_vacant=vacant[inside],
            size_px=int(self.size_px),
            pixel_size=float(pixel_size),
            material=self.material,
            info=info,
        )


def draw_scene(
    rng: np.random.Generator,
    size_px: int,
    pixel_size: float,
    material: str = "graphene",
    kind: str = "random",
) -> Scene:
    """Draw the atoms of a ``size_px`` x ``size_px`` field of ``pixel_size`` A per pixel (see the module docstring).

    A ``random`` scene: empty with probability 0.03; otherwise 1-4 grains (soft Voronoi cells with wavy
    boundaries, random rotations and translations; columns closer than 0.6 nearest-neighbour distances across a
    boundary are removed), holes (a thresholded smooth field, probability 0.5), a rough vacuum edge (0.25),
    point vacancies (Poisson, mean uniform in 0-60 per 100 nm^2) of which 30 % grow into multi-vacancies of 2-4
    sites, a rotated second layer in a patch (moire; layered materials, 0.15) and amorphous carbon contamination
    patches (0.25, 0.1-0.4 atoms/A^2). ``mixed``: the material is drawn first (:func:`pick_material`); the
    scene's ``material`` says which.
    """
    if material not in material_choices():
        raise ValueError(f"material must be one of {', '.join(material_choices())}, got {material!r}")
    material = pick_material(rng, material)
    if kind not in ("random", "lattice", "vacuum", "amorphous"):
        raise ValueError(f"kind must be random, lattice, vacuum or amorphous, got {kind!r}")
    info: dict = {"material": material, "kind": kind, "n_grains": 0, "vacancies": 0, "holes": False}
    info.update(vacuum_edge=False, bilayer=False, contamination_atoms=0)
    field = _Field(material, kind, size_px, pixel_size, info)
    mat, extent, none = field.mat, field.extent, (np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, bool))
    if kind == "vacuum" or (kind == "random" and rng.random() < SCENE_RANGES.empty):
        info["empty"] = True
        return field.scene(*none)
    if kind == "amorphous":
        atoms, z = random_atoms(rng, extent, 0.3)
        info["contamination_atoms"] = len(z)
        return field.scene(*none, atoms, z)
    if kind == "lattice":
        cols, kinds = crystal(mat, extent, rotation=rng.uniform(0, 2 * np.pi), origin_yx=rng.uniform(0, mat.a, 2))
        info["n_grains"] = 1
        return field.scene(cols - field.shift, kinds, np.zeros(len(cols), bool))
    return _random_scene(rng, field)


def _random_scene(rng: np.random.Generator, field: _Field) -> Scene:
    """A ``random`` scene that is not empty: grains, then holes and a vacuum edge, vacancies, a second layer,
    contamination (the random draws in this order: the same seed, the same scene)."""
    mat, pixel_size = field.mat, field.pixel_size
    n_grains = int(rng.choice(SCENE_RANGES.grain_counts, p=SCENE_RANGES.grain_probabilities))
    holes = rng.random() < SCENE_RANGES.holes
    edge = rng.random() < SCENE_RANGES.vacuum_edge
    bilayer = mat.layered and rng.random() < SCENE_RANGES.bilayer
    contamination = rng.random() < SCENE_RANGES.contamination
    corr = [rng.uniform(10, 30), rng.uniform(15, 40), rng.uniform(20, 50), rng.uniform(15, 40)]
    corr += [rng.uniform(20, 40)] * n_grains
    # The fields are smooth (correlation >= 10 px): drawn on a grid FIELD_COARSENING times coarser.
    fields = smooth_fields(rng, field.size_px // FIELD_COARSENING + 1, [c / FIELD_COARSENING for c in corr])
    field_px = pixel_size * FIELD_COARSENING
    hole_f, edge_f, bilayer_f, contamination_f = fields[:4]

    cols, kinds, grain = _grains(rng, field, n_grains, fields[4:], field_px)
    keep = _material_kept(rng, field, cols, hole_f if holes else None, edge_f if edge else None, field_px)
    cols, kinds, grain = cols[keep], kinds[keep], grain[keep]
    vacant = _vacancies(rng, field, cols)
    field.info.update(n_grains=n_grains, vacancies=int(vacant.sum()), holes=bool(holes), vacuum_edge=bool(edge))

    # A rotated second layer in a patch (moire), inside the material of the first.
    if bilayer:
        cols2, kinds2 = crystal(
            mat, field.extent, rotation=rng.uniform(0, 2 * np.pi), origin_yx=rng.uniform(0, field.extent, 2)
        )
        level = rng.uniform(0.3, 1.5)
        inside2 = _sample(bilayer_f, cols2, field_px) > level
        if holes:
            inside2 &= _sample(hole_f, cols2, field_px) < level + 1
        cols = np.concatenate([cols, cols2[inside2]])
        kinds = np.concatenate([kinds, kinds2[inside2]])
        vacant = np.concatenate([vacant, np.zeros(int(inside2.sum()), bool)])
        field.info["bilayer"] = True

    extra, extra_z = np.zeros((0, 2)), np.zeros(0, np.uint8)
    if contamination:
        extra, extra_z = random_atoms(rng, field.extent, rng.uniform(*SCENE_RANGES.contamination_density))
        patch = _sample(contamination_f, extra, field_px) > rng.uniform(0.5, 1.5)
        extra, extra_z = extra[patch], extra_z[patch]
        field.info["contamination_atoms"] = len(extra_z)
    return field.scene(cols - field.shift, kinds, vacant, extra, extra_z)


def _grains(
    rng: np.random.Generator, field: _Field, n_grains: int, warps: np.ndarray, field_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The columns of ``n_grains`` grains (positions, basis kinds, grain index): each column belongs to the
    grain whose seed is nearest, with distances warped by a smooth field; columns closer than 0.6 nearest-
    neighbour distances across a boundary are removed."""
    mat, extent = field.mat, field.extent
    seeds = rng.uniform(-0.1 * extent, 1.1 * extent, (n_grains, 2))
    warp_amp = rng.uniform(3, 12) * field.pixel_size
    all_cols, all_kinds, all_grain = [], [], []
    for g in range(n_grains):
        cols, kinds = crystal(mat, extent, rotation=rng.uniform(0, 2 * np.pi), origin_yx=rng.uniform(0, extent, 2))
        if n_grains > 1:
            dist = np.linalg.norm(cols[:, None, :] - seeds[None], axis=-1)
            for h in range(n_grains):
                dist[:, h] += warp_amp * _sample(warps[h], cols, field_px)
            mine = np.argmin(dist, axis=1) == g
            cols, kinds = cols[mine], kinds[mine]
        all_cols.append(cols)
        all_kinds.append(kinds)
        all_grain.append(np.full(len(cols), g))
    cols, kinds, grain = np.concatenate(all_cols), np.concatenate(all_kinds), np.concatenate(all_grain)
    if n_grains > 1 and len(cols):
        pairs = cKDTree(cols).query_pairs(0.6 * mat.nearest_neighbour, output_type="ndarray")
        across = pairs[grain[pairs[:, 0]] != grain[pairs[:, 1]]]
        keep = np.ones(len(cols), bool)
        keep[np.where(grain[across[:, 0]] > grain[across[:, 1]], across[:, 0], across[:, 1])] = False
        cols, kinds, grain = cols[keep], kinds[keep], grain[keep]
    return cols, kinds, grain


def _material_kept(
    rng: np.random.Generator,
    field: _Field,
    cols: np.ndarray,
    hole_f: np.ndarray | None,
    edge_f: np.ndarray | None,
    field_px: float,
) -> np.ndarray:
    """Which columns stay: holes (``hole_f``) and a vacuum edge (``edge_f``) remove columns entirely."""
    extent = field.extent
    keep = np.ones(len(cols), bool)
    if hole_f is not None:
        keep &= _sample(hole_f, cols, field_px) < rng.uniform(0.8, 2.5)  # higher level: fewer, smaller holes
    if edge_f is not None:
        phi = rng.uniform(0, 2 * np.pi)
        across_edge = (cols - extent / 2) @ np.array([math.sin(phi), math.cos(phi)])
        across_edge += rng.uniform(2, 8) * field.pixel_size * _sample(edge_f, cols, field_px)
        keep &= across_edge < rng.uniform(-0.1, 0.4) * extent
    return keep


def _vacancies(rng: np.random.Generator, field: _Field, cols: np.ndarray) -> np.ndarray:
    """Vacant columns: point vacancies, some grown into multi-vacancies with neighbouring columns."""
    extent, nn = field.extent, field.mat.nearest_neighbour
    vacant = np.zeros(len(cols), bool)
    n_vac = int(rng.poisson(rng.uniform(*SCENE_RANGES.vacancies_per_100nm2) * extent * extent / 1e4))
    n_vac = min(n_vac, len(cols))
    if n_vac:
        chosen = rng.choice(len(cols), n_vac, replace=False)
        vacant[chosen] = True
        grow = chosen[rng.random(n_vac) < SCENE_RANGES.multi_vacancy_fraction]
        if len(grow):
            tree = cKDTree(cols)
            for site, extra in zip(grow, rng.integers(1, 4, len(grow))):
                near = [i for i in tree.query_ball_point(cols[site], 1.2 * nn) if i != site]
                vacant[rng.permutation(np.asarray(near, np.int64))[:extra]] = True
    return vacant
