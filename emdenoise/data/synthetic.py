"""Synthetic em_graphene_sim-like image pairs: graphene HRTEM contrast, a beam profile, shot noise, dead pixels.

The real benchmark data were simulated with MULTEM from molecular-dynamics coordinates; that pipeline is not
public. This module draws images that share the features the benchmark describes (see
``shared/reference/dataset.md``) cheaply enough to make thousands of pairs in seconds, written in exactly the
raw em_graphene_sim layout (:mod:`emdenoise.layout`) so that real and synthetic data go through the same code.

Clean image (flat illumination, vacuum = 1.0, values of order 1, never negative)::

    clean = 1 - m * T * (a0 + c(r) * s * L(r))        [ - bilayer term of the same form ]

- ``L``: graphene lattice contrast, the honeycomb written as plane waves: minus the sum of the three
  first-order cosines (the 2.13 A {100} fringes, peaks on the atoms) plus a weaker sum of the three
  second-order cosines (the 1.23 A {110} fringes), each damped by a Gaussian blur envelope, normalised to
  |L| <= 1. Graphene: a = 2.46 A, so the {100} fringe spacing is a * sqrt(3) / 2 = 2.13 A.
  ``PIXEL_SIZE_ANGSTROM`` = 0.19 A/px puts that fringe at 11.2 px (the published figures show about 10-12 px);
  a per-image magnification of +-3 % keeps it within 10.9-11.6 px.
- Several grains (soft Voronoi cells with wavy boundaries) each carry their own rotation and translation.
- ``m``: material mask: holes (thresholded smooth random field), a vacuum edge (a rough half plane),
  vacancies and small multi-vacancies snapped to atom sites; ``T`` a smooth thickness variation; ``c(r)`` a
  smoothly varying contrast; ``s`` = -1 for contrast reversal (bright atoms); ``a0`` a mean absorption.
- Some fields are empty (pure vacuum), some carry a second rotated layer (a moire patch).

Noisy image::

    noisy = Poisson(dose * beam * clean) / dose,  then dead pixels set to 0

``beam`` is a 2-D Gaussian with peak 1 (sigma 0.3-0.6 of the field, centre anywhere in [-0.1, 1.1] of the
field, so sometimes off the image), ``dose`` the electrons per pixel at the beam centre (log-uniform between
``dose_min`` and ``dose_max``; rounded to float32 and stored, so ``noisy * dose`` are whole counts).

Determinism: image ``i`` of split ``split`` is drawn from its own generator,
``SeedSequence(seed, spawn_key=(SPLIT_KEYS[split], i))``, so the files are the same bytes whatever the number
of worker processes or the chunking.

Speed: everything is vectorised. A lattice, a smooth random field or a set of Gaussian spots is built as a
product of small matrices of 1-D complex exponentials / Gaussians (separable in x and y), never per atom.
Run ``python -m emdenoise.data.synthetic [N] [WORKERS]`` to measure pairs/s.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.special import expit

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # optional: without it BLAS may start threads (much slower on a busy machine, same results)
    ThreadpoolController = None

from emdenoise.layout import RAW_DATASET, RAW_FILES, RAW_SPLITS
from emdenoise.log import progress
from emdenoise.outputs import Transaction

GENERATOR_VERSION = "1"

LATTICE_CONSTANT_ANGSTROM = 2.46
FRINGE_ANGSTROM = LATTICE_CONSTANT_ANGSTROM * math.sqrt(3) / 2  # {100} spacing, 2.13 A
PIXEL_SIZE_ANGSTROM = 0.19
FRINGE_PX = FRINGE_ANGSTROM / PIXEL_SIZE_ANGSTROM  # 11.2 px

SPLIT_KEYS = {"train": 0, "test": 1}
SCENES = ("random", "lattice", "vacuum")

BEAM_SIGMA_RANGE = (0.3, 0.6)  # beam sigma as a fraction of the field side
BEAM_CENTER_RANGE = (-0.1, 1.1)  # beam centre as a fraction of the field side (outside [0, 1]: off the image)

F32 = np.float32


# --------------------------------------------------------------------------------------------------------------
# Random generators
# --------------------------------------------------------------------------------------------------------------


def image_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of image ``index`` of ``split``: independent of how the work is divided between processes."""
    return np.random.SeedSequence(seed, spawn_key=(SPLIT_KEYS[split], index))


def as_rng(rng) -> np.random.Generator:
    """Accept a Generator, a SeedSequence or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


_BLAS = None  # threadpoolctl controller, made on first use in each process
_BLAS_LIMITED = False  # already inside a one-thread section (nested calls skip the ~0.1 ms of re-limiting)


def _one_blas_thread(func):
    """Run ``func`` with BLAS limited to one thread.

    The matrix products here are small (256 x 12 x 256); a multi-threaded BLAS makes them up to 100 times slower
    on a busy 2-core machine, and worker processes would oversubscribe the cores.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        global _BLAS, _BLAS_LIMITED
        if ThreadpoolController is None or _BLAS_LIMITED:
            return func(*args, **kwargs)
        if _BLAS is None:
            _BLAS = ThreadpoolController()
        with _BLAS.limit(limits=1, user_api="blas"):
            _BLAS_LIMITED = True
            try:
                return func(*args, **kwargs)
            finally:
                _BLAS_LIMITED = False

    return wrapper


# --------------------------------------------------------------------------------------------------------------
# Building blocks (all separable: outer products of 1-D arrays, summed by small matrix products)
# --------------------------------------------------------------------------------------------------------------


def _axis(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64)


@_one_blas_thread
def lattice(
    size: int,
    *,
    rotation: float,
    fringe_px: float = FRINGE_PX,
    shift=(0.0, 0.0),
    second_order: float = 0.3,
    blur_px: float = 0.5,
) -> np.ndarray:
    """Graphene lattice contrast L (float32, size x size), positive on the atoms, |L| <= 1.

    ``rotation`` in radians, ``fringe_px`` the {100} fringe spacing in pixels, ``shift`` (x, y) a translation
    in pixels (a hexagon centre sits there), ``second_order`` the weight of the {110} fringes relative to the
    {100} ones, ``blur_px`` the sigma of a Gaussian blur applied as an envelope on the plane waves.
    """
    k = 2 * np.pi / fringe_px
    angles = rotation + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    k1 = k * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (3, 2) as (kx, ky); they sum to zero
    k2 = k1 - np.roll(k1, -1, axis=0)  # second order, |k2| = sqrt(3) k, on the atoms *and* hexagon centres
    env1 = math.exp(-0.5 * (k * blur_px) ** 2)
    env2 = math.exp(-1.5 * (k * blur_px) ** 2)
    # Honeycomb density with the hexagon centre at the origin: structure factor -1 at first order, +2 at second.
    weights = np.concatenate([np.full(3, -env1), np.full(3, second_order * env2)])
    weights /= 3 * (env1 + second_order * env2)
    vecs = np.concatenate([k1, k2])
    x = _axis(size) - shift[0]
    y = _axis(size) - shift[1]
    ex = np.exp(1j * vecs[:, 0:1] * x[None, :])  # (6, S)
    ey = np.exp(1j * vecs[:, 1:2] * y[None, :]) * weights[:, None]  # (6, S)
    # Re(sum_i ey_i (x) ex_i) as one real matrix product with inner dimension 12.
    left = np.concatenate([ey.real, -ey.imag]).T.astype(F32)  # (S, 12)
    right = np.concatenate([ex.real, ex.imag]).astype(F32)  # (12, S)
    return left @ right


def atom_sites(
    n: int,
    rng: np.random.Generator,
    size: int,
    *,
    rotation: float,
    fringe_px: float,
    shift,
    cluster_fraction: float = 0.0,
) -> np.ndarray:
    """Random atom positions (x, y) in pixels of the lattice drawn by :func:`lattice` with these settings.

    ``n`` atoms near uniformly random points of the field; a ``cluster_fraction`` of them also bring two of
    their three nearest neighbours (multi-vacancies when the sites are removed). Sites are found in fractional
    coordinates of the hexagonal cell, whose origin is a hexagon centre: sublattice A sits at (1/3, 1/3),
    sublattice B at (2/3, 2/3).
    """
    k = 2 * np.pi / fringe_px
    angles = rotation + np.array([0.0, 2 * np.pi / 3])
    kmat = k * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # rows k1, k2
    avecs = 2 * np.pi * np.linalg.inv(kmat).T  # rows a1, a2 with k_i . a_j = 2 pi delta_ij
    frac = (rng.uniform(0, size, (n, 2)) - np.asarray(shift)) @ kmat.T / (2 * np.pi)
    is_b = rng.random(n) < 0.5
    sub = np.where(is_b, 2 / 3, 1 / 3)[:, None]
    frac = np.round(frac - sub) + sub
    # Nearest neighbours of an A atom (B atoms) in fractional coordinates; those of a B atom are the negatives.
    bonds = np.array([[1 / 3, 1 / 3], [-2 / 3, 1 / 3], [1 / 3, -2 / 3]])
    clustered = np.flatnonzero(rng.random(n) < cluster_fraction)
    which = rng.integers(0, 3, (len(clustered), 2))
    extra = [frac[clustered] + np.where(is_b[clustered], -1, 1)[:, None] * bonds[which[:, j]] for j in (0, 1)]
    frac = np.concatenate([frac] + extra)
    return frac @ avecs + np.asarray(shift)


@_one_blas_thread
def spots(size: int, centers: np.ndarray, sigma: float) -> np.ndarray:
    """Sum of unit-peak Gaussian spots at ``centers`` (x, y) px, float32 (size x size); zeros when none."""
    if len(centers) == 0:
        return np.zeros((size, size), F32)
    ax = _axis(size)
    gx = np.exp(-0.5 * ((ax[None, :] - centers[:, 0:1]) / sigma) ** 2).astype(F32)  # (K, S)
    gy = np.exp(-0.5 * ((ax[None, :] - centers[:, 1:2]) / sigma) ** 2).astype(F32)  # (K, S)
    return gy.T @ gx


@_one_blas_thread
def smooth_fields(rng: np.random.Generator, size: int, corr_px) -> np.ndarray:
    """Gaussian random fields, zero mean and unit variance, with Gaussian correlation of ``corr_px`` (one each).

    Each is a sum of plane waves with random complex amplitudes on a band-limited grid of frequencies with
    period 1.25 x size (so the fields do not wrap around the image edges), evaluated as two small complex
    matrix products. Returns float32 (len(corr_px), size, size).
    """
    corr_px = np.atleast_1d(np.asarray(corr_px, dtype=np.float64))
    period = 1.25 * size
    ax = _axis(size)
    out = np.empty((len(corr_px), size, size), F32)
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


def beam_profile(size: int, center_yx, sigma_px: float) -> np.ndarray:
    """2-D Gaussian beam with peak 1 at ``center_yx`` (row, column in px; may lie outside), float32."""
    ax = _axis(size)
    gy = np.exp(-0.5 * ((ax - center_yx[0]) / sigma_px) ** 2).astype(F32)
    gx = np.exp(-0.5 * ((ax - center_yx[1]) / sigma_px) ** 2).astype(F32)
    return gy[:, None] * gx[None, :]


def draw_beam(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A random beam: centre (row, column) px and sigma px, rounded to float32 as they are recorded."""
    center = F32(size) * rng.uniform(*BEAM_CENTER_RANGE, 2).astype(F32)
    sigma = F32(size * rng.uniform(*BEAM_SIGMA_RANGE))
    return center, float(sigma)


def draw_dose(rng: np.random.Generator, dose_min: float, dose_max: float) -> float:
    """Log-uniform dose in [dose_min, dose_max] (electrons per pixel at the beam centre), rounded to float32."""
    if dose_max <= dose_min:
        return float(F32(dose_min))
    dose = F32(math.exp(rng.uniform(math.log(dose_min), math.log(dose_max))))
    return float(np.clip(dose, F32(dose_min), F32(dose_max)))


def add_noise(
    rng: np.random.Generator,
    clean: np.ndarray,
    *,
    dose: float,
    beam_center_yx,
    beam_sigma: float,
    dead_pixel_fraction: float,
) -> tuple[np.ndarray, int]:
    """The detector's view of ``clean`` (non-negative): beam profile, Poisson shot noise, dead pixels.

    Returns (noisy float32, number of dead pixels). ``noisy * dose`` are the electron counts.
    """
    if dose <= 0:
        raise ValueError(f"dose must be > 0, got {dose}")
    if not 0 <= dead_pixel_fraction <= 1:
        raise ValueError(f"dead_pixel_fraction must be in [0, 1], got {dead_pixel_fraction}")
    size = clean.shape[0]
    expected = clean * beam_profile(size, beam_center_yx, beam_sigma)
    expected *= F32(dose)
    counts = rng.poisson(expected)
    noisy = (counts / F32(dose)).astype(F32)
    n_dead = int(rng.binomial(noisy.size, dead_pixel_fraction)) if dead_pixel_fraction > 0 else 0
    if n_dead:
        noisy.reshape(-1)[rng.choice(noisy.size, n_dead, replace=False)] = 0.0
    return noisy, n_dead


# --------------------------------------------------------------------------------------------------------------
# Clean scenes
# --------------------------------------------------------------------------------------------------------------


@_one_blas_thread
def clean_scene(rng, size: int = 256, scene: str = "random") -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw a clean image (float32, size x size, vacuum = 1, >= 0), its material mask (0 vacuum .. 1 graphene,
    float32) and a dict describing it.

    ``scene``: ``random`` (all features, drawn at random), ``lattice`` (one perfect grain, no holes, defects,
    thickness or contrast variation; for checking the lattice), ``vacuum`` (an empty field: all ones).

    ``info``: ``scene``, ``empty``, ``n_grains``, ``rotations_deg`` (one per grain, then the second layer's if
    any; the angle of a first-order wave vector, modulo 60), ``shifts_px`` (x, y of a hexagon centre of each
    of those lattices), ``grain_fractions`` (share of the field of each grain), ``fringe_px`` ({100} spacing),
    ``contrast_sign`` (-1: reversed), ``vacancies``, ``holes``, ``vacuum_edge``, ``bilayer``,
    ``material_fraction`` (mean of the material mask).
    """
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    rng = as_rng(rng)
    info: dict[str, Any] = {
        "scene": scene,
        "empty": False,
        "n_grains": 0,
        "rotations_deg": [],
        "shifts_px": [],
        "grain_fractions": [],
        "contrast_sign": 1,
        "vacancies": 0,
        "holes": False,
        "vacuum_edge": False,
        "bilayer": False,
    }
    if scene == "vacuum" or (scene == "random" and rng.random() < 0.05):
        info["empty"] = True
        info["material_fraction"] = 0.0
        return np.ones((size, size), F32), np.zeros((size, size), F32), info

    simple = scene == "lattice"
    fringe = FRINGE_PX * (1.0 if simple else rng.uniform(0.97, 1.03))
    second_order = rng.uniform(0.1, 0.6)
    blur = rng.uniform(0.3, 1.0)
    n_grains = 1 if simple else int(rng.choice([1, 2, 3, 4], p=[0.45, 0.25, 0.2, 0.1]))
    rotations = rng.uniform(0, np.pi / 3, n_grains)  # hexagonal symmetry: 60 degrees cover all orientations
    shifts = rng.uniform(0, size, (n_grains, 2))
    info.update(
        n_grains=n_grains,
        rotations_deg=[round(float(np.degrees(r)), 4) for r in rotations],
        shifts_px=shifts.round(4).tolist(),
        fringe_px=round(float(fringe), 4),
    )

    def grain_lattice(g: int) -> np.ndarray:
        return lattice(
            size, rotation=rotations[g], fringe_px=fringe, shift=shifts[g], second_order=second_order, blur_px=blur
        )

    if simple:
        lat = grain_lattice(0)
        material = np.ones((size, size), F32)
        contrast = F32(rng.uniform(0.15, 0.35))
        absorb = F32(rng.uniform(0.0, 0.15))
        clean = F32(1) - material * (absorb + contrast * lat)
        info.update(material_fraction=1.0, grain_fractions=[1.0])
        return np.maximum(clean, 0, out=clean), material, info

    # The smooth random fields this scene needs, drawn in one call: name -> correlation length in px.
    holes = rng.random() < 0.6
    edge = rng.random() < 0.25
    bilayer = rng.random() < 0.15
    corr = {"thickness": rng.uniform(30, 80), "contrast": rng.uniform(30, 80)}
    if holes:
        corr["holes"] = rng.uniform(10, 30)
    if edge:
        corr["edge"] = rng.uniform(15, 40)
    if bilayer:
        corr["bilayer"] = rng.uniform(20, 50)
    n_warps = n_grains if n_grains > 1 else 0
    fields = smooth_fields(rng, size, list(corr.values()) + [rng.uniform(20, 40)] * n_warps)
    field = dict(zip(corr, fields))
    ax = _axis(size).astype(F32)

    # Grains: soft Voronoi cells around random seeds; wavy boundaries from a smooth warp of the distances.
    if n_grains == 1:
        lat = grain_lattice(0)
        info["grain_fractions"] = [1.0]
    else:
        seeds = rng.uniform(-0.1 * size, 1.1 * size, (n_grains, 2)).astype(F32)
        warp = fields[len(corr) :] * F32(rng.uniform(3, 12))
        dist = (
            np.sqrt(
                (ax[None, None, :] - seeds[:, 0, None, None]) ** 2 + (ax[None, :, None] - seeds[:, 1, None, None]) ** 2
            )
            + warp
        )
        dist -= dist.min(axis=0)
        weight = np.exp(-dist / F32(1.2))  # the boundary blends the lattices over a few pixels
        weight /= weight.sum(axis=0)
        lat = sum(weight[g] * grain_lattice(g) for g in range(n_grains))
        info["grain_fractions"] = [round(float(w.mean()), 4) for w in weight]

    # Material: holes, a vacuum edge, vacancies.
    material = np.ones((size, size), F32)
    if holes:
        level = rng.uniform(0.8, 2.5)  # higher: fewer, smaller holes
        steep = corr["holes"] / 0.3  # edge one or two pixels wide
        material *= expit((level - field["holes"]) * F32(steep))
    if edge:
        phi = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-0.1, 0.4) * size
        across = (np.cos(phi) * (ax[None, :] - size / 2) + np.sin(phi) * (ax[:, None] - size / 2)).astype(F32)
        across += field["edge"] * F32(rng.uniform(2, 8))  # rough edge
        material *= expit((F32(offset) - across) / F32(0.8))
    n_vac = int(rng.poisson(rng.uniform(0, 15)))
    if n_vac:
        g = rng.integers(0, n_grains)  # vacancies of one grain (the others see them only near boundaries)
        sites = atom_sites(
            n_vac, rng, size, rotation=rotations[g], fringe_px=fringe, shift=shifts[g], cluster_fraction=0.3
        )  # some grow into small multi-vacancies
        vac = spots(size, sites, sigma=0.22 * fringe)
        material *= F32(1) - np.minimum(vac, F32(1))

    thickness = np.clip(F32(1) + F32(rng.uniform(0, 0.25)) * field["thickness"], 0.5, 1.6)
    contrast = F32(rng.uniform(0.15, 0.45)) * np.clip(F32(1) + F32(0.25) * field["contrast"], 0.5, 1.5)
    sign = F32(-1 if rng.random() < 0.25 else 1)  # contrast reversal: bright atoms
    absorb = F32(rng.uniform(0.0, 0.15))
    clean = F32(1) - material * thickness * (absorb + sign * contrast * lat)
    if bilayer:
        rot2 = rng.uniform(0, np.pi / 3)
        shift2 = rng.uniform(0, size, 2)
        lat2 = lattice(size, rotation=rot2, fringe_px=fringe, shift=shift2, second_order=second_order, blur_px=blur)
        patch = material * expit((F32(rng.uniform(0.3, 1.5)) - field["bilayer"]) * F32(20))
        clean -= patch * (absorb + sign * contrast * lat2)
        info["rotations_deg"].append(round(float(np.degrees(rot2)), 4))
        info["shifts_px"].append(shift2.round(4).tolist())
    info.update(
        contrast_sign=int(sign),
        vacancies=n_vac,
        holes=holes,
        vacuum_edge=edge,
        bilayer=bilayer,
        material_fraction=round(float(material.mean()), 4),
    )
    return np.maximum(clean, 0, out=clean), material, info


@_one_blas_thread
def make_pair(
    rng,
    *,
    image_size: int = 256,
    dose_min: float = 5.0,
    dose_max: float = 100.0,
    dead_pixel_fraction: float = 0.001,
    scene: str = "random",
    dose: float | None = None,
    beam_center_yx=None,
    beam_sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One (noisy, clean, info) pair, float32 (image_size, image_size).

    ``rng``: a Generator, SeedSequence or int. ``dose``, ``beam_center_yx`` and ``beam_sigma`` fix those values
    instead of drawing them (the draws still happen, so the rest of the pair does not change). ``info`` holds
    the scene description (see :func:`clean_scene`) plus ``dose``, ``beam_center_yx``, ``beam_sigma`` and
    ``dead_pixels`` (their count).
    """
    rng = as_rng(rng)
    clean, _, info = clean_scene(rng, image_size, scene)
    drawn_dose = draw_dose(rng, dose_min, dose_max)
    drawn_center, drawn_sigma = draw_beam(rng, image_size)
    dose = drawn_dose if dose is None else float(dose)
    center = drawn_center if beam_center_yx is None else np.asarray(beam_center_yx, F32)
    sigma = drawn_sigma if beam_sigma is None else float(beam_sigma)
    noisy, n_dead = add_noise(
        rng, clean, dose=dose, beam_center_yx=center, beam_sigma=sigma, dead_pixel_fraction=dead_pixel_fraction
    )
    info.update(dose=dose, beam_center_yx=[float(c) for c in center], beam_sigma=sigma, dead_pixels=n_dead)
    return noisy, clean, info


# --------------------------------------------------------------------------------------------------------------
# Writing the raw layout
# --------------------------------------------------------------------------------------------------------------

# Per-image values stored as attributes of the "images" datasets: (name, dtype, source in info, which file).
_PER_IMAGE_ATTRS = (
    ("dose", np.float32, "dose", "noisy"),
    ("beam_center_yx", np.float32, "beam_center_yx", "noisy"),
    ("beam_sigma", np.float32, "beam_sigma", "noisy"),
    ("dead_pixels", np.int32, "dead_pixels", "noisy"),
    ("n_grains", np.int8, "n_grains", "clean"),
    ("contrast_sign", np.int8, "contrast_sign", "clean"),
    ("material_fraction", np.float32, "material_fraction", "clean"),
)


@_one_blas_thread
def _make_chunk(job: tuple) -> tuple[np.ndarray, np.ndarray, dict]:
    """Worker: pairs ``start .. stop-1`` of one split, stacked, plus their per-image attributes."""
    seed, split, start, stop, kwargs = job
    size = kwargs["image_size"]
    noisy = np.empty((stop - start, size, size), F32)
    clean = np.empty_like(noisy)
    attrs: dict[str, list] = {name: [] for name, *_ in _PER_IMAGE_ATTRS}
    for j, index in enumerate(range(start, stop)):
        noisy[j], clean[j], info = make_pair(image_seed(seed, split, index), **kwargs)
        for name, _, key, _ in _PER_IMAGE_ATTRS:
            attrs[name].append(info[key])
    return noisy, clean, attrs


def _worker_count(workers: int) -> int:
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pool_context():
    """Spawned workers: safe when the caller has threads (torch, tqdm), and measured fastest here.

    On the 2-core CI machine a forkserver pool ran at a third of the spawn pool's speed (36-86 vs 150-185
    pairs/s, its workers spending their time in futex waits), and fork is unsafe in a threaded caller.
    """
    return multiprocessing.get_context("spawn")


def write_dataset(
    out_dir: Path,
    *,
    seed: int,
    train_images: int,
    test_images: int,
    image_size: int = 256,
    dose_min: float = 5.0,
    dose_max: float = 100.0,
    dead_pixel_fraction: float = 0.001,
    workers: int = 0,
    log=None,
    tx: Transaction | None = None,
) -> list[Path]:
    """Write ``out_dir/{train,test}/graphene_img_{noise,clean}.h5`` (dataset ``images``, float32,
    (N, S, S, 1); noisy row i pairs with clean row i) and return the files written.

    Attributes: on the noisy ``images``: ``dose`` (N,) electrons per pixel at the beam centre,
    ``beam_center_yx`` (N, 2) px, ``beam_sigma`` (N,) px, ``dead_pixels`` (N,) count, ``dead_pixel_fraction``
    (the parameter); on the clean ``images``: ``n_grains``, ``contrast_sign``, ``material_fraction`` (N,) each;
    on both files: generator name, version, seed, split and parameters. Same seed, same bytes, whatever
    ``workers`` (0: one per CPU; 1: in this process). The four files appear together, when all are complete;
    a failure leaves the files that were there before. Worker processes start from a fork server (spawn where
    there is none), so a script calling this with ``workers != 1`` needs the usual ``if __name__ == "__main__":``
    guard; ``python -m emdenoise`` and the ``emdenoise`` command have it.

    ``tx``: a :class:`~emdenoise.outputs.Transaction` of the caller's (download's, which commits MANIFEST.json
    after the four files): the files are written into its staging and committed with it, by the caller.
    Without one the function commits its own.
    """
    out_dir = Path(out_dir)
    counts = {"train": int(train_images), "test": int(test_images)}
    for split, n in counts.items():
        if n < 1:
            raise ValueError(f"{split}_images must be >= 1, got {n}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 0 < dose_min <= dose_max:
        raise ValueError(f"expected 0 < dose_min <= dose_max, got {dose_min}, {dose_max}")
    if not 0 <= dead_pixel_fraction <= 1:
        raise ValueError(f"dead_pixel_fraction must be in [0, 1], got {dead_pixel_fraction}")
    kwargs = dict(
        image_size=int(image_size),
        dose_min=float(dose_min),
        dose_max=float(dose_max),
        dead_pixel_fraction=float(dead_pixel_fraction),
    )
    workers = _worker_count(workers)
    total = sum(counts.values())
    chunk = max(1, min(32, math.ceil(total / (4 * workers))))
    jobs = [
        (int(seed), split, start, min(start + chunk, n), kwargs)
        for split, n in counts.items()
        for start in range(0, n, chunk)
    ]
    if log is not None:
        log.info(
            "synthetic: %d train + %d test pairs of %d x %d px, seed %d, dose %g-%g e/px, %d worker(s)",
            counts["train"],
            counts["test"],
            image_size,
            image_size,
            seed,
            dose_min,
            dose_max,
            workers,
        )

    paths = {(split, kind): out_dir / split / RAW_FILES[kind] for split in RAW_SPLITS for kind in ("noisy", "clean")}
    # All four files are staged and committed together, so a failure leaves whatever dataset was there before
    # intact (never a new train split beside an old test split).
    with contextlib.ExitStack() as stack:
        if tx is None:
            tx = stack.enter_context(Transaction())
        tmp = {key: stack.enter_context(tx.writing(path)) for key, path in paths.items()}
        pool = _pool_context().Pool(workers) if workers > 1 and len(jobs) > 1 else None
        try:
            results = pool.imap(_make_chunk, jobs) if pool is not None else map(_make_chunk, jobs)
            with progress(total=total, desc="synthetic", unit="pair") as bar:
                for split in RAW_SPLITS:
                    n_split_jobs = sum(1 for job in jobs if job[1] == split)
                    _write_split(
                        tmp[split, "noisy"],
                        tmp[split, "clean"],
                        split,
                        counts[split],
                        seed,
                        kwargs,
                        (next(results) for _ in range(n_split_jobs)),
                        bar,
                    )
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    written = list(paths.values())
    if log is not None:
        log.info("synthetic: wrote %s", ", ".join(str(p) for p in written))
    return written


def _write_split(noisy_path: Path, clean_path: Path, split: str, n: int, seed: int, kwargs: dict, chunks, bar) -> None:
    """Write one split's two HDF5 files from an iterator of chunks (see :func:`_make_chunk`)."""
    size = kwargs["image_size"]
    file_attrs = {
        "generator": "emdenoise.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "split": split,
        "pixel_size_angstrom": PIXEL_SIZE_ANGSTROM,
        "parameters": json.dumps(dict(kwargs, seed=int(seed)), sort_keys=True),
    }
    with h5py.File(noisy_path, "w", libver="v108") as f_noisy, h5py.File(clean_path, "w", libver="v108") as f_clean:
        # libver v108: attribute arrays larger than 64 KiB (many images) go to dense attribute storage.
        files = {"noisy": f_noisy, "clean": f_clean}
        dsets = {}
        for kind, fh in files.items():
            fh.attrs.update(file_attrs)
            fh.attrs["content"] = kind
            dsets[kind] = fh.create_dataset(
                RAW_DATASET, shape=(n, size, size, 1), dtype=F32, chunks=(1, size, size, 1), track_times=False
            )
        attrs: dict[str, list] = {name: [] for name, *_ in _PER_IMAGE_ATTRS}
        row = 0
        for noisy, clean, chunk_attrs in chunks:
            dsets["noisy"][row : row + len(noisy), :, :, 0] = noisy
            dsets["clean"][row : row + len(clean), :, :, 0] = clean
            for name in attrs:
                attrs[name] += chunk_attrs[name]
            row += len(noisy)
            bar.update(len(noisy))
        assert row == n, (row, n)
        for name, dtype, _, kind in _PER_IMAGE_ATTRS:
            dsets[kind].attrs[name] = np.asarray(attrs[name], dtype=dtype)
        dsets["noisy"].attrs["dead_pixel_fraction"] = F32(kwargs["dead_pixel_fraction"])
        dsets["noisy"].attrs["units"] = (
            "values: electron counts / dose; dose: electrons per pixel at the beam "
            "centre; beam_center_yx, beam_sigma: pixels"
        )


# --------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------


def benchmark(n: int = 512, workers: int = 1, image_size: int = 256) -> float:
    """Pairs per second of :func:`write_dataset` (HDF5 writing included) for ``n`` pairs (80 % train, 20 % test)
    into a temporary folder that is removed afterwards."""
    n_test = max(1, n // 5)
    with tempfile.TemporaryDirectory(prefix="emdenoise-synth-bench-") as tmp:
        start = time.perf_counter()
        write_dataset(
            Path(tmp),
            seed=0,
            train_images=max(1, n - n_test),
            test_images=n_test,
            image_size=image_size,
            workers=workers,
        )
        elapsed = time.perf_counter() - start
    return (max(1, n - n_test) + n_test) / elapsed


if __name__ == "__main__":
    _n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    _workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    print(f"{benchmark(_n, _workers):.1f} pairs/s ({_n} pairs of 256 x 256, workers={_workers})")
