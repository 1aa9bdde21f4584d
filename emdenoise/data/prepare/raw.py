"""The raw em_graphene_sim layout (:mod:`emdenoise.layout`): finding it, and reading and validating its files.

- :func:`find_layout_root` / :func:`check_raw_layout`: where the layout sits among a download's paths, and
  whether ``raw_data_dir`` holds it; :func:`micrograph_plan`: the files a ``micrographs:`` source brings;
- :func:`open_raw_split`: the noisy and clean ``images`` of one raw split, open and cross-checked
  (:class:`RawImages` reads them in blocks, refusing NaN or infinite pixels), with the optional per-image
  ``dose`` and ``pixel_size`` attributes and the true atom columns of a clean file (:class:`RawAtoms`);
- :func:`find_inference_pairs` / :func:`read_tiff`: the optional ``inference/raw`` + ``inference/truth`` TIFFs.

Every problem is a one-line :class:`~emdenoise.errors.InputError` naming the file, the dataset and what was
expected. The HDF5 files are opened through :func:`emdenoise.io.h5safe.open_foreign` (structure probed in a
child process first), so a damaged file is one line, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emdenoise.errors import InputError
from emdenoise.io import h5safe
from emdenoise.layout import MICROGRAPHS_DIR, RAW_DATASET, RAW_FILES, RAW_SPLITS, check_frame_pixels

REQUIRED = tuple(f"{split}/{name}" for split in RAW_SPLITS for name in RAW_FILES.values())
LAYOUT_TEXT = "the em_graphene_sim layout: train/ and test/, each holding " + " and ".join(sorted(RAW_FILES.values()))
LAYOUT_HINT = (
    "expected the em_graphene_sim layout: train/ and test/, each with graphene_img_noise.h5 and graphene_img_clean.h5"
)
MICROGRAPHS_HINT = '"micrographs:PATH"'
TIFF_SUFFIXES = (".tif", ".tiff")


def one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(exc).split()) or exc.__class__.__name__


# ---------------------------------------------------------------------------------------------------------------
# Where the layout is


def find_layout_root(paths: Iterable[str], where: Any) -> str:
    """The shallowest folder ('' or 'a/b/') holding train/ and test/ with both files each, among posix ``paths``.

    Raises a one-line :class:`InputError` naming what is missing when no folder has them all.
    """
    paths = set(paths)
    counts: dict[str, int] = {}
    for path in paths:
        for req in REQUIRED:
            if path == req or path.endswith("/" + req):
                root = path[: -len(req)]
                counts[root] = counts.get(root, 0) + 1
    complete = sorted((r for r, n in counts.items() if n == len(REQUIRED)), key=lambda r: (r.count("/"), r))
    if complete:
        if len(complete) > 1 and complete[1].count("/") == complete[0].count("/"):
            raise InputError(
                f"{where}: the layout appears in more than one folder ({complete[0]!r}, "
                f"{complete[1]!r}): point download.source at one of them"
            )
        return complete[0]
    best = max(counts, key=lambda r: (counts[r], -r.count("/")), default="")
    missing = [req for req in REQUIRED if best + req not in paths]
    under = f" under {best!r}" if best else ""
    hint = "" if counts else f"; for your own micrographs (no clean images) give download.source: {MICROGRAPHS_HINT}"
    raise InputError(f"{where}: no {', '.join(missing)}{under}: expected {LAYOUT_TEXT}{hint}")


def micrograph_plan(paths: Iterable[str], where: Any) -> dict[str, str]:
    """{``micrographs/<path>``: path} for every posix path with an extension ``denoise`` reads (hidden files
    left out); a one-line InputError when there is none."""
    from emdenoise.io.micrographs import FORMATS, format_of

    plan = {
        f"{MICROGRAPHS_DIR}/{rel}": rel
        for rel in paths
        if format_of(Path(rel)) and not any(part.startswith(".") for part in rel.split("/"))
    }
    if not plan:
        raise InputError.at(
            where,
            "download.source",
            f"expected micrograph files (extensions {' '.join(sorted(FORMATS))}), found none",
        )
    return plan


def check_raw_layout(raw_dir: Path, micrographs: bool = False) -> None:
    """After a download: the four files of the raw layout must be there (a micrographs: source: at least
    one file under ``micrographs/``)."""
    if micrographs:
        if not any(p.is_file() for p in (raw_dir / MICROGRAPHS_DIR).rglob("*")):
            raise InputError.at(raw_dir / MICROGRAPHS_DIR, None, "expected micrograph files, found none")
        return
    missing = [req for req in REQUIRED if not (raw_dir / req).is_file()]
    if missing:
        raise InputError(f"{raw_dir}: no {', '.join(missing)}: expected {LAYOUT_TEXT}")


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
    pixel_size: np.ndarray | None = None  # float32 (n,) A/px, from the "pixel_size" attribute, when valid
    atoms: RawAtoms | None = None  # the true atom columns (clean files of the synthetic generator), when valid

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images at the raw ``rows`` (any order, no repeats) as float32 (len(rows), H, W), in ``rows`` order."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        selection: slice | np.ndarray = ordered  # h5py wants increasing indices
        if len(ordered) and ordered[-1] - ordered[0] + 1 == len(ordered):
            selection = slice(int(ordered[0]), int(ordered[-1]) + 1)  # a contiguous run reads fastest
        try:
            data = self.ds[selection]
        # RuntimeError: h5py on damaged metadata; MemoryError: a damaged shape that claims petabytes
        except (OSError, RuntimeError, ValueError, TypeError, MemoryError) as exc:
            raise InputError.at(
                self.path,
                RAW_DATASET,
                f"cannot read images {int(ordered[0])}..{int(ordered[-1])}"
                f" ({one_line(exc)}); expected a complete, readable HDF5 file",
            ) from None
        if data.ndim == 4:
            data = data[..., 0]
        block = np.empty((len(rows),) + self.shape, dtype=np.float32)
        block[order] = data
        bad = ~np.isfinite(block).all(axis=(1, 2))
        if bad.any():
            first = int(np.argmin(np.where(bad, rows, np.iinfo(np.int64).max)))
            count = int((~np.isfinite(block[first])).sum())
            raise InputError.at(
                self.path,
                f"{RAW_DATASET}[{int(rows[first])}]",
                f"expected finite pixel values (as float32), got {count} NaN or infinite pixel(s)",
            )
        return block


@dataclass
class RawAtoms:
    """The true atom columns of a raw clean file (layout contract: ``atom_offsets`` (N+1,), ``atom_yx`` (M, 2),
    ``atom_vacant`` and ``atom_z`` (M,)), read whole."""

    offsets: np.ndarray  # int64 (N+1,)
    yx: np.ndarray  # float32 (M, 2)
    vacant: np.ndarray  # uint8 (M,)
    z: np.ndarray  # uint8 (M,)

    def take(self, rows: np.ndarray) -> RawAtoms:
        """The columns of images ``rows`` (in that order), re-based: image j of the result is raw image rows[j]."""
        counts = self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        offsets[1:] = np.cumsum(counts)
        index = np.repeat(self.offsets[rows] - offsets[:-1], counts) + np.arange(offsets[-1])
        return RawAtoms(offsets, self.yx[index], self.vacant[index], self.z[index])


ATOM_DATASETS = ("atom_offsets", "atom_yx", "atom_vacant", "atom_z")


def read_atoms(fh: h5py.File, path: Path, n: int, log) -> RawAtoms | None:
    """The atom datasets of a clean file when all four are there and consistent with ``n`` images; else None."""
    if not all(name in fh for name in ATOM_DATASETS):
        return None
    try:
        offsets, yx, vacant, z = (np.asarray(fh[name][()]) for name in ATOM_DATASETS)
    except (OSError, RuntimeError, TypeError, ValueError, KeyError) as exc:
        log.warning("%s: ignoring the unreadable atom datasets (%s)", path, one_line(exc))
        return None
    m = int(offsets[-1]) if offsets.ndim == 1 and len(offsets) else -1
    problem = None
    if offsets.dtype.kind not in "iu" or offsets.shape != (n + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        problem = f"atom_offsets: expected {n + 1} non-decreasing integers from 0, got {offsets.dtype} {offsets.shape}"
    elif yx.dtype.kind != "f" or yx.shape != (m, 2) or not np.isfinite(yx).all():
        problem = f"atom_yx: expected {m} finite (row, col) pairs, got {yx.dtype} {yx.shape}"
    elif vacant.shape != (m,) or z.shape != (m,) or vacant.dtype.kind not in "iub" or z.dtype.kind not in "iu":
        problem = f"atom_vacant, atom_z: expected {m} integers each, got {vacant.shape} and {z.shape}"
    if problem:
        log.warning("%s: ignoring the atom datasets: %s", path, problem)
        return None
    return RawAtoms(offsets.astype(np.int64), yx.astype(np.float32), vacant.astype(np.uint8), z.astype(np.uint8))


def open_raw_images(path: Path, stack: contextlib.ExitStack, log) -> RawImages:
    """Open ``path`` and check its ``images`` dataset: N >= 1 real-valued single-channel (H, W) images."""
    if not path.is_file():
        what = "found a folder, not a file" if path.is_dir() else "file not found"
        raise InputError.at(path, None, f"{what}; {LAYOUT_HINT}")
    try:
        fh = stack.enter_context(h5safe.open_foreign(path))  # the structure walked in a child process first
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError.at(path, None, f"expected a readable HDF5 file ({one_line(exc)})") from None
    try:
        obj = fh.get(RAW_DATASET)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise InputError.at(path, RAW_DATASET, f"cannot read the dataset ({one_line(exc)})") from None
    if obj is None:
        try:
            holds = sorted(fh.keys()) or "nothing"
        except (OSError, RuntimeError) as exc:
            raise InputError.at(path, RAW_DATASET, f"cannot list the file's contents ({one_line(exc)})") from None
        raise InputError.at(path, RAW_DATASET, f"expected a dataset named {RAW_DATASET!r}, the file holds {holds}")
    if not isinstance(obj, h5py.Dataset):
        raise InputError.at(path, RAW_DATASET, f"expected a dataset, got a {type(obj).__name__.lower()}")
    try:
        dtype, shape = obj.dtype, tuple(int(s) for s in obj.shape)
    except (OSError, RuntimeError, TypeError, ValueError) as exc:  # ValueError: h5py on a damaged datatype
        raise InputError.at(path, RAW_DATASET, f"cannot read the dataset's type and shape ({one_line(exc)})") from None
    if dtype.kind not in "fiub":
        raise InputError.at(path, RAW_DATASET, f"expected real-valued numbers (float32), got dtype {dtype}")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise InputError.at(
            path, RAW_DATASET, f"expected single-channel 2-D images, shape (N, H, W, 1) or (N, H, W), got shape {shape}"
        )
    if shape[0] == 0:
        raise InputError.at(path, RAW_DATASET, f"expected at least one image, got an empty dataset of shape {shape}")
    if shape[1] == 0 or shape[2] == 0:
        raise InputError.at(path, RAW_DATASET, f"expected images at least 1x1 pixels, got shape {shape}")
    check_frame_pixels(path, RAW_DATASET, shape[1], shape[2])
    return RawImages(
        path,
        obj,
        shape[0],
        (shape[1], shape[2]),
        read_dose(obj, path, shape[0], log),
        pixel_size=read_per_image(obj, "pixel_size", path, shape[0], log, positive=True),
        atoms=read_atoms(fh, path, shape[0], log),
    )


def read_per_image(ds: h5py.Dataset, name: str, path: Path, n: int, log, positive: bool = False) -> np.ndarray | None:
    """The per-image attribute ``name`` when it is a finite numeric array of length n (``positive``: and > 0),
    as float32; otherwise None (with a warning when it is there but unusable)."""
    try:
        if name not in ds.attrs:
            return None
        values = np.asarray(ds.attrs[name])
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        log.warning("%s: %s: ignoring the unreadable %r attribute (%s)", path, RAW_DATASET, name, one_line(exc))
        return None
    if (
        values.dtype.kind not in "fiu"
        or values.shape != (n,)
        or not np.isfinite(values).all()
        or (positive and not (values > 0).all())
    ):
        log.warning(
            "%s: %s: ignoring the %r attribute: expected %d finite%s numbers, got %s of shape %s",
            path,
            RAW_DATASET,
            name,
            n,
            " positive" if positive else "",
            values.dtype,
            values.shape,
        )
        return None
    return values.astype(np.float32)


def read_dose(ds: h5py.Dataset, path: Path, n: int, log) -> np.ndarray | None:
    """The per-image ``dose`` attribute when it is a finite numeric array of length n; otherwise None."""
    return read_per_image(ds, "dose", path, n, log)


def open_raw_split(raw_dir: Path, split: str, stack: contextlib.ExitStack, log) -> tuple[RawImages, RawImages]:
    """Open and cross-check the noisy and clean files of one raw split (same count, same image shape)."""
    noisy = open_raw_images(raw_dir / split / RAW_FILES["noisy"], stack, log)
    clean = open_raw_images(raw_dir / split / RAW_FILES["clean"], stack, log)
    if clean.n != noisy.n:
        raise InputError.at(
            clean.path, RAW_DATASET, f"expected {noisy.n} images, as many as in {noisy.path.name}, got {clean.n}"
        )
    if clean.shape != noisy.shape:
        raise InputError.at(
            clean.path,
            RAW_DATASET,
            f"expected images of {noisy.shape[0]}x{noisy.shape[1]} "
            f"pixels like {noisy.path.name}, got {clean.shape[0]}x{clean.shape[1]}",
        )
    return noisy, clean


# ---------------------------------------------------------------------------------------------------------------
# The optional inference TIFFs


def read_tiff(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One single-channel TIFF image as float32 (H, W), checked against the dataset's image shape."""
    import tifffile

    def wrong_size(got: tuple[int, ...]) -> InputError:
        return InputError.at(
            path,
            None,
            f"expected {shape[0]}x{shape[1]} pixels like the train and test images, "
            f"got {'x'.join(map(str, got)) or 'no image'}",
        )

    try:
        with tifffile.TiffFile(path) as tif:
            declared = tuple(tif.series[0].shape) if tif.series else ()
            if math.prod(declared) != math.prod(shape):  # from the header, before a declared size is allocated
                raise wrong_size(declared)
            image = tif.asarray()
    except InputError:
        raise
    except Exception as exc:  # a damaged TIFF makes tifffile raise almost anything (ValueError, RuntimeError ...)
        raise InputError.at(path, None, f"expected a readable TIFF image ({one_line(exc)})") from None
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[1:] if image.shape[0] == 1 else image.shape[:-1])
    if image.ndim != 2 or image.dtype.kind not in "fiub":
        raise InputError.at(
            path,
            None,
            f"expected one single-channel 2-D real-valued image, got shape {image.shape} dtype {image.dtype}",
        )
    if image.shape != shape:
        raise wrong_size(image.shape)
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise InputError.at(
            path,
            None,
            f"expected finite pixel values (as float32), got "
            f"{int((~np.isfinite(image)).sum())} NaN or infinite pixel(s)",
        )
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
            raise InputError.at(
                path,
                None,
                f"folder not found; expected it beside inference/{other} "
                f"(noisy TIFFs in inference/raw, clean TIFFs of the same names in inference/truth)",
            )
    names = {
        key: {p.name: p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES}
        for key, path in folders.items()
    }
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
        raise InputError.at(
            folders["truth"], None, "expected the same file names as inference/raw; " + "; ".join(problems)
        )
    return [(name, names["raw"][name], names["truth"][name]) for name in sorted(names["raw"])]


def generator_units(images: RawImages) -> str | None:
    """The level the physics generator says its noisy frames are at, where it is not the dose's: ``counts / mean``
    for STEM frames stored with ``stem_units: mean`` (the file attribute ``parameters``); None otherwise (any other
    file, em_graphene_sim's included: the card's ``has_dose`` decides)."""
    from emdenoise.data.simulate.stem import MODES
    from emdenoise.inference.levels import COUNTS_PER_MEAN

    try:
        params = json.loads(str(images.ds.file.attrs.get("parameters", "{}")))
    except (ValueError, TypeError):
        return None
    stem = params.get("stem_settings") if isinstance(params, dict) else None
    if params.get("imaging") in MODES and isinstance(stem, dict) and stem.get("units") == "mean":
        return COUNTS_PER_MEAN
    return None
