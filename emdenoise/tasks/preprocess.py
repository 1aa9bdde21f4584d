"""The ``preprocess`` task: validate the raw em_graphene_sim layout, split it, and write the training layout.

Reads ``raw_data_dir`` in the raw layout of :mod:`emdenoise.layout` (``train/`` and ``test/``, each with
``graphene_img_noise.h5`` and ``graphene_img_clean.h5`` holding the dataset ``images``, (N, H, W, 1) or
(N, H, W)), and the optional ``inference/raw`` + ``inference/truth`` TIFF folders. Writes to ``data_dir``:

- ``train.h5`` and ``val.h5``: the raw training pairs split at random (``preprocess.val_fraction``,
  ``preprocess.seed``); rows in the shuffled order, so the first rows of a split are a random sample.
- ``test.h5``: the raw test pairs, in their own order.
- ``inference.h5``: the TIFF pairs, sorted by file name (only when the folders are present).
- ``dataset_card.json``: counts, value ranges, the normalisation (mean/std over the train split) and the
  fixed PSNR data range R = max - min of the clean test images.

Each split file holds ``noisy`` and ``clean`` float32 (N, H, W) chunked one image per chunk, ``index`` int64
(N,) (the row in the raw file), and ``dose`` float32 (N,) when the raw noisy datasets carry a ``dose``
attribute. The raw files are read in blocks, so the 5 GB real set never has to fit in memory. Every output is
written under a temporary name and renamed into place only after all of them are complete. The raw files are
probed in a child process before they are opened, and the split files are sealed with their sha256
(:mod:`emdenoise.io.h5safe`): a damaged HDF5 file is one line, never a crash.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from emdenoise import __version__
from emdenoise.io import h5safe
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.outputs import atomic_path, json_text
from emdenoise.layout import (CARD, CARD_FORMAT, MANIFEST, RAW_DATASET, RAW_FILES, RAW_SPLITS, SPLIT_FILE,
                              SPLITS, check_frame_pixels)
from emdenoise.log import progress

# pixels read and written at a time per file: 64 MB as float32, 256 images of 256 x 256 (fewer when the images
# are larger, at least one)
BLOCK_PIXELS = 2**24
TIFF_SUFFIXES = (".tif", ".tiff")
DATA_RANGE_DEFINITION = ("R = max - min of the clean test images (test.h5 'clean'), measured once by preprocess; "
                         "PSNR = 10 log10(R^2 / MSE) of each image uses this fixed R for every image and model.")
LAYOUT_HINT = ("expected the em_graphene_sim layout: train/ and test/, each with graphene_img_noise.h5 and "
               "graphene_img_clean.h5")


def _one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(exc).split()) or exc.__class__.__name__


# ---------------------------------------------------------------------------------------------------------------
# Reading and validating the raw HDF5 files


@dataclass
class RawImages:
    """One raw ``images`` dataset, open for reading: ``n`` single-channel images of ``shape`` (H, W)."""

    path: Path
    ds: h5py.Dataset
    n: int
    shape: tuple[int, int]
    dose: np.ndarray | None  # float32 (n,), from the dataset's "dose" attribute, when valid

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images at the raw ``rows`` (any order, no repeats) as float32 (len(rows), H, W), in ``rows`` order."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        if len(ordered) and ordered[-1] - ordered[0] + 1 == len(ordered):
            selection = slice(int(ordered[0]), int(ordered[-1]) + 1)  # a contiguous run reads fastest
        else:
            selection = ordered  # h5py wants increasing indices
        try:
            data = self.ds[selection]
        # RuntimeError: h5py on damaged metadata; MemoryError: a damaged shape that claims petabytes
        except (OSError, RuntimeError, ValueError, TypeError, MemoryError) as exc:
            raise InputError.at(self.path, RAW_DATASET, f"cannot read images {int(ordered[0])}..{int(ordered[-1])}"
                                f" ({_one_line(exc)}); expected a complete, readable HDF5 file") from None
        if data.ndim == 4:
            data = data[..., 0]
        block = np.empty((len(rows),) + self.shape, dtype=np.float32)
        block[order] = data
        bad = ~np.isfinite(block).all(axis=(1, 2))
        if bad.any():
            first = int(np.argmin(np.where(bad, rows, np.iinfo(np.int64).max)))
            count = int((~np.isfinite(block[first])).sum())
            raise InputError.at(self.path, f"{RAW_DATASET}[{int(rows[first])}]",
                                f"expected finite pixel values (as float32), got {count} NaN or infinite pixel(s)")
        return block


def open_raw_images(path: Path, stack: contextlib.ExitStack, log) -> RawImages:
    """Open ``path`` and check its ``images`` dataset: N >= 1 real-valued single-channel (H, W) images."""
    if not path.is_file():
        what = "found a folder, not a file" if path.is_dir() else "file not found"
        raise InputError.at(path, None, f"{what}; {LAYOUT_HINT}")
    try:
        fh = stack.enter_context(h5safe.open_foreign(path))  # the structure walked in a child process first
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError.at(path, None, f"expected a readable HDF5 file ({_one_line(exc)})") from None
    try:
        obj = fh.get(RAW_DATASET)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError.at(path, RAW_DATASET, f"cannot read the dataset ({_one_line(exc)})") from None
    if obj is None:
        try:
            holds = sorted(fh.keys()) or "nothing"
        except (OSError, RuntimeError) as exc:
            raise InputError.at(path, RAW_DATASET, f"cannot list the file's contents ({_one_line(exc)})") from None
        raise InputError.at(path, RAW_DATASET, f"expected a dataset named {RAW_DATASET!r}, the file holds {holds}")
    if not isinstance(obj, h5py.Dataset):
        raise InputError.at(path, RAW_DATASET, f"expected a dataset, got a {type(obj).__name__.lower()}")
    try:
        dtype, shape = obj.dtype, tuple(int(s) for s in obj.shape)
    except (OSError, RuntimeError, TypeError, ValueError) as exc:  # ValueError: h5py on a damaged datatype
        raise InputError.at(path, RAW_DATASET, f"cannot read the dataset's type and shape ({_one_line(exc)})") \
            from None
    if dtype.kind not in "fiub":
        raise InputError.at(path, RAW_DATASET, f"expected real-valued numbers (float32), got dtype {dtype}")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise InputError.at(path, RAW_DATASET, f"expected single-channel 2-D images, shape (N, H, W, 1) or "
                            f"(N, H, W), got shape {shape}")
    if shape[0] == 0:
        raise InputError.at(path, RAW_DATASET, f"expected at least one image, got an empty dataset of shape {shape}")
    if shape[1] == 0 or shape[2] == 0:
        raise InputError.at(path, RAW_DATASET, f"expected images at least 1x1 pixels, got shape {shape}")
    check_frame_pixels(path, RAW_DATASET, shape[1], shape[2])
    return RawImages(path, obj, shape[0], (shape[1], shape[2]), _read_dose(obj, path, shape[0], log))


def _read_dose(ds: h5py.Dataset, path: Path, n: int, log) -> np.ndarray | None:
    """The per-image ``dose`` attribute when it is a finite numeric array of length n; otherwise None."""
    try:
        if "dose" not in ds.attrs:
            return None
        dose = np.asarray(ds.attrs["dose"])
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        log.warning("%s: %s: ignoring the unreadable 'dose' attribute (%s)", path, RAW_DATASET, _one_line(exc))
        return None
    if dose.dtype.kind not in "fiu" or dose.shape != (n,) or not np.isfinite(dose).all():
        log.warning("%s: %s: ignoring the 'dose' attribute: expected %d finite numbers, got %s of shape %s",
                    path, RAW_DATASET, n, dose.dtype, dose.shape)
        return None
    return dose.astype(np.float32)


def open_raw_split(raw_dir: Path, split: str, stack: contextlib.ExitStack, log) -> tuple[RawImages, RawImages]:
    """Open and cross-check the noisy and clean files of one raw split (same count, same image shape)."""
    noisy = open_raw_images(raw_dir / split / RAW_FILES["noisy"], stack, log)
    clean = open_raw_images(raw_dir / split / RAW_FILES["clean"], stack, log)
    if clean.n != noisy.n:
        raise InputError.at(clean.path, RAW_DATASET, f"expected {noisy.n} images, as many as in "
                            f"{noisy.path.name}, got {clean.n}")
    if clean.shape != noisy.shape:
        raise InputError.at(clean.path, RAW_DATASET, f"expected images of {noisy.shape[0]}x{noisy.shape[1]} "
                            f"pixels like {noisy.path.name}, got {clean.shape[0]}x{clean.shape[1]}")
    return noisy, clean


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
            raise RuntimeFailure(f"{path}: cannot create the {split} split ({_one_line(exc)})") from None
        yield fh


def write_split(dest: Path, split: str, noisy: RawImages, clean: RawImages, rows: np.ndarray,
                with_dose: bool) -> SplitResult:
    """Copy the raw pairs at ``rows`` (in that order) into a new split file ``dest``, block by block."""
    result = SplitResult(len(rows))
    with _new_split_file(dest, split, len(rows), noisy.shape, with_dose) as fh, \
            progress(total=len(rows), desc=f"preprocess {split}", unit="img") as bar:
        block_images = max(1, BLOCK_PIXELS // math.prod(noisy.shape))
        for start in range(0, len(rows), block_images):
            block_rows = rows[start:start + block_images]
            stop = start + len(block_rows)
            images = {"noisy": noisy.read(block_rows), "clean": clean.read(block_rows)}
            try:
                for key, block in images.items():
                    fh[key][start:stop] = block
                    result.stats[key].update(block)
                fh["index"][start:stop] = block_rows
                if with_dose:
                    fh["dose"][start:stop] = noisy.dose[block_rows]
            except OSError as exc:
                raise RuntimeFailure(f"{dest}: cannot write the {split} split ({_one_line(exc)})") from None
            bar.update(len(block_rows))
    return result


def _read_tiff(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One single-channel TIFF image as float32 (H, W), checked against the dataset's image shape."""
    import tifffile

    def wrong_size(got: tuple[int, ...]) -> InputError:
        return InputError.at(path, None, f"expected {shape[0]}x{shape[1]} pixels like the train and test images, "
                             f"got {'x'.join(map(str, got)) or 'no image'}")

    try:
        with tifffile.TiffFile(path) as tif:
            declared = tuple(tif.series[0].shape) if tif.series else ()
            if math.prod(declared) != math.prod(shape):  # from the header, before a declared size is allocated
                raise wrong_size(declared)
            image = tif.asarray()
    except InputError:
        raise
    except Exception as exc:  # a damaged TIFF makes tifffile raise almost anything (ValueError, RuntimeError ...)
        raise InputError.at(path, None, f"expected a readable TIFF image ({_one_line(exc)})") from None
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[1:] if image.shape[0] == 1 else image.shape[:-1])
    if image.ndim != 2 or image.dtype.kind not in "fiub":
        raise InputError.at(path, None, f"expected one single-channel 2-D real-valued image, got shape "
                            f"{image.shape} dtype {image.dtype}")
    if image.shape != shape:
        raise wrong_size(image.shape)
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise InputError.at(path, None, f"expected finite pixel values (as float32), got "
                            f"{int((~np.isfinite(image)).sum())} NaN or infinite pixel(s)")
    return image


def find_inference_pairs(raw_dir: Path, log) -> list[tuple[str, Path, Path]] | None:
    """(name, noisy path, clean path) for each TIFF in inference/raw and its namesake in inference/truth.

    None when neither folder exists. Both folders must hold exactly the same file names.
    """
    folders = {"raw": raw_dir / "inference" / "raw", "truth": raw_dir / "inference" / "truth"}
    present = {key: path.is_dir() for key, path in folders.items()}
    if not any(present.values()):
        if (raw_dir / "inference").exists():
            log.warning("%s: no raw/ or truth/ folder inside; no inference split", raw_dir / "inference")
        return None
    for key, path in folders.items():
        if not present[key]:
            other = "truth" if key == "raw" else "raw"
            raise InputError.at(path, None, f"folder not found; expected it beside inference/{other} "
                                f"(noisy TIFFs in inference/raw, clean TIFFs of the same names in inference/truth)")
    names = {key: {p.name: p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES}
             for key, path in folders.items()}
    if not names["raw"]:
        raise InputError.at(folders["raw"], None, "expected at least one .tif image, found none")
    only_raw = sorted(set(names["raw"]) - set(names["truth"]))
    only_truth = sorted(set(names["truth"]) - set(names["raw"]))
    if only_raw or only_truth:
        def listing(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        problems = []
        if only_raw:
            problems.append(f"no clean image for {listing(only_raw)}")
        if only_truth:
            problems.append(f"no noisy image in inference/raw for {listing(only_truth)}")
        raise InputError.at(folders["truth"], None, "expected the same file names as inference/raw; "
                            + "; ".join(problems))
    return [(name, names["raw"][name], names["truth"][name]) for name in sorted(names["raw"])]


def write_inference(dest: Path, pairs: list[tuple[str, Path, Path]], shape: tuple[int, int]) -> SplitResult:
    """Write the TIFF pairs, sorted by name, as a split file with an extra ``name`` dataset."""
    result = SplitResult(len(pairs))
    with _new_split_file(dest, "inference", len(pairs), shape, with_dose=False) as fh, \
            progress(total=len(pairs), desc="preprocess inference", unit="img") as bar:
        fh.create_dataset("name", data=[name for name, _, _ in pairs], dtype=h5py.string_dtype())
        for i, (_, noisy_path, clean_path) in enumerate(pairs):
            for key, path in (("noisy", noisy_path), ("clean", clean_path)):
                image = _read_tiff(path, shape)
                fh[key][i] = image
                result.stats[key].update(image)
            fh["index"][i] = i
            bar.update(1)
    return result


# ---------------------------------------------------------------------------------------------------------------
# The dataset card


def read_source(raw_dir: Path, log):
    """The ``source`` recorded by download in raw_data_dir/MANIFEST.json, or None."""
    path = raw_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable manifest, source not recorded (%s)", path, _one_line(exc))
        return None
    return manifest.get("source") if isinstance(manifest, dict) else None


def build_card(results: dict[str, SplitResult], shape: tuple[int, int], has_dose: bool, source, raw: dict,
               section: dict, raw_dir: Path) -> dict:
    """The dataset card: the keys of layout.DATASET_CARD_KEYS first, then provenance."""
    train = results["train"].stats
    return {
        "format": CARD_FORMAT,
        "image_shape": list(shape),
        "splits": {name: {"file": SPLIT_FILE.format(split=name), "n": r.n} for name, r in results.items()},
        "value_range": {name: {key: r.stats[key].range for key in ("noisy", "clean")}
                        for name, r in results.items()},
        "normalisation": {key: {"mean": train[key].mean, "std": train[key].std} for key in ("noisy", "clean")},
        "data_range": results["test"].stats["clean"].hi - results["test"].stats["clean"].lo,
        "data_range_definition": DATA_RANGE_DEFINITION,
        "has_dose": has_dose,
        "source": source,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "emdenoise_version": __version__,
        "preprocess": {"val_fraction": section["val_fraction"], "seed": section["seed"],
                       "raw_data_dir": str(raw_dir.resolve())},
        "raw": raw,
    }


def _check_card_numbers(results: dict[str, SplitResult], files: dict[str, RawImages]) -> None:
    """Refuse data that would make the PSNR range or the normalisation meaningless."""
    test_clean = results["test"].stats["clean"]
    if not test_clean.hi > test_clean.lo:
        raise InputError.at(files["test_clean"].path, RAW_DATASET, f"expected clean test images with max > min to "
                            f"fix the PSNR data range, got every pixel = {test_clean.lo:g}")
    for key in ("noisy", "clean"):
        stats = results["train"].stats[key]
        if not stats.std > 0:
            raise InputError.at(files[f"train_{key}"].path, RAW_DATASET, f"expected varying pixel values in the "
                                f"training split to normalise by, got every pixel = {stats.lo:g}")


def _log_table(log, results: dict[str, SplitResult]) -> None:
    log.info("%-10s %7s  %-24s %-24s", "split", "pairs", "noisy [min, max]", "clean [min, max]")
    for name, r in results.items():
        ranges = ["[%.4g, %.4g]" % tuple(r.stats[key].range) for key in ("noisy", "clean")]
        log.info("%-10s %7d  %-24s %-24s", name, r.n, *ranges)


# ---------------------------------------------------------------------------------------------------------------


def run(ctx) -> None:
    raw_dir = Path(ctx.paths["raw_data_dir"])
    data_dir = Path(ctx.paths["data_dir"])
    section = ctx.params.preprocess
    log = ctx.log
    if not raw_dir.is_dir():
        raise InputError.at(raw_dir, None, "raw data folder not found; run the download task first")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError.at(data_dir, None, f"cannot create the output folder ({_one_line(exc)})") from None

    with contextlib.ExitStack() as inputs:
        files: dict[str, RawImages] = {}
        for split in RAW_SPLITS:
            files[f"{split}_noisy"], files[f"{split}_clean"] = open_raw_split(raw_dir, split, inputs, log)
        shape = files["train_noisy"].shape
        test_shape = files["test_noisy"].shape
        if test_shape != shape:
            raise InputError.at(files["test_noisy"].path, RAW_DATASET, f"expected {shape[0]}x{shape[1]} pixel "
                                f"images like the train split, got {test_shape[0]}x{test_shape[1]}")
        n_train = files["train_noisy"].n
        if n_train < 2:
            raise InputError.at(files["train_noisy"].path, RAW_DATASET, "expected at least 2 training pairs, to "
                                "hold out one for validation, got 1")
        doses = [files[f"{split}_noisy"].dose is not None for split in RAW_SPLITS]
        has_dose = all(doses)
        if any(doses) and not has_dose:
            log.warning("only some raw splits carry a 'dose' attribute; no split will carry a dose")
        inference = find_inference_pairs(raw_dir, log)

        train_rows, val_rows = split_rows(n_train, section["val_fraction"], section["seed"])
        if section["val_fraction"] == 0:
            log.warning("preprocess.val_fraction is 0: one pair is still held out, the validation split cannot "
                        "be empty")
        log.info("raw data: %s (%d train + %d test pairs of %dx%d pixels%s%s)", raw_dir, n_train,
                 files["test_noisy"].n, shape[0], shape[1], ", with dose" if has_dose else "",
                 f", {len(inference)} inference pairs" if inference else "")
        plan = {"train": ("train", train_rows), "val": ("train", val_rows),
                "test": ("test", np.arange(files["test_noisy"].n, dtype=np.int64))}

        results: dict[str, SplitResult] = {}
        # Every output goes to a temporary name first; all are renamed into place together at the end, so a
        # failure (bad image found half way, disk full) leaves the previous outputs as they were.
        with contextlib.ExitStack() as outputs:
            # The card is entered first so that it is renamed last: a kill during the renames leaves no card
            # (the next task says to run preprocess again), never an old card beside new splits.
            card_tmp = outputs.enter_context(atomic_path(data_dir / CARD))
            for name in SPLITS:
                raw_split, rows = plan[name]
                tmp = outputs.enter_context(atomic_path(data_dir / SPLIT_FILE.format(split=name)))
                results[name] = write_split(tmp, name, files[f"{raw_split}_noisy"], files[f"{raw_split}_clean"],
                                            rows, has_dose)
            if inference:
                tmp = outputs.enter_context(atomic_path(data_dir / SPLIT_FILE.format(split="inference")))
                results["inference"] = write_inference(tmp, inference, shape)
            _check_card_numbers(results, files)
            raw = {split: {"noisy": f"{split}/{RAW_FILES['noisy']}", "clean": f"{split}/{RAW_FILES['clean']}",
                           "n": files[f"{split}_noisy"].n, "shape": list(files[f"{split}_noisy"].ds.shape),
                           "dtype": str(files[f"{split}_noisy"].ds.dtype)} for split in RAW_SPLITS}
            card = build_card(results, shape, has_dose, read_source(raw_dir, log), raw, section, raw_dir)
            card_tmp.write_text(json_text(card))
            # The old card no longer describes what is about to be renamed into place.
            (data_dir / CARD).unlink(missing_ok=True)

    stale = data_dir / SPLIT_FILE.format(split="inference")
    if not inference and stale.exists():
        stale.unlink()
        log.info("removed %s from an earlier run: the raw data have no inference folder", stale)
    _log_table(log, results)
    log.info("normalisation (train): noisy mean %.4g std %.4g, clean mean %.4g std %.4g; PSNR data range R = %.4g",
             card["normalisation"]["noisy"]["mean"], card["normalisation"]["noisy"]["std"],
             card["normalisation"]["clean"]["mean"], card["normalisation"]["clean"]["std"], card["data_range"])
    log.info("wrote %s", data_dir)
