"""The generator's files: :func:`write_dataset` writes the pairs of :mod:`emdenoise.data.simulate.pairs` in the
raw em_graphene_sim layout (:mod:`emdenoise.layout`), made in chunks by worker processes (the same bytes
whatever their number), staged and committed together; :class:`GeneratorSettings`, what it makes.

Speed: run ``python -m emdenoise.data.simulate.writer [N] [WORKERS] [IMAGING]`` to measure pairs/s
(:func:`benchmark`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emdenoise.config.params import DownloadParams, validate
from emdenoise.data.simulate import scenes
from emdenoise.data.simulate.pairs import F32, GENERATOR_VERSION, RENDERERS, _one_blas_thread, image_seed, make_pair
from emdenoise.data.simulate.stem import StemSettings
from emdenoise.layout import GENERALISATION_SPLIT, RAW_DATASET, RAW_FILES
from emdenoise.log import progress
from emdenoise.outputs import Transaction, atomic_path

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
# What STEM runs (download.imaging not hrtem) record besides: NaN where a value means nothing for an image's mode.
_STEM_ATTRS = (
    ("imaging_mode", np.int8, "imaging_mode", "noisy"),
    ("source_size_angstrom", np.float32, "source_size_angstrom", "noisy"),
    ("probe_fwhm_angstrom", np.float32, "probe_fwhm_angstrom", "noisy"),
    ("detector_offset", np.float32, "detector_offset", "noisy"),
    ("detector_gain", np.float32, "detector_gain", "noisy"),
    ("read_noise", np.float32, "read_noise", "noisy"),
    ("scan_jitter_px", np.float32, "scan_jitter_px", "noisy"),
    ("scan_drift_yx_px", np.float32, "scan_drift_yx_px", "noisy"),
    ("scan_flyback_px", np.float32, "scan_flyback_px", "noisy"),
)
# What runs of download.material mixed record besides: which material each image shows.
_MIXED_ATTRS = (("material_code", np.int8, "material_code", "clean"),)
MIXED_UNITS = "; material_code: " + ", ".join(f"{code} {name}" for name, code in scenes.MATERIAL_CODES.items())
STEM_UNITS = (
    "; imaging_mode: 0 hrtem, 1 haadf, 2 abf; STEM images: values in detector units (stem_units: detector) or "
    "(reading - detector_offset) / (detector_gain x dose) (electrons, mean), clean the noise-free expectation in "
    "the same units; dose (probe_dose in detector units, where values x dose are no counts): electrons per probe "
    "position (mean: the image's mean expected counts per pixel, 1 for vacuum); convergence_mrad = "
    "aperture_mrad: the probe's convergence semi-angle; probe_fwhm_angstrom, source_size_angstrom (sigma): "
    "angstrom; detector_offset, read_noise: detector units; detector_gain: detector units per electron; "
    "scan_jitter_px (RMS), scan_drift_yx_px (over the frame), scan_flyback_px: pixels; NaN: not defined for the "
    "image's mode"
)


def _attr_specs(kwargs: dict) -> tuple:
    """The per-image attributes of a run of ``make_pair(**kwargs)``. In STEM detector units the electron dose is
    stored as ``probe_dose``: the pipeline reads ``dose`` as counts per stored unit (noisy x dose = counts), which
    detector values on an offset are not; their count-based checks fit the offset and gain from the frames."""
    specs: tuple = _PER_IMAGE_ATTRS + (_MIXED_ATTRS if kwargs.get("material") == scenes.MIXED else ())
    if "imaging" not in kwargs:
        return specs
    specs += _STEM_ATTRS
    if kwargs["stem_settings"]["units"] == "detector":
        specs = tuple(("probe_dose", *rest) if name == "dose" else (name, *rest) for name, *rest in specs)
    return specs


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
    attrs: dict[str, list] = {name: [] for name, *_ in _attr_specs(kwargs)}
    atoms: dict[str, list] = {name: [] for name in ATOM_DATASETS}
    for j, index in enumerate(range(start, stop)):
        noisy[j], clean[j], info = make_pair(image_seed(seed, split, index), **kwargs)
        for name, _, key, _ in _attr_specs(kwargs):
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
            attrs = {key[5:]: data[key].tolist() for key in data.files if key.startswith("attr:")}
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


# The download parameters that say what the generator makes (the manifest records them, with the version).
GENERATOR_KEYS = (
    "seed",
    "train_images",
    "test_images",
    "image_size",
    "dose_min",
    "dose_max",
    "dead_pixel_fraction",
    "material",
    "optics",
    "pixel_size_min",
    "pixel_size_max",
    "generalisation_count",
    "generalisation_material",
    "generalisation_optics",
)
# The STEM parameters (download key, StemSettings field): recorded (in the manifest and the files' parameters)
# only when download.imaging is not hrtem, so that HRTEM sets stay as they were.
STEM_KEYS = (
    ("stem_units", "units"),
    ("stem_dose_min", "dose_min"),
    ("stem_dose_max", "dose_max"),
    ("stem_jitter_px", "jitter_px"),
    ("stem_drift_px", "drift_px"),
    ("stem_flyback_px", "flyback_px"),
    ("stem_detector_offset", "offset"),
    ("stem_detector_gain", "gain"),
    ("stem_read_noise", "read_noise"),
)


@dataclass(frozen=True)
class GeneratorSettings:
    """What :func:`write_dataset` makes: the download section's :data:`GENERATOR_KEYS` (their ranges checked
    by the schema, :class:`~emdenoise.config.params.DownloadParams`), ``imaging`` and the STEM parameters
    (``stem``, from :data:`STEM_KEYS`), and how the clean images are formed:
    ``renderer`` (``fast`` or ``abtem``), ``structure`` (train and test only; the generalisation split keeps
    its material's scenes) and ``oversampling``, see :func:`~emdenoise.data.simulate.pairs.clean_image`."""

    seed: int
    train_images: int
    test_images: int
    image_size: int
    dose_min: float
    dose_max: float
    dead_pixel_fraction: float
    material: str
    optics: str
    pixel_size_min: float
    pixel_size_max: float
    generalisation_count: int
    generalisation_material: str
    generalisation_optics: str
    imaging: str = "hrtem"
    stem: StemSettings = field(default_factory=StemSettings)
    renderer: str = "fast"
    structure: str = "none"
    oversampling: int = 2

    def __post_init__(self) -> None:
        if self.renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {self.renderer!r}")

    @classmethod
    def from_section(cls, section: DownloadParams, **render: Any) -> GeneratorSettings:
        """The settings of the (validated) download section, with ``render`` (renderer, structure,
        oversampling)."""
        stem = StemSettings(**{name: getattr(section, key) for key, name in STEM_KEYS})
        return cls(
            **{key: getattr(section, key) for key in GENERATOR_KEYS}, imaging=section.imaging, stem=stem, **render
        )

    @classmethod
    def of(cls, where: str = "parameters", **values: Any) -> GeneratorSettings:
        """For callers without a parameters file (tests, benchmarks): ``values`` over the download defaults,
        checked by the schema (a bad one is an InputError naming ``download.<key>``)."""
        render = {key: values.pop(key) for key in ("renderer", "structure", "oversampling") if key in values}
        return cls.from_section(validate({"download": values}, where).download, **render)

    def record(self) -> dict[str, Any]:
        """The settings the manifest records (:data:`GENERATOR_KEYS`, and for STEM ``imaging`` and
        :data:`STEM_KEYS`)."""
        record = {key: getattr(self, key) for key in GENERATOR_KEYS}
        if self.imaging != "hrtem":
            record.update(imaging=self.imaging, **{key: getattr(self.stem, name) for key, name in STEM_KEYS})
        return record

    def counts(self) -> dict[str, int]:
        counts = {"train": int(self.train_images), "test": int(self.test_images)}
        if self.generalisation_count:
            counts[GENERALISATION_SPLIT] = int(self.generalisation_count)
        return counts

    def split_kwargs(self, split: str) -> dict[str, Any]:
        """The keyword arguments of :func:`~emdenoise.data.simulate.pairs.make_pair` for ``split`` (written
        into the files as their ``parameters``)."""
        kwargs: dict[str, Any] = dict(
            image_size=int(self.image_size),
            dose_min=float(self.dose_min),
            dose_max=float(self.dose_max),
            dead_pixel_fraction=float(self.dead_pixel_fraction),
            pixel_size_min=float(self.pixel_size_min),
            pixel_size_max=float(self.pixel_size_max),
        )
        if self.renderer != "fast":  # the fast generator's files stay as they were
            kwargs.update(renderer=self.renderer, oversampling=int(self.oversampling))
        other = split == GENERALISATION_SPLIT
        kwargs["material"] = self.generalisation_material if other else self.material
        kwargs["optics_regime"] = self.generalisation_optics if other else self.optics
        if self.structure != "none" and split in ("train", "test"):
            kwargs["structure"] = str(self.structure)
        if self.imaging != "hrtem":  # the HRTEM generator's files stay as they were
            kwargs["imaging"] = self.imaging
            kwargs["stem_settings"] = dataclasses.asdict(self.stem)
        return kwargs

    @property
    def name(self) -> str:
        return "abtem" if self.renderer == "abtem" else "synthetic"


def write_dataset(
    out_dir: Path,
    settings: GeneratorSettings,
    *,
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
    Without one the function commits its own. ``resume_dir``: a folder for the finished chunks of a slow
    (abTEM) run: a rerun with the same settings makes only the chunks missing there; the caller removes it.
    """
    out_dir = Path(out_dir)
    counts = settings.counts()
    workers = _worker_count(workers)
    jobs = _jobs(settings, counts, workers, resume_dir)
    if log is not None:
        _log_start(log, settings, counts, workers)
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
            with progress(total=sum(counts.values()), desc=settings.name, unit="pair") as bar:
                for split, n in counts.items():
                    chunks = (next(results) for job in jobs if job[1] == split)
                    files = (tmp[split, "noisy"], tmp[split, "clean"])
                    _write_split(*files, split, n, settings.seed, settings.split_kwargs(split), chunks, bar)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    written = list(paths.values())
    if log is not None:
        log.info("%s: wrote %s", settings.name, ", ".join(str(p) for p in written))
    return written


def _jobs(settings: GeneratorSettings, counts: dict[str, int], workers: int, resume_dir: Path | None) -> list[tuple]:
    """The chunks to make, in order: (seed, split, start, stop, make_pair's kwargs, the chunk's resume file)."""
    chunk = max(1, min(32, math.ceil(sum(counts.values()) / (4 * workers))))
    bounds = [(split, start, min(start + chunk, n)) for split, n in counts.items() for start in range(0, n, chunk)]
    return [
        (
            int(settings.seed),
            split,
            start,
            stop,
            settings.split_kwargs(split),
            None if resume_dir is None else str(Path(resume_dir) / f"{split}-{start:07d}-{stop:07d}.npz"),
        )
        for split, start, stop in bounds
    ]


def _log_start(log, settings: GeneratorSettings, counts: dict[str, int], workers: int) -> None:
    log.info(
        "%s: %s pairs of %d x %d px of %s, seed %d, dose %g-%g e/px, %g-%g A/px, %s optics, %d worker(s)",
        settings.name,
        " + ".join(f"{n} {split}" for split, n in counts.items()),
        *(settings.image_size, settings.image_size, settings.material, settings.seed),
        *(settings.dose_min, settings.dose_max, settings.pixel_size_min, settings.pixel_size_max),
        settings.optics,
        workers,
    )
    if settings.imaging != "hrtem":
        stem = settings.stem
        log.info(
            "%s: %s imaging, STEM dose %g-%g e/probe position, values in %s units",
            *(settings.name, settings.imaging, stem.dose_min, stem.dose_max, stem.units),
        )


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
    if "imaging" in kwargs:
        file_attrs["imaging"] = kwargs["imaging"]
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
        attrs: dict[str, list] = {name: [] for name, *_ in _attr_specs(kwargs)}
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
        for name, dtype, _, kind in _attr_specs(kwargs):
            dsets[kind].attrs[name] = np.asarray(attrs[name], dtype=dtype)
        dsets["noisy"].attrs["dead_pixel_fraction"] = F32(kwargs["dead_pixel_fraction"])
        dsets["noisy"].attrs["units"] = (
            (
                "values: electron counts / dose; dose: electrons per pixel at the beam centre; beam_center_yx, "
                "beam_sigma, detector_blur_px: pixels; pixel_size: angstrom per pixel; defocus_angstrom (negative: "
                "underfocus), focal_spread_angstrom: angstrom; cs_mm: mm; convergence_mrad, aperture_mrad: mrad"
            )
            + (STEM_UNITS if "imaging" in kwargs else "")
            + (MIXED_UNITS if kwargs.get("material") == scenes.MIXED else "")
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


def benchmark(n: int = 512, workers: int = 1, image_size: int = 256, imaging: str = "hrtem") -> float:
    """Pairs per second of :func:`write_dataset` (HDF5 writing included) for ``n`` pairs (80 % train, 20 % test)
    of ``imaging`` (mixed: in electrons) into a temporary folder that is removed afterwards."""
    n_test = max(1, n // 5)
    with tempfile.TemporaryDirectory(prefix="emdenoise-synth-bench-") as tmp:
        start = time.perf_counter()
        settings = GeneratorSettings.of(
            seed=0,
            train_images=max(1, n - n_test),
            test_images=n_test,
            image_size=image_size,
            imaging=imaging,
            stem_units="electrons" if imaging == "mixed" else "detector",
        )
        write_dataset(Path(tmp), settings, workers=workers)
        elapsed = time.perf_counter() - start
    return (max(1, n - n_test) + n_test) / elapsed


if __name__ == "__main__":
    _n = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    _workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    _imaging = sys.argv[3] if len(sys.argv) > 3 else "hrtem"
    _rate = benchmark(_n, _workers, imaging=_imaging)
    print(f"{_rate:.1f} pairs/s ({_n} {_imaging} pairs of 256 x 256, workers={_workers})")
