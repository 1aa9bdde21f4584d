"""The "Real data" results page: every real micrograph we may read through every method ``denoise`` names.

    python -m emdenoise.study.realdata_page [--realdata DIR] [--out docs/results/real-data] [--page PAGE.md]

(``run/realdata.sh`` runs it as the page was made; this module measures, :mod:`emdenoise.study.realdata_page`
draws and writes.) The files: the STEM micrographs of ``../shared/realdata``
(an HAADF frame of SrTiO3, a five-frame ABF movie of SrTiO3; read in place, never copied) and the DM3 and Velox
EMD files of the temul-toolkit wheel (:mod:`emdenoise.data.acquire.examples`, fetched into the cache). Each is
read with the readers ``denoise`` uses (:func:`emdenoise.load`: the pixel size from the file), a region of at
most :data:`REGION` px is denoised by the zoo model (as ``denoise`` applies it: each frame brought to the
model's counts / dose level and back, :mod:`emdenoise.inference.levels`), by the zoo model on input rescaled to
its training range and fed as it is (:func:`zoo_rescaled`), and by every classical filter with its defaults
(:func:`emdenoise.denoise`), each timed, and checked against its input
(:func:`emdenoise.evaluation.consistency.check`). The ABF movie is registered
(:mod:`emdenoise.data.prepare.registration`) and every estimate of its first frame compared with the mean of the
other four frames, aligned: their noise is independent of the first frame's, so the estimate nearer the signal
correlates better with it.

Two measurements need no clean image: each file's detector offset and gain, fitted to its own noise
(:func:`emdenoise.classical.detector.describe`), and each method's score without clean truth
(:func:`emdenoise.score`: the movie's registered frame halves, a single frame's binomial split of its counts),
with the check of that score's assumptions (:func:`score_sample`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import emdenoise
from emdenoise.errors import EmdError

ZOO = "zoo:hrtem-ffdnet"
ZOO_RESCALED = "zoo:hrtem-ffdnet, rescaled input"
STEM_ZOO = {"haadf": "zoo:haadf-unet", "abf": "zoo:abf-unet"}  # the zoo's model for each file's imaging mode
REGION = 512  # the side of the region denoised (and timed) in each file
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Spec:
    """One real file: where it is (``realdata`` folder or the temul ``examples``), what it shows, and the region
    denoised (top, left; None: the centre), its imaging mode (``haadf`` or ``abf``: which STEM zoo model runs on
    it, :data:`STEM_ZOO`). ``publish``: whether the file's licence lets the documentation show
    pictures of it (MIT: yes; no licence, or GPL-3 package data in an Apache-2.0 project: no, numbers only)."""

    key: str
    title: str
    folder: str
    name: str
    what: str
    source: str
    region: tuple[int, int] | None = None
    publish: bool = False
    imaging: str = "haadf"


SPECS = (
    Spec(
        "haadf",
        "HAADF-STEM, SrTiO3 [100]",
        "realdata",
        "srtio3_haadf_osiris/Tecnai_Osiris_SrTiO3.tif",
        "FEI Tecnai Osiris, 200 kV; one raw frame, 512x512 uint16 TIFF",
        "lukmuk/r_em_workflows (MIT)",
        publish=True,
    ),
    Spec(
        "abf",
        "ABF-STEM movie, SrTiO3",
        "realdata",
        "srtio3_abf_movie/stem_abf_data_imagestack.hspy",
        "five frames of one area, 5x512x512 uint16, HyperSpy .hspy",
        "hyperspy/hyperspy-demos (no licence file: read, never copied)",
        imaging="abf",
    ),
    Spec(
        "mos2",
        "HAADF-STEM, Se-implanted MoS2",
        "examples",
        "example_Se_implanted_MoS2.dm3",
        "60 kV, 1024x1024 uint32, Gatan DM3",
        "temul-toolkit 0.1.9 wheel (GPL-3)",
    ),
    Spec(
        "au",
        "HAADF-STEM, Au nanoparticle",
        "examples",
        "example_Au_nanoparticle.emd",
        "FEI Titan, 300 kV, 2048x2048 uint16, Velox EMD",
        "temul-toolkit 0.1.9 wheel (GPL-3)",
        region=(620, 1220),  # a particle with its lattice (the centre of the frame is the support film)
    ),
)


@dataclass
class Outcome:
    """One method on one file's region: the estimate, its time, the consistency check's summary, and (the ABF
    movie) its correlation with the mean of the other frames."""

    method: str
    image: np.ndarray | None = field(default=None, repr=False)
    seconds: float | None = None
    check: dict[str, Any] = field(default_factory=dict)
    frame_correlation: float | None = None
    score: dict[str, Any] = field(default_factory=dict)  # without clean truth: upsnr, its se, the paired margin
    note: str = ""


@dataclass
class Sample:
    """One real file as read (shape, dtype, calibration) and the region denoised; ``reference``: the mean of
    the ABF movie's other frames, aligned to the first."""

    spec: Spec
    path: Path
    shape: tuple[int, ...]
    dtype: str
    pixel_size: float | None
    calibration: str
    region: np.ndarray = field(repr=False)
    reference: np.ndarray | None = field(default=None, repr=False)
    registration: dict[str, Any] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    movie: np.ndarray | None = field(default=None, repr=False)  # the registered frames' regions (a movie)
    detector: dict[str, Any] = field(default_factory=dict)  # the fitted offset and gain, or why refused
    score_check: dict[str, Any] | None = None  # the check of the scores' assumptions (the noisy input's uMSE)
    score_kind: str = ""
    noisy_score: list[float | None] = field(default_factory=list)  # the noisy input's uPSNR and its se


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images of one shape."""
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


def _region(frame: np.ndarray, where: tuple[int, int] | None) -> np.ndarray:
    h, w = frame.shape
    side_h, side_w = min(REGION, h), min(REGION, w)
    top, left = where or ((h - side_h) // 2, (w - side_w) // 2)
    return frame[top : top + side_h, left : left + side_w]


def read_sample(spec: Spec, path: Path) -> Sample:
    """The file read as ``denoise`` reads it; a movie is registered and its first frame is the one denoised."""
    micrograph = emdenoise.load(path)
    frames = micrograph.image.reshape(-1, *micrograph.image.shape[-2:])
    sample = Sample(
        spec,
        path,
        tuple(micrograph.image.shape),
        str(micrograph.image.dtype),
        micrograph.pixel_size,
        micrograph.calibration,
        _region(frames[0], spec.region),
    )
    if len(frames) > 1:
        register_movie(sample, frames)
    return sample


def register_movie(sample: Sample, frames: np.ndarray) -> None:
    """The drift of every frame to the first, the correlations with the first before and after it is undone,
    and the aligned mean of the other frames as the reference of the first."""
    from emdenoise.data.prepare import registration

    movie = [f.astype(np.float64) for f in frames]
    start = time.perf_counter()
    shifts = registration.register(movie)
    seconds = time.perf_counter() - start
    aligned = registration.align(movie, shifts)
    sample.registration = {
        "shifts_px": np.round(shifts, 2).tolist(),
        "seconds": round(seconds, 2),
        "correlation_before": [round(correlation(movie[0], f), 3) for f in movie[1:]],
        "correlation_after": [round(correlation(aligned[0], f), 3) for f in aligned[1:]],
        "neighbours_after": [round(correlation(a, b), 3) for a, b in zip(aligned, aligned[1:])],
        "common_area": list(aligned[0].shape),
        "best_whole_px": [list(best_whole_drift(movie[0], f)) for f in movie[1:]],
    }
    sample.region = _region(aligned[0].astype(frames.dtype), None)
    sample.reference = _region(np.mean(aligned[1:], axis=0), None)
    sample.movie = np.stack([_region(frame, None) for frame in aligned])


def best_whole_drift(first: np.ndarray, other: np.ndarray, reach: int = 12) -> tuple[int, int]:
    """The whole-pixel drift (dy, dx), within ``reach`` px, at which ``other`` correlates best with ``first`` in
    real space (the brute-force answer the registration is checked against)."""
    from emdenoise.data.prepare import registration

    best, where = -2.0, (0, 0)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            a, b = registration.align([first, other], np.array([[0, 0], [dy, dx]]))
            value = correlation(a, b)
            if value > best:
                best, where = value, (dy, dx)
    return where


def methods(spec: Spec | None = None) -> list[str]:
    """The STEM zoo model of ``spec``'s imaging mode (None: both), the HRTEM zoo model (as it is, and on rescaled
    input) and every classical filter, in the schema's order."""
    from emdenoise.classical import names

    stem = [STEM_ZOO[spec.imaging]] if spec is not None else list(STEM_ZOO.values())
    return [*stem, ZOO, ZOO_RESCALED, *names.ALL]


def zoo_rescaled(frame: np.ndarray, pixel_size: float | None) -> np.ndarray:
    """What a user could try with detector values: the frame mapped linearly onto the zoo model's training range
    (mean and standard deviation of its noisy inputs), denoised, and the output mapped back by the least-squares
    gain and offset that fit it to the frame (``frame_level: as_is``: the rescaling instead of the model's level)."""
    from emdenoise import zoo
    from emdenoise.io import modelfile

    _, meta = modelfile.load_model(zoo.get(ZOO).model_file, "cpu")
    mean, std = meta["normalisation"]["noisy"]["mean"], meta["normalisation"]["noisy"]["std"]
    x = np.asarray(frame, np.float64)
    scaled = (x - x.mean()) / (x.std() or 1.0) * std + mean
    micrograph = emdenoise.Micrograph(scaled.astype(np.float32), pixel_size)
    out = emdenoise.denoise(micrograph, ZOO, frame_level="as_is", max_deviation=0)
    gain, offset = np.polyfit(out.image.ravel().astype(np.float64), x.ravel(), 1)
    return (gain * out.image + offset).astype(np.float32)


def run_method(sample: Sample, method: str) -> Outcome:
    """``method`` on the sample's region: timed (the denoising alone), checked, compared with the reference."""
    from emdenoise.evaluation import consistency

    micrograph = emdenoise.Micrograph(sample.region, sample.pixel_size, sample.calibration, sample.spec.key)
    start = time.perf_counter()
    try:
        if method == ZOO_RESCALED:
            image = zoo_rescaled(sample.region, sample.pixel_size)
        else:
            image = emdenoise.denoise(micrograph, method, device="cpu", max_deviation=0).image
    except EmdError as exc:  # an optional package missing (bm3d)
        return Outcome(method, note=f"not run here: {str(exc).split(': ')[-1].split(' (')[0]}")
    seconds = time.perf_counter() - start
    check = consistency.check(sample.region, image).summary()
    outcome = Outcome(method, image, seconds, check)
    if sample.reference is not None:
        outcome.frame_correlation = correlation(image, sample.reference)
    return outcome


def score_sample(sample: Sample) -> None:
    """The detector model of the region and every method's score without clean truth (the methods that ran,
    except the rescaled zoo model, which is no method ``denoise`` names): a movie by its registered frame
    halves, a single frame by a binomial split of its counts (through its own detector model where it sits
    on an offset). Scores are at half the file's dose (a half of the frames, or of the counts)."""
    from emdenoise.classical import detector

    sample.detector = detector.describe(sample.region)
    ran = [o.method for o in sample.outcomes if o.image is not None and o.method != ZOO_RESCALED]
    data = sample.movie if sample.movie is not None else sample.region
    kind = "movie" if sample.movie is not None else "split"
    try:
        scores = emdenoise.score(data, ["noisy", *ran], kind=kind, align=False, pixel_size=sample.pixel_size)
    except EmdError as exc:
        sample.score_check = {"refused": str(exc)}
        return
    sample.score_kind, sample.score_check = kind, scores.check
    by = {s.method: s for s in scores.scores}
    for outcome in sample.outcomes:
        found = by.get(outcome.method)
        if found is not None:
            upsnr, se = found.upsnr_pooled, found.upsnr_pooled_se
            margin = scores.margins.get(outcome.method)
            outcome.score = {"upsnr": upsnr, "upsnr_se": se, "umse": found.umse, "margin": margin}
    sample.noisy_score = [by["noisy"].upsnr_pooled, by["noisy"].upsnr_pooled_se]


def warm_up() -> None:
    """Load the zoo model and the filters' packages once, so the timings are of the denoising alone."""
    small = emdenoise.Micrograph(np.random.default_rng(0).poisson(100.0, (64, 64)).astype(np.float32), 0.15)
    for method in methods():
        if method != ZOO_RESCALED:
            try:
                emdenoise.denoise(small, method, device="cpu", max_deviation=0)
            except EmdError:
                pass


def measure(realdata: Path, cache: Path | None = None) -> list[Sample]:
    """Every file of :data:`SPECS` that can be had (the shared folder present, the wheel fetched), every method."""
    from emdenoise.data.acquire import examples

    warm_up()
    samples = []
    for spec in SPECS:
        path = realdata / spec.name if spec.folder == "realdata" else examples.example_files(cache)[spec.name]
        if not path.is_file():
            print(f"skipped {spec.key}: {path} not here", file=sys.stderr)
            continue
        sample = read_sample(spec, path)
        sample.outcomes = [run_method(sample, method) for method in methods(spec)]
        score_sample(sample)
        samples.append(sample)
        print(f"{spec.key}: {len(sample.outcomes)} methods", file=sys.stderr)
    return samples
