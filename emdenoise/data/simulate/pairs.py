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
numpy; about 17 ms of one core per 256 x 256 pair. Run ``python -m emdenoise.data.simulate.writer [N] [WORKERS]`` to
measure pairs/s. The files: :mod:`emdenoise.data.simulate.writer`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from scipy import fft as sfft

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # optional: without it BLAS may start threads (much slower on a busy machine, same results)
    ThreadpoolController = None

from emdenoise.data.simulate import physics, scenes, stem
from emdenoise.layout import GENERALISATION_SPLIT

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

    info = _image_info(specimen, dataclasses.asdict(optics), material, pixel, blur, margin, image_size)
    return clean, info


def _image_info(
    specimen: scenes.Scene,
    optics: dict,
    material: str,
    pixel: float,
    blur: float,
    margin: int,
    image_size: int,
    scan: stem.Scan | None = None,
) -> dict:
    """:func:`clean_image`'s ``info``: the scene's description, the optics and the columns inside the image
    (where a distorted ``scan`` shows them, for STEM)."""
    yx = specimen.columns_yx_A / pixel - margin
    if scan is not None:
        yx = stem.image_positions(scan, image_size, yx)
    inside = np.all((yx >= -0.5) & (yx < image_size - 0.5), axis=1)
    info = {k: v for k, v in specimen.info.items() if k not in ("material", "kind", "heights_A")}
    if material == scenes.MIXED:  # the material drawn for this image, by its code (a per-image attribute)
        material = specimen.material
        info["material_code"] = scenes.MATERIAL_CODES[material]
    info["vacancies"] = int(specimen.columns_vacant[inside].sum())  # in the image, not the margin
    info.update(optics)  # voltage_kv, defocus_angstrom, cs_mm, focal_spread_angstrom, ...
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
    return info


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
    imaging: str = "hrtem",
    stem_settings: dict | None = None,
    **image: Any,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One (noisy, clean, info) pair, float32 (image_size, image_size).

    ``rng``: a Generator, SeedSequence or int. ``image``: the keywords of :func:`clean_image` (``material``,
    ``optics_regime``, ``pixel_size_min``, ``pixel_size_max``, ``scene``, ``optics``, ``pixel_size``,
    ``renderer``, ``structure``, ``oversampling``).
    ``dose``, ``beam_center_yx`` and ``beam_sigma`` fix those values instead of drawing them (the draws still
    happen, so the rest of the pair does not change). ``info`` holds what :func:`clean_image` describes plus
    ``dose``, ``beam_center_yx``, ``beam_sigma`` and ``dead_pixels`` (their count).

    ``imaging``: ``hrtem`` (this function's pairs), ``haadf`` or ``abf`` (:func:`stem_pair`, with
    ``stem_settings`` the keywords of :class:`~emdenoise.data.simulate.stem.StemSettings`), or ``mixed`` (one of
    the three per image). Every ``info`` of a non-``hrtem`` run carries ``imaging_mode`` and the keys of both.
    """
    rng = as_rng(rng)
    mode = stem.draw_mode(rng, imaging)  # draws only for mixed: hrtem pairs stay as they were
    if mode != "hrtem":
        settings = stem.StemSettings(**(stem_settings or {}))
        return stem_pair(rng, mode, settings, image_size=image_size, **image)
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
    if imaging != "hrtem":
        info.update(dict.fromkeys(STEM_INFO_KEYS, math.nan), imaging_mode=stem.MODE_CODES["hrtem"])
        info.update(scan_drift_yx_px=[math.nan, math.nan])
    return noisy, clean, info


# --------------------------------------------------------------------------------------------------------------
# STEM pairs: atoms -> probe-convolved yield (stem.py) -> scan distortions -> detector
# --------------------------------------------------------------------------------------------------------------

# What a STEM image records beyond HRTEM's keys (NaN in the HRTEM images of a mixed set), and the HRTEM keys
# that mean nothing for STEM (NaN there).
STEM_INFO_KEYS = (
    "source_size_angstrom",
    "probe_fwhm_angstrom",
    "detector_offset",
    "detector_gain",
    "read_noise",
    "scan_jitter_px",
    "scan_flyback_px",
)
HRTEM_ONLY_KEYS = ("focal_spread_angstrom", "beam_sigma", "detector_blur_px")


def stem_pair(
    rng: np.random.Generator,
    mode: str,
    settings: stem.StemSettings,
    *,
    image_size: int = 256,
    material: str = "graphene",
    optics_regime: str = "mixed",
    pixel_size_min: float = 0.12,
    pixel_size_max: float = 0.3,
    scene: str = "random",
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One STEM (noisy, clean, info) pair of ``mode`` (``haadf`` or ``abf``), float32 (image_size, image_size).

    The probe optics (:func:`~emdenoise.data.simulate.stem.draw_stem_optics`), the scan distortions and the
    specimen are drawn over the image plus a margin; the yield image (:func:`~emdenoise.data.simulate.stem.
    yield_image`) is sampled where the distorted scan puts the probe; ``dose`` (electrons per probe position,
    log-uniform in [settings.dose_min, settings.dose_max]) electrons per position go through the detector,
    its gain turned down where the brightest pixel would pass 80 % of the range
    (:func:`~emdenoise.data.simulate.stem.fitted_detector`). ``clean`` is the noise-free expectation of
    ``noisy`` in the same units (``settings.units``). The recorded columns are where the distorted scan shows
    them."""
    pixel = draw_pixel_size(rng, pixel_size_min, pixel_size_max)
    optics = stem.draw_stem_optics(rng, optics_regime)
    scan = stem.draw_scan(rng, image_size, settings.jitter_px, settings.drift_px, settings.flyback_px)
    reach = stem.reach_px(optics, pixel) + int(
        math.ceil(settings.drift_px + settings.flyback_px + 4 * settings.jitter_px)
    )
    padded = int(sfft.next_fast_len(image_size + 2 * min(max(reach, 4), image_size // 4), real=True))
    margin = (padded - image_size) // 2
    specimen = scenes.draw_scene(rng, padded, pixel, material, kind=scene)
    probe = stem.make_probe(optics, padded, pixel)
    field = stem.yield_image(specimen.atoms_yx_A, specimen.z, probe, pixel, mode)
    y, x = stem.scan_positions(scan, image_size)
    expected = np.maximum(stem.sample(field, y + margin, x + margin), 0)
    dose = draw_dose(rng, settings.dose_min, settings.dose_max)
    noisy, clean, detector, per_unit = _stem_detect(rng, expected, dose, settings)
    record = dataclasses.asdict(optics) | {"aperture_mrad": optics.convergence_mrad}
    info = _image_info(specimen, record, material, pixel, math.nan, margin, image_size, scan)
    info.update(dict.fromkeys(HRTEM_ONLY_KEYS, math.nan), imaging_mode=stem.MODE_CODES[mode], dose=per_unit)
    info.update(
        beam_center_yx=[math.nan, math.nan],
        dead_pixels=0,
        probe_fwhm_angstrom=probe.fwhm_angstrom,
        detector_offset=detector.offset,
        detector_gain=detector.gain,
        read_noise=detector.read_noise,
        scan_jitter_px=scan.jitter_rms,
        scan_drift_yx_px=list(scan.drift_yx_px),
        scan_flyback_px=scan.flyback_px,
    )
    return noisy, clean, info


def _stem_detect(
    rng: np.random.Generator, expected: np.ndarray, dose: float, settings: stem.StemSettings
) -> tuple[np.ndarray, np.ndarray, stem.Detector, float]:
    """The detector's (noisy, clean) of the yield image ``expected`` at ``dose``, in ``settings.units``, the
    detector used (its gain fitted below saturation) and the dose to record: counts per stored unit
    (``settings.units`` electrons: ``dose``; mean: the image's mean expected counts per pixel, see
    :data:`~emdenoise.data.simulate.stem.UNITS`; detector: ``dose``, recorded as ``probe_dose``)."""
    detector = stem.fitted_detector(settings.detector, float(expected.max()) * dose)
    reading = stem.detect(rng, expected * F32(dose), detector)
    if settings.units == "detector":
        return reading, detector.expected(expected * F32(dose)), detector, dose
    # the same less the offset, per electron of the dose (or per the image's mean expected counts); clean from the
    # yield (float32 offset + a small signal would lose its digits)
    per_unit = dose if settings.units == "electrons" else stem.mean_level(expected, dose)
    scale = detector.gain * per_unit
    noisy = ((reading - F32(detector.offset)) / F32(scale)).astype(F32)
    clean = np.minimum(expected * F32(dose / per_unit), F32((65535 - detector.offset) / scale)).astype(F32)
    return noisy, clean, detector, per_unit
