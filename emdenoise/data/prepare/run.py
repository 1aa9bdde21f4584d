"""The preprocess engine: validate the raw em_graphene_sim layout, split it, and write the training layout.

Reads ``raw_dir`` in the raw layout of :mod:`emdenoise.layout` (read and checked by :mod:`emdenoise.data.prepare.raw`)
and writes to ``data_dir``:

- ``train.h5`` and ``val.h5``: the raw training pairs split at random (``preprocess.val_fraction``,
  ``preprocess.seed``); rows in the shuffled order, so the first rows of a split are a random sample.
- ``test.h5``: the raw test pairs, in their own order.
- ``generalisation.h5``: the raw ``generalisation/`` pairs (another material or other optics), in their own
  order, only when that raw folder is there (a stale one from an earlier run is removed).
- ``inference.h5``: the TIFF pairs, sorted by file name (only when the folders are present).
- ``dataset_card.json``: counts, value ranges, the normalisation (mean/std over the train split) and the
  fixed PSNR data range R = max - min of the clean test images.

Each split file holds ``noisy`` and ``clean`` float32 (N, H, W) chunked one image per chunk, ``index`` int64
(N,) (the row in the raw file), and ``dose`` float32 (N,) when the raw noisy datasets carry a ``dose``
attribute, ``pixel_size`` float32 (N,) A/px when they carry ``pixel_size``, and the true atom columns
``atom_offsets``, ``atom_yx``, ``atom_vacant``, ``atom_z`` re-based to the split's rows when the raw clean files
have them (each only when every raw split has it). The raw files are read in blocks, so the 5 GB real set
never has to fit in memory. The split files are sealed with their sha256 (:mod:`emdenoise.io.h5safe`).

All outputs are one :class:`~emdenoise.outputs.Transaction`: staged while they are written, then committed in
this order: the old card removed, the splits moved into place, a stale ``inference.h5`` removed, the new card
last. A failure before the commit leaves the previous outputs as they were; a kill during the commit leaves no
card (the next task says to run preprocess again), never an old card beside new splits.
"""

from __future__ import annotations

import contextlib
import datetime
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emdenoise import __version__
from emdenoise.config.params import PreprocessParams
from emdenoise.data.acquire.manifest import recorded_source
from emdenoise.data.card import DatasetCard
from emdenoise.data.prepare import noisy_only
from emdenoise.data.prepare.raw import (
    RawAtoms,
    RawImages,
    find_inference_pairs,
    generator_units,
    one_line,
    open_raw_split,
    read_tiff,
)
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.io import h5safe
from emdenoise.layout import (
    CARD,
    CARD_FORMAT,
    GENERALISATION_SPLIT,
    RAW_DATASET,
    RAW_FILES,
    RAW_SPLITS,
    SPLIT_FILE,
)
from emdenoise.log import progress
from emdenoise.outputs import Transaction

# pixels read and written at a time per file: 64 MB as float32, 256 images of 256 x 256 (fewer when the images
# are larger, at least one)
BLOCK_PIXELS = 2**24
DATA_RANGE_DEFINITION = (
    "R = max - min of the clean test images (test.h5 'clean'), measured once by preprocess; "
    "PSNR = 10 log10(R^2 / MSE) of each image uses this fixed R for every image and model."
)


@dataclass
class RawInputs:
    """The raw splits opened for reading: their files (``<split>_noisy``, ``<split>_clean``), the image shape,
    whether every split carries doses, and the extras every split carries."""

    files: dict[str, RawImages]
    splits: tuple[str, ...]
    shape: tuple[int, int]
    has_dose: bool
    extras: Extras
    input_units: str | None = None  # the generator's level of the frames where not the dose's (raw.generator_units)

    def raw_record(self) -> dict[str, Any]:
        """The card's ``raw``: where each split came from."""
        return {
            split: {
                "noisy": f"{split}/{RAW_FILES['noisy']}",
                "clean": f"{split}/{RAW_FILES['clean']}",
                "n": self.files[f"{split}_noisy"].n,
                "shape": list(self.files[f"{split}_noisy"].ds.shape),
                "dtype": str(self.files[f"{split}_noisy"].ds.dtype),
            }
            for split in self.splits
        }


def preprocess(raw_dir: Path, data_dir: Path, params: PreprocessParams, log) -> DatasetCard:
    """Write the processed layout of ``raw_dir`` into ``data_dir`` (both folders exist); return the card. A
    micrographs: download (noisy only) goes to :func:`emdenoise.data.prepare.noisy_only.preprocess_micrographs`."""
    if noisy_only.is_micrographs(raw_dir):
        return DatasetCard.from_json(noisy_only.preprocess_micrographs(raw_dir, data_dir, params, log))
    with contextlib.ExitStack() as stack:
        raw = open_inputs(raw_dir, stack, log)
        inference = find_inference_pairs(raw_dir, log)
        plan = split_plan(raw, params, log)
        log.info(
            "raw data: %s (%d train + %d test pairs of %dx%d pixels%s%s)",
            raw_dir,
            raw.files["train_noisy"].n,
            raw.files["test_noisy"].n,
            *raw.shape,
            ", with dose" if raw.has_dose else "",
            f", {len(inference)} inference pairs" if inference else "",
        )
        with Transaction() as tx:
            # The old card no longer describes what is about to be moved into place: it goes first.
            tx.remove(data_dir / CARD)
            results = _write_splits(tx, data_dir, raw, plan, inference, log)
            _check_card_numbers(results, raw.files)
            source = recorded_source(raw_dir, log)
            card = build_card(
                results, raw.shape, raw.has_dose, source, raw.raw_record(), params, raw_dir, raw.extras, raw.input_units
            )
            tx.write_json(data_dir / CARD, card.to_json())  # last: the card marks the outputs complete
    _log_table(log, results)
    return card


def open_inputs(raw_dir: Path, stack: contextlib.ExitStack, log) -> RawInputs:
    """Open every raw split (the optional generalisation/ split when both its files are there) and check
    that they agree: one image shape, at least 2 training pairs; doses and extras kept only if all carry them."""
    files: dict[str, RawImages] = {}
    raw_splits = RAW_SPLITS + ((GENERALISATION_SPLIT,) if _has_raw_split(raw_dir, GENERALISATION_SPLIT) else ())
    for split in raw_splits:
        files[f"{split}_noisy"], files[f"{split}_clean"] = open_raw_split(raw_dir, split, stack, log)
    shape = files["train_noisy"].shape
    for split in raw_splits[1:]:
        other = files[f"{split}_noisy"].shape
        if other != shape:
            raise InputError.at(
                files[f"{split}_noisy"].path,
                RAW_DATASET,
                f"expected {shape[0]}x{shape[1]} pixel images like the train split, got {other[0]}x{other[1]}",
            )
    if files["train_noisy"].n < 2:
        raise InputError.at(
            files["train_noisy"].path,
            RAW_DATASET,
            "expected at least 2 training pairs, to hold out one for validation, got 1",
        )
    doses = [files[f"{split}_noisy"].dose is not None for split in raw_splits]
    if any(doses) and not all(doses):
        log.warning("only some raw splits carry a 'dose' attribute; no split will carry a dose")
    extras = Extras(
        pixel_size=_all_or_none(files, raw_splits, "noisy", "pixel_size", log),
        atoms=_all_or_none(files, raw_splits, "clean", "atoms", log),
    )
    units = {generator_units(files[f"{split}_noisy"]) for split in raw_splits}
    return RawInputs(files, raw_splits, shape, all(doses), extras, units.pop() if len(units) == 1 else None)


def split_plan(raw: RawInputs, params: PreprocessParams, log) -> dict[str, tuple[str, np.ndarray]]:
    """Each processed split: (the raw split it is taken from, its rows there, in order)."""
    train_rows, val_rows = split_rows(raw.files["train_noisy"].n, params.val_fraction, params.seed)
    if params.val_fraction == 0:
        log.warning("preprocess.val_fraction is 0: one pair is still held out, the validation split cannot be empty")
    plan = {
        "train": ("train", train_rows),
        "val": ("train", val_rows),
        "test": ("test", np.arange(raw.files["test_noisy"].n, dtype=np.int64)),
    }
    if GENERALISATION_SPLIT in raw.splits:
        n_gen = raw.files[f"{GENERALISATION_SPLIT}_noisy"].n
        plan[GENERALISATION_SPLIT] = (GENERALISATION_SPLIT, np.arange(n_gen, dtype=np.int64))
    return plan


def _write_splits(
    tx: Transaction,
    data_dir: Path,
    raw: RawInputs,
    plan: dict[str, tuple[str, np.ndarray]],
    inference: list[tuple[str, Path, Path]] | None,
    log,
) -> dict[str, SplitResult]:
    """Stage every split file in ``tx`` (and the removal of stale generalisation / inference files)."""
    results: dict[str, SplitResult] = {}
    for name, (raw_split, rows) in plan.items():
        with tx.writing(data_dir / SPLIT_FILE.format(split=name)) as tmp:
            noisy, clean = raw.files[f"{raw_split}_noisy"], raw.files[f"{raw_split}_clean"]
            results[name] = write_split(tmp, name, noisy, clean, rows, raw.has_dose, raw.extras)
    generalisation_file = data_dir / SPLIT_FILE.format(split=GENERALISATION_SPLIT)
    if GENERALISATION_SPLIT not in plan and generalisation_file.exists():
        tx.remove(generalisation_file)
        log.info("removing %s from an earlier run: the raw data have no generalisation folder", generalisation_file)
    inference_file = data_dir / SPLIT_FILE.format(split="inference")
    if inference:
        with tx.writing(inference_file) as tmp:
            results["inference"] = write_inference(tmp, inference, raw.shape)
    elif inference_file.exists():
        tx.remove(inference_file)
        log.info("removing %s from an earlier run: the raw data have no inference folder", inference_file)
    return results


def _has_raw_split(raw_dir: Path, split: str) -> bool:
    return all((raw_dir / split / name).is_file() for name in RAW_FILES.values())


def _all_or_none(files: dict[str, RawImages], splits: tuple[str, ...], kind: str, what: str, log) -> bool:
    """Whether every raw split's ``kind`` file carries ``what`` (pixel_size, atoms): carried only if all do."""
    have = [getattr(files[f"{split}_{kind}"], what) is not None for split in splits]
    if any(have) and not all(have):
        log.warning("only some raw splits carry %s; no split will carry them", what.replace("_", " "))
    return all(have)


@dataclass(frozen=True)
class Extras:
    """The optional per-image data carried into the split files when every raw split has them."""

    pixel_size: bool = False  # the noisy files' "pixel_size" attribute -> dataset "pixel_size" (N,)
    atoms: bool = False  # the clean files' atom datasets -> the same four datasets, re-based to the split's rows


# ---------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class Stats:
    """Running min, max, mean and variance of all pixels seen, accumulated in float64 (Chan et al.'s merge)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def update(self, block: np.ndarray) -> None:
        if block.size == 0:
            return
        values = block.astype(np.float64, copy=False)
        n_b = values.size
        mean_b = float(values.mean())
        m2_b = float(np.square(values - mean_b).sum())
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total
        self.lo = min(self.lo, float(block.min()))
        self.hi = max(self.hi, float(block.max()))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0

    @property
    def range(self) -> list[float]:
        return [self.lo, self.hi]


@dataclass
class SplitResult:
    """What was written for one split: its size and pixel statistics."""

    n: int
    stats: dict[str, Stats] = field(default_factory=lambda: {"noisy": Stats(), "clean": Stats()})
    pixel_size: np.ndarray | None = None  # float32 (n,) A/px when carried


# ---------------------------------------------------------------------------------------------------------------
# Writing the processed layout


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random partition of rows 0..n-1 into (train, val), both in shuffled order.

    The validation split gets round(val_fraction * n) rows, at least 1 and at most n - 1: both splits are used
    downstream (training, and early stopping / baseline tuning), so neither may be empty.
    """
    n_val = min(max(math.floor(val_fraction * n + 0.5), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return perm[n_val:], perm[:n_val]


@contextlib.contextmanager
def _new_split_file(path: Path, split: str, n: int, shape: tuple[int, int], with_dose: bool) -> Iterator[h5py.File]:
    """A new split file with room for ``n`` pairs, open for writing; sealed (:mod:`emdenoise.io.h5safe`) when the
    block ends without an exception."""
    with contextlib.ExitStack() as stack:
        try:
            fh = stack.enter_context(h5safe.create_sealed(path))
            fh.attrs["split"] = split
            fh.attrs["format"] = CARD_FORMAT
            for key in ("noisy", "clean"):
                fh.create_dataset(key, shape=(n,) + shape, dtype=np.float32, chunks=(1,) + shape)
            fh.create_dataset("index", shape=(n,), dtype=np.int64)
            if with_dose:
                fh.create_dataset("dose", shape=(n,), dtype=np.float32)
        except OSError as exc:
            raise RuntimeFailure(f"{path}: cannot create the {split} split ({one_line(exc)})") from None
        yield fh


def write_split(
    dest: Path,
    split: str,
    noisy: RawImages,
    clean: RawImages,
    rows: np.ndarray,
    with_dose: bool,
    extras: Extras = Extras(),
) -> SplitResult:
    """Copy the raw pairs at ``rows`` (in that order) into a new split file ``dest``, block by block, with the
    ``extras`` (pixel sizes, atom columns re-based to the split's rows)."""
    result = SplitResult(len(rows))
    with (
        _new_split_file(dest, split, len(rows), noisy.shape, with_dose) as fh,
        progress(total=len(rows), desc=f"preprocess {split}", unit="img") as bar,
    ):
        try:
            if extras.pixel_size and noisy.pixel_size is not None:
                result.pixel_size = noisy.pixel_size[rows]
                fh.create_dataset("pixel_size", data=result.pixel_size)
            if extras.atoms and clean.atoms is not None:
                _write_atoms(fh, clean.atoms.take(rows))
        except OSError as exc:
            raise RuntimeFailure(f"{dest}: cannot write the {split} split ({one_line(exc)})") from None
        block_images = max(1, BLOCK_PIXELS // math.prod(noisy.shape))
        for start in range(0, len(rows), block_images):
            block_rows = rows[start : start + block_images]
            stop = start + len(block_rows)
            images = {"noisy": noisy.read(block_rows), "clean": clean.read(block_rows)}
            try:
                for key, block in images.items():
                    fh[key][start:stop] = block
                    result.stats[key].update(block)
                fh["index"][start:stop] = block_rows
                if with_dose and noisy.dose is not None:
                    fh["dose"][start:stop] = noisy.dose[block_rows]
            except OSError as exc:
                raise RuntimeFailure(f"{dest}: cannot write the {split} split ({one_line(exc)})") from None
            bar.update(len(block_rows))
    return result


def _write_atoms(fh: h5py.File, atoms: RawAtoms) -> None:
    fh.create_dataset("atom_offsets", data=atoms.offsets)
    for name, data in (("atom_yx", atoms.yx), ("atom_vacant", atoms.vacant), ("atom_z", atoms.z)):
        fh.create_dataset(name, data=data, chunks=True if len(data) else None)


def write_inference(dest: Path, pairs: list[tuple[str, Path, Path]], shape: tuple[int, int]) -> SplitResult:
    """Write the TIFF pairs, sorted by name, as a split file with an extra ``name`` dataset."""
    result = SplitResult(len(pairs))
    with (
        _new_split_file(dest, "inference", len(pairs), shape, with_dose=False) as fh,
        progress(total=len(pairs), desc="preprocess inference", unit="img") as bar,
    ):
        fh.create_dataset("name", data=[name for name, _, _ in pairs], dtype=h5py.string_dtype())
        for i, (_, noisy_path, clean_path) in enumerate(pairs):
            for key, path in (("noisy", noisy_path), ("clean", clean_path)):
                image = read_tiff(path, shape)
                fh[key][i] = image
                result.stats[key].update(image)
            fh["index"][i] = i
            bar.update(1)
    return result


# ---------------------------------------------------------------------------------------------------------------
# The dataset card


def build_card(
    results: dict[str, SplitResult],
    shape: tuple[int, int],
    has_dose: bool,
    source,
    raw: dict,
    section: PreprocessParams,
    raw_dir: Path,
    extras: Extras = Extras(),
    input_units: str | None = None,
) -> DatasetCard:
    """The dataset card: the contract (layout.DATASET_CARD_KEYS), then provenance (and ``input_units``, the
    frames' level where the generator says it is not the dose's)."""
    train = results["train"].stats
    pixel = results["train"].pixel_size
    if pixel is not None and len(pixel):  # a model trained over a range of pixel sizes takes any inside it as is
        ranges: dict[str, Any] = {"pixel_size_range_angstrom": [float(pixel.min()), float(pixel.max())]}
    else:
        ranges = {}
    if input_units and has_dose:
        ranges["input_units"] = input_units
    test_clean = results["test"].stats["clean"]
    return DatasetCard(
        image_shape=list(shape),
        splits={name: {"file": SPLIT_FILE.format(split=name), "n": r.n} for name, r in results.items()},
        value_range={name: {key: r.stats[key].range for key in ("noisy", "clean")} for name, r in results.items()},
        normalisation={key: {"mean": train[key].mean, "std": train[key].std} for key in ("noisy", "clean")},
        data_range=test_clean.hi - test_clean.lo,
        data_range_definition=DATA_RANGE_DEFINITION,
        has_dose=has_dose,
        source=source,
        pixel_size_angstrom=float(np.median(pixel)) if pixel is not None and len(pixel) else None,
        has_atoms=extras.atoms,
        extra={
            **ranges,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "emdenoise_version": __version__,
            "preprocess": {
                "val_fraction": section.val_fraction,
                "seed": section.seed,
                "raw_data_dir": str(raw_dir.resolve()),
            },
            "raw": raw,
        },
    )


def _check_card_numbers(results: dict[str, SplitResult], files: dict[str, RawImages]) -> None:
    """Refuse data that would make the PSNR range or the normalisation meaningless."""
    test_clean = results["test"].stats["clean"]
    if not test_clean.hi > test_clean.lo:
        raise InputError.at(
            files["test_clean"].path,
            RAW_DATASET,
            f"expected clean test images with max > min to "
            f"fix the PSNR data range, got every pixel = {test_clean.lo:g}",
        )
    for key in ("noisy", "clean"):
        stats = results["train"].stats[key]
        if not stats.std > 0:
            raise InputError.at(
                files[f"train_{key}"].path,
                RAW_DATASET,
                f"expected varying pixel values in the training split to normalise by, got every pixel = {stats.lo:g}",
            )


def _log_table(log, results: dict[str, SplitResult]) -> None:
    log.info("%-10s %7s  %-24s %-24s", "split", "pairs", "noisy [min, max]", "clean [min, max]")
    for name, r in results.items():
        ranges = ["[{:.4g}, {:.4g}]".format(*r.stats[key].range) for key in ("noisy", "clean")]
        log.info("%-10s %7d  %-24s %-24s", name, r.n, *ranges)
