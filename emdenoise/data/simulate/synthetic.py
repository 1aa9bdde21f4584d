"""Synthetic em_graphene_sim-like image pairs from the physics of HRTEM: atoms, lens, detector, beam, shot noise.

The real benchmark data were simulated with MULTEM from molecular-dynamics coordinates; that pipeline is not
public. This module simulates images the same way in spirit, cheaply enough to make thousands of pairs in a
few minutes, written in exactly the raw em_graphene_sim layout (:mod:`emdenoise.layout`) so that real and
synthetic data go through the same code. Generator version 2; version 1 (plane-wave fringes as amplitude
contrast) is gone.

Clean image (:func:`clean_image`; flat illumination, mean about 1, vacuum exactly 1)::

    atoms (scenes.draw_scene) -> V_z (physics.projected_potential) -> exp(i sigma V_z) -> lens (physics.ctf)
        -> |psi|^2 -> detector MTF (physics.detector_mtf)

with per image a log-uniform pixel size in [pixel_size_min, pixel_size_max] A/px, optics drawn by
:func:`emdenoise.data.simulate.physics.draw_optics` (``optics_regime``), a counting detector (pixel MTF only,
``COUNTING_DETECTOR_FRACTION`` of the images) or a scintillator (an extra Gaussian spread of
``SCINTILLATOR_BLUR_PX``), and a specimen of ``material`` (:data:`emdenoise.data.simulate.scenes.MATERIALS`). The field
is simulated with a margin of :func:`delocalisation_px` (at most a quarter of the side) around the image and
cropped, so the FFT's periodic wrap-around stays out of the image. The lattice columns inside the image are
recorded (pixel coordinates of the image, vacancies flagged).

Noisy image (:func:`add_noise`)::

    noisy = Poisson(dose * beam * clean) / dose,  then dead pixels set to 0

``beam`` is a 2-D Gaussian with peak 1 (sigma 0.3-0.6 of the field, centre anywhere in [-0.1, 1.1] of the
field, so sometimes off the image), ``dose`` the electrons per pixel at the beam centre (log-uniform between
``dose_min`` and ``dose_max``; rounded to float32 and stored, so ``noisy * dose`` are whole counts).

Determinism: image ``i`` of split ``split`` is drawn from its own generator,
``SeedSequence(seed, spawn_key=(SPLIT_KEYS[split], i))``, so the files are the same bytes whatever the number
of worker processes or the chunking.

Speed: FFTs on fields of about 320 x 320 (scipy.fft, one thread per worker), scenes built with vectorised
numpy; about 17 ms of one core per 256 x 256 pair. Run ``python -m emdenoise.data.simulate.synthetic [N] [WORKERS]`` to
measure pairs/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from scipy import fft as sfft

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # optional: without it BLAS may start threads (much slower on a busy machine, same results)
    ThreadpoolController = None

from emdenoise.data.simulate import physics, scenes
from emdenoise.layout import GENERALISATION_SPLIT, RAW_DATASET, RAW_FILES
from emdenoise.log import progress
from emdenoise.outputs import Transaction, atomic_path

GENERATOR_VERSION = "2"  # 1: the plane-wave cartoon (removed); 2: atoms, projected potential, lens, detector

RENDERERS = ("fast", "abtem")  # clean_image's image formation: physics.py, or abTEM's multislice
SPLIT_KEYS = {"train": 0, "test": 1, GENERALISATION_SPLIT: 2}
SCENES = ("random", "lattice", "vacuum", "amorphous")
COUNTING_DETECTOR_FRACTION = 0.6  # the others: a scintillator with a Gaussian spread of SCINTILLATOR_BLUR_PX
SCINTILLATOR_BLUR_PX = (0.3, 1.0)

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
# Beam and noise
# --------------------------------------------------------------------------------------------------------------


def beam_profile(size: int, center_yx, sigma_px: float) -> np.ndarray:
    """2-D Gaussian beam with peak 1 at ``center_yx`` (row, column in px; may lie outside), float32."""
    ax = np.arange(size, dtype=np.float64)
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
# Clean images: atoms -> projected potential -> exit wave -> lens -> detector
# --------------------------------------------------------------------------------------------------------------


def draw_pixel_size(rng: np.random.Generator, pixel_size_min: float, pixel_size_max: float) -> float:
    """Log-uniform pixel size in [min, max] A/px, rounded to float32 (as recorded)."""
    if pixel_size_max <= pixel_size_min:
        return float(F32(pixel_size_min))
    value = math.exp(rng.uniform(math.log(pixel_size_min), math.log(pixel_size_max)))
    return float(np.clip(F32(value), F32(pixel_size_min), F32(pixel_size_max)))


def draw_detector_blur(rng: np.random.Generator) -> float:
    """Detector spread in pixels: 0 (a counting detector, pixel aperture only) with probability
    ``COUNTING_DETECTOR_FRACTION``, otherwise a scintillator's Gaussian spread in ``SCINTILLATOR_BLUR_PX``."""
    if rng.random() < COUNTING_DETECTOR_FRACTION:
        return 0.0
    return float(F32(rng.uniform(*SCINTILLATOR_BLUR_PX)))


def delocalisation_px(optics: physics.Optics, pixel_size: float) -> int:
    """How far (px) the lens spreads detail: ``lambda |df| k + |Cs| lambda^3 k^3`` at the highest frequency it
    passes (where the envelopes fall below exp(-2), or the aperture, or the potential's band limit)."""
    k = np.linspace(0.0, (2 / 3) * 0.5 / pixel_size, 512)
    passed = np.abs(physics.ctf(k, optics)) > math.exp(-2)
    k_max = float(k[passed].max())
    lam = optics.wavelength
    reach = lam * abs(optics.defocus_angstrom) * k_max + abs(optics.cs_mm) * 1e7 * lam**3 * k_max**3
    return int(math.ceil(reach / pixel_size))


def clean_image(
    rng,
    image_size: int = 256,
    *,
    material: str = "graphene",
    optics_regime: str = "mixed",
    pixel_size_min: float = 0.12,
    pixel_size_max: float = 0.3,
    scene: str = "random",
    optics: physics.Optics | None = None,
    pixel_size: float | None = None,
    renderer: str = "fast",
    structure: str = "none",
    oversampling: int = 2,
) -> tuple[np.ndarray, dict]:
    """A clean image (float32, image_size x image_size, mean about 1, vacuum 1) and a dict describing it.

    Draws the pixel size, the optics (:func:`emdenoise.data.simulate.physics.draw_optics`), the detector and the
    specimen
    (:func:`emdenoise.data.simulate.scenes.draw_scene`, ``scene`` its kind) over the image plus a margin of
    :func:`delocalisation_px` (at most a quarter of the side) on each side, so that what the lens spreads in
    from outside the field is there; the FFT's wrap-around only reaches the margin, which is cut off. ``optics``
    and ``pixel_size`` fix those instead of drawing them (the draws still happen). ``renderer``: ``fast``
    (:mod:`emdenoise.data.simulate.physics`) or ``abtem`` (:mod:`emdenoise.data.simulate.abtem_source`, abTEM's
    multislice on a grid
    ``oversampling`` times finer); ``structure``: a structure file (:func:`~emdenoise.data.simulate.abtem_source.
    structure_scene`) instead of the scenes of ``material`` (``none``).

    ``info``: ``pixel_size``, ``voltage_kv``, ``defocus_angstrom``, ``cs_mm``, ``focal_spread_angstrom``,
    ``convergence_mrad``, ``aperture_mrad``, ``detector_blur_px``, the scene's description, and ``atoms``: the
    lattice columns inside the image, ``yx`` (M, 2) float32 in pixels of the image, ``vacant`` (M,) uint8 and
    ``z`` (M,) uint8.
    """
    rng = as_rng(rng)
    drawn_pixel = draw_pixel_size(rng, pixel_size_min, pixel_size_max)
    drawn_optics = physics.draw_optics(rng, optics_regime)
    blur = draw_detector_blur(rng)
    pixel = drawn_pixel if pixel_size is None else float(pixel_size)
    optics = drawn_optics if optics is None else optics
    margin = min(max(delocalisation_px(optics, pixel), 4), image_size // 4)
    padded = int(sfft.next_fast_len(image_size + 2 * margin, real=True))
    margin = (padded - image_size) // 2
    if structure != "none":
        from emdenoise.data.simulate import abtem_source

        specimen = abtem_source.structure_scene(abtem_source.cached_structure(structure), padded, pixel, rng)
    else:
        specimen = scenes.draw_scene(rng, padded, pixel, material, kind=scene)
    if renderer == "abtem":
        from emdenoise.data.simulate import abtem_source

        full = abtem_source.render_scene(specimen, optics, detector_blur_px=blur, oversampling=oversampling)
    else:
        potential = physics.projected_potential(specimen.atoms_yx_A, specimen.z, (padded, padded), pixel)
        full = physics.image(potential, optics, pixel, detector_blur_px=blur)
    clean = np.ascontiguousarray(full[margin : margin + image_size, margin : margin + image_size])
    np.maximum(clean, 0, out=clean)

    yx = specimen.columns_yx_A / pixel - margin
    inside = np.all((yx >= -0.5) & (yx < image_size - 0.5), axis=1)
    info = {k: v for k, v in specimen.info.items() if k not in ("material", "kind", "heights_A")}
    info["vacancies"] = int(specimen.columns_vacant[inside].sum())  # in the image, not the margin
    info.update(dataclasses.asdict(optics))  # voltage_kv, defocus_angstrom, cs_mm, focal_spread_angstrom, ...
    info.update(
        material=material,
        pixel_size=pixel,
        detector_blur_px=blur,
        margin_px=margin,
        atoms={
            "yx": yx[inside].astype(F32),
            "vacant": specimen.columns_vacant[inside].astype(np.uint8),
            "z": specimen.columns_z[inside].astype(np.uint8),
        },
    )
    return clean, info


@_one_blas_thread
def make_pair(
    rng,
    *,
    image_size: int = 256,
    dose_min: float = 5.0,
    dose_max: float = 100.0,
    dead_pixel_fraction: float = 0.001,
    dose: float | None = None,
    beam_center_yx=None,
    beam_sigma: float | None = None,
    **image: Any,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One (noisy, clean, info) pair, float32 (image_size, image_size).

    ``rng``: a Generator, SeedSequence or int. ``image``: the keywords of :func:`clean_image` (``material``,
    ``optics_regime``, ``pixel_size_min``, ``pixel_size_max``, ``scene``, ``optics``, ``pixel_size``,
    ``renderer``, ``structure``, ``oversampling``).
    ``dose``, ``beam_center_yx`` and ``beam_sigma`` fix those values instead of drawing them (the draws still
    happen, so the rest of the pair does not change). ``info`` holds what :func:`clean_image` describes plus
    ``dose``, ``beam_center_yx``, ``beam_sigma`` and ``dead_pixels`` (their count).
    """
    rng = as_rng(rng)
    clean, info = clean_image(rng, image_size, **image)
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
    ("pixel_size", np.float32, "pixel_size", "noisy"),
    ("voltage_kv", np.float32, "voltage_kv", "noisy"),
    ("defocus_angstrom", np.float32, "defocus_angstrom", "noisy"),
    ("cs_mm", np.float32, "cs_mm", "noisy"),
    ("focal_spread_angstrom", np.float32, "focal_spread_angstrom", "noisy"),
    ("convergence_mrad", np.float32, "convergence_mrad", "noisy"),
    ("aperture_mrad", np.float32, "aperture_mrad", "noisy"),
    ("detector_blur_px", np.float32, "detector_blur_px", "noisy"),
    ("n_grains", np.int8, "n_grains", "clean"),
    ("vacancies", np.int32, "vacancies", "clean"),
    ("contamination_atoms", np.int32, "contamination_atoms", "clean"),
    ("material_fraction", np.float32, "material_fraction", "clean"),
)
# The true lattice columns, as datasets of the clean file (rows atom_offsets[i]:atom_offsets[i+1] are image i's).
ATOM_DATASETS = {"atom_yx": np.float32, "atom_vacant": np.uint8, "atom_z": np.uint8}
_ATOM_KEYS = {"atom_yx": "yx", "atom_vacant": "vacant", "atom_z": "z"}
ATOM_UNITS = (
    "atom_yx: (row, column) in pixels of the image, pixel centres at integer coordinates; atom_vacant: 1 for a "
    "lattice site whose atoms were removed; atom_z: atomic number of the heaviest atom of the column; image i's "
    "columns are rows atom_offsets[i]:atom_offsets[i+1]"
)


@_one_blas_thread
def _make_chunk(job: tuple) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Worker: pairs ``start .. stop-1`` of one split, stacked, plus their per-image attributes and atoms.

    ``cache`` (the job's sixth item, or None): the chunk's file of a resumable run (:func:`_save_chunk`): read
    when a finished one is there, written once the chunk is made.
    """
    seed, split, start, stop, kwargs, cache = job
    if cache is not None:
        found = _load_chunk(Path(cache))
        if found is not None:
            return found
    size = kwargs["image_size"]
    noisy = np.empty((stop - start, size, size), F32)
    clean = np.empty_like(noisy)
    attrs: dict[str, list] = {name: [] for name, *_ in _PER_IMAGE_ATTRS}
    atoms: dict[str, list] = {name: [] for name in ATOM_DATASETS}
    for j, index in enumerate(range(start, stop)):
        noisy[j], clean[j], info = make_pair(image_seed(seed, split, index), **kwargs)
        for name, _, key, _ in _PER_IMAGE_ATTRS:
            attrs[name].append(info[key])
        for name, key in _ATOM_KEYS.items():
            atoms[name].append(info["atoms"][key])
    if cache is not None:
        _save_chunk(Path(cache), (noisy, clean, attrs, atoms))
    return noisy, clean, attrs, atoms


def _save_chunk(path: Path, chunk: tuple) -> None:
    """One finished chunk as a .npz of plain arrays (no pickles), written atomically: images, per-image
    attributes (``attr:<name>``) and atom columns (``atom:<name>``, concatenated, with ``atom_counts``)."""
    noisy, clean, attrs, atoms = chunk
    arrays = {"noisy": noisy, "clean": clean, "atom_counts": np.array([len(z) for z in atoms["atom_z"]], np.int64)}
    arrays.update({f"attr:{name}": np.asarray(values) for name, values in attrs.items()})
    arrays.update({f"atom:{name}": np.concatenate(values) for name, values in atoms.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _load_chunk(path: Path) -> tuple | None:
    """The chunk :func:`_save_chunk` wrote, or None when there is none (or it cannot be read: made again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            counts = data["atom_counts"]
            bounds = np.concatenate([[0], np.cumsum(counts)])
            attrs = {name: data[f"attr:{name}"].tolist() for name, *_ in _PER_IMAGE_ATTRS}
            atoms = {
                name: [data[f"atom:{name}"][a:b] for a, b in zip(bounds[:-1], bounds[1:])] for name in ATOM_DATASETS
            }
            return data["noisy"], data["clean"], attrs, atoms
    except (OSError, ValueError, KeyError):
        return None


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
    material: str = "graphene",
    optics: str = "mixed",
    pixel_size_min: float = 0.12,
    pixel_size_max: float = 0.3,
    generalisation_count: int = 0,
    generalisation_material: str = "mos2",
    generalisation_optics: str = "mixed",
    renderer: str = "fast",
    structure: str = "none",
    oversampling: int = 2,
    resume_dir: Path | None = None,
    workers: int = 0,
    log=None,
    tx: Transaction | None = None,
) -> list[Path]:
    """Write ``out_dir/{train,test}/graphene_img_{noise,clean}.h5`` (dataset ``images``, float32,
    (N, S, S, 1); noisy row i pairs with clean row i) and, when ``generalisation_count`` > 0,
    ``out_dir/generalisation/`` (the same two files, of ``generalisation_material`` through
    ``generalisation_optics``); return the files written.

    Attributes: on the noisy ``images``: ``dose`` (N,) electrons per pixel at the beam centre,
    ``beam_center_yx`` (N, 2) px, ``beam_sigma`` (N,) px, ``dead_pixels`` (N,) count, ``pixel_size`` (N,) A/px,
    ``voltage_kv``, ``defocus_angstrom``, ``cs_mm``, ``focal_spread_angstrom``, ``convergence_mrad``,
    ``aperture_mrad``, ``detector_blur_px`` (N,) each, ``dead_pixel_fraction`` (the parameter); on the clean
    ``images``: ``n_grains``, ``vacancies``, ``contamination_atoms``, ``material_fraction`` (N,) each. Datasets
    of the clean file: the true lattice columns ``atom_offsets`` int64 (N+1,), ``atom_yx`` float32 (M, 2),
    ``atom_vacant`` uint8 (M,), ``atom_z`` uint8 (M,) (see :data:`ATOM_UNITS`). On both files: generator name,
    version, seed, split, material and parameters. Same seed, same bytes, whatever ``workers`` (0: one per CPU;
    1: in this process). The files appear together, when all are complete; a failure leaves the files that were
    there before. Worker processes are spawned, so a script calling this with ``workers != 1`` needs the usual
    ``if __name__ == "__main__":`` guard; ``python -m emdenoise`` and the ``emdenoise`` command have it.

    ``tx``: a :class:`~emdenoise.outputs.Transaction` of the caller's (download's, which commits MANIFEST.json
    after the files): the files are written into its staging and committed with it, by the caller.
    Without one the function commits its own.

    ``renderer``, ``structure`` (train and test only; the generalisation split keeps its material's scenes),
    ``oversampling``: see :func:`clean_image`. ``resume_dir``: a folder for the finished chunks of a slow
    (abTEM) run: a rerun with the same settings makes only the chunks missing there; the caller removes it.
    """
    out_dir = Path(out_dir)
    counts = {"train": int(train_images), "test": int(test_images)}
    for split, n in counts.items():
        if n < 1:
            raise ValueError(f"{split}_images must be >= 1, got {n}")
    if generalisation_count < 0:
        raise ValueError(f"generalisation_count must be >= 0, got {generalisation_count}")
    if generalisation_count:
        counts[GENERALISATION_SPLIT] = int(generalisation_count)
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 0 < dose_min <= dose_max:
        raise ValueError(f"expected 0 < dose_min <= dose_max, got {dose_min}, {dose_max}")
    if not 0 <= dead_pixel_fraction <= 1:
        raise ValueError(f"dead_pixel_fraction must be in [0, 1], got {dead_pixel_fraction}")
    if not 0 < pixel_size_min <= pixel_size_max:
        raise ValueError(f"expected 0 < pixel_size_min <= pixel_size_max, got {pixel_size_min}, {pixel_size_max}")
    for name, value in (("material", material), ("generalisation_material", generalisation_material)):
        if value not in scenes.MATERIALS:
            raise ValueError(f"{name} must be one of {', '.join(scenes.MATERIALS)}, got {value!r}")
    for name, value in (("optics", optics), ("generalisation_optics", generalisation_optics)):
        if value not in physics.REGIMES:
            raise ValueError(f"{name} must be one of {', '.join(physics.REGIMES)}, got {value!r}")
    common: dict[str, Any] = dict(
        image_size=int(image_size),
        dose_min=float(dose_min),
        dose_max=float(dose_max),
        dead_pixel_fraction=float(dead_pixel_fraction),
        pixel_size_min=float(pixel_size_min),
        pixel_size_max=float(pixel_size_max),
    )
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
    if renderer != "fast":  # the fast generator's files stay as they were
        common.update(renderer=renderer, oversampling=int(oversampling))
    split_kwargs = {
        split: dict(
            common,
            material=generalisation_material if split == GENERALISATION_SPLIT else material,
            optics_regime=generalisation_optics if split == GENERALISATION_SPLIT else optics,
        )
        for split in counts
    }
    if structure != "none":
        for split in ("train", "test"):
            split_kwargs[split]["structure"] = str(structure)
    workers = _worker_count(workers)
    total = sum(counts.values())
    chunk = max(1, min(32, math.ceil(total / (4 * workers))))
    bounds = [(split, start, min(start + chunk, n)) for split, n in counts.items() for start in range(0, n, chunk)]
    jobs = [
        (
            int(seed),
            split,
            start,
            stop,
            split_kwargs[split],
            None if resume_dir is None else str(Path(resume_dir) / f"{split}-{start:07d}-{stop:07d}.npz"),
        )
        for split, start, stop in bounds
    ]
    if log is not None:
        log.info(
            "%s: %s pairs of %d x %d px of %s, seed %d, dose %g-%g e/px, %g-%g A/px, %s optics, %d worker(s)",
            "abtem" if renderer == "abtem" else "synthetic",
            " + ".join(f"{n} {split}" for split, n in counts.items()),
            image_size,
            image_size,
            material,
            seed,
            dose_min,
            dose_max,
            pixel_size_min,
            pixel_size_max,
            optics,
            workers,
        )

    paths = {(split, kind): out_dir / split / RAW_FILES[kind] for split in counts for kind in ("noisy", "clean")}
    # All files are staged and committed together, so a failure leaves whatever dataset was there before
    # intact (never a new train split beside an old test split).
    with contextlib.ExitStack() as stack:
        if tx is None:
            tx = stack.enter_context(Transaction())
        tmp = {key: stack.enter_context(tx.writing(path)) for key, path in paths.items()}
        if GENERALISATION_SPLIT not in counts:  # a generalisation split of an earlier run would be stale
            for name in RAW_FILES.values():
                tx.remove(out_dir / GENERALISATION_SPLIT / name)
        pool = _pool_context().Pool(workers) if workers > 1 and len(jobs) > 1 else None
        try:
            results = pool.imap(_make_chunk, jobs) if pool is not None else map(_make_chunk, jobs)
            with progress(total=total, desc="abtem" if renderer == "abtem" else "synthetic", unit="pair") as bar:
                for split in counts:
                    n_split_jobs = sum(1 for job in jobs if job[1] == split)
                    _write_split(
                        tmp[split, "noisy"],
                        tmp[split, "clean"],
                        split,
                        counts[split],
                        seed,
                        split_kwargs[split],
                        (next(results) for _ in range(n_split_jobs)),
                        bar,
                    )
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    written = list(paths.values())
    if log is not None:
        log.info("%s: wrote %s", "abtem" if renderer == "abtem" else "synthetic", ", ".join(str(p) for p in written))
    return written


def _write_split(noisy_path: Path, clean_path: Path, split: str, n: int, seed: int, kwargs: dict, chunks, bar) -> None:
    """Write one split's two HDF5 files from an iterator of chunks (see :func:`_make_chunk`)."""
    size = kwargs["image_size"]
    file_attrs = {
        # stable identifiers written into the files (the modules' names before the package was laid out by concern)
        "generator": "emdenoise.data.abtem_source" if kwargs.get("renderer") == "abtem" else "emdenoise.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "split": split,
        "material": f"structure:{Path(kwargs['structure']).name}" if "structure" in kwargs else kwargs["material"],
        "parameters": json.dumps(dict(kwargs, seed=int(seed)), sort_keys=True),
    }
    if kwargs.get("renderer") == "abtem":
        from emdenoise.data.simulate import abtem_source

        file_attrs["abtem_version"] = abtem_source.abtem_version()
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
        atoms: dict[str, list] = {name: [] for name in ATOM_DATASETS}
        row = 0
        for noisy, clean, chunk_attrs, chunk_atoms in chunks:
            dsets["noisy"][row : row + len(noisy), :, :, 0] = noisy
            dsets["clean"][row : row + len(clean), :, :, 0] = clean
            for name in attrs:
                attrs[name] += chunk_attrs[name]
            for name in atoms:
                atoms[name] += chunk_atoms[name]
            row += len(noisy)
            bar.update(len(noisy))
        assert row == n, (row, n)
        for name, dtype, _, kind in _PER_IMAGE_ATTRS:
            dsets[kind].attrs[name] = np.asarray(attrs[name], dtype=dtype)
        dsets["noisy"].attrs["dead_pixel_fraction"] = F32(kwargs["dead_pixel_fraction"])
        dsets["noisy"].attrs["units"] = (
            "values: electron counts / dose; dose: electrons per pixel at the beam centre; beam_center_yx, "
            "beam_sigma, detector_blur_px: pixels; pixel_size: angstrom per pixel; defocus_angstrom (negative: "
            "underfocus), focal_spread_angstrom: angstrom; cs_mm: mm; convergence_mrad, aperture_mrad: mrad"
        )
        offsets = np.zeros(n + 1, np.int64)
        offsets[1:] = np.cumsum([len(z) for z in atoms["atom_z"]])
        f_clean.create_dataset("atom_offsets", data=offsets, track_times=False)
        for name, atom_dtype in ATOM_DATASETS.items():
            data = np.concatenate(atoms[name]).astype(atom_dtype)
            f_clean.create_dataset(name, data=data, chunks=True if len(data) else None, track_times=False)
        f_clean.attrs["atom_units"] = ATOM_UNITS


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
