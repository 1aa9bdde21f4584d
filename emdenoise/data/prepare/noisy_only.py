"""Preprocess of noisy-only data: the user's own micrographs (a ``micrographs:`` download) into training splits.

Reads every file under ``raw_data_dir/micrographs/`` through :func:`emdenoise.io.micrographs.open_input` (the
readers ``denoise`` uses, so every format it reads) and writes to ``data_dir``:

- ``train.h5``, ``val.h5``, ``test.h5``: ``noisy`` float32 (N, T, T), no ``clean`` (contract 3), the frames
  cut into non-overlapping square tiles of side T = ``preprocess.tile_size`` (the remainder at the right and
  bottom edges is left out), plus ``stack`` int64 (N,) (tiles at the same place of the frames of one image
  stack share a stack number), ``frame`` int64 (N,) (the frame's number in its stack) and ``pixel_size``
  float32 (N,) when the file records it. The frames of a stack are drift-aligned to its first frame first
  (:mod:`emdenoise.data.prepare.registration`: a sub-pixel drift measured against a running reference, undone
  in whole pixels; the tiles cover the part every frame shares; ``preprocess.align``), so tiles with the
  same stack number and consecutive frames are Noise2Noise pairs (``train.supervision: frame_pairs``).
- The split is by stack number (``preprocess.val_fraction``, ``preprocess.seed``): every frame of a tile
  position goes into the same split. ``test.h5`` holds the val tiles again: there is no clean truth to test
  against; ``denoise`` the original files instead.
- ``dataset_card.json``: the keys of :data:`emdenoise.layout.DATASET_CARD_KEYS` with ``has_clean: false``, the
  ``clean`` normalisation equal to the noisy one (self-supervised targets are noisy frames), ``data_range``
  max - min of the noisy val tiles, ``count_scale`` (counts per stored unit: 1 when every pixel is a whole
  number, else null) with ``count_scale_source``, ``count_scale_estimate`` (the median over frames of
  :func:`emdenoise.classical.filters.estimate_count_scale`, to set ``train.counts_per_unit`` from), the
  detector model when the frames are detector values rather than counts (``detector_offset``,
  ``detector_gain``, ``detector_read_noise``, ``detector_source``, ``detector_offset_error``,
  ``detector_gain_error``, ``detector_r2``, ``detector_counts_median``: the photon-transfer estimate of
  :mod:`emdenoise.classical.detector`, the files' models combined; null with the reason in
  ``detector_source`` when the frames are whole-number counts already or no model fits),
  ``pixel_size_angstrom`` (median, or null) and ``has_atoms: false``, and ``micrographs``: each file's frames,
  with ``align`` (measured, off, one frame, unmeasurable), ``drift_px`` (each frame's drift to the first) and
  ``detector`` (the model fitted to that image's frames, or ``{"refused": reason}``).

Bad input is a one-line InputError naming the file: a file that cannot be read, NaN or infinite pixels,
frames smaller than the tile size, no frame at all.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdenoise import __version__
from emdenoise.config.params import PreprocessParams
from emdenoise.data.acquire.manifest import recorded_source
from emdenoise.data.card import pixel_size_or_none
from emdenoise.data.prepare import registration
from emdenoise.errors import InputError
from emdenoise.io import h5safe, micrographs
from emdenoise.layout import CARD, CARD_FORMAT, MICROGRAPHS_DIR, SPLIT_FILE, SPLITS
from emdenoise.log import progress
from emdenoise.outputs import Transaction

MAX_DRIFT_FRACTION = 0.25  # a drift larger than this part of the frame side is refused (no common area left)


@dataclass
class Tiles:
    """Every tile in memory, with its stack number, frame number and pixel size (NaN when unknown)."""

    images: list[np.ndarray] = field(default_factory=list)
    stack: list[int] = field(default_factory=list)
    frame: list[int] = field(default_factory=list)
    pixel_size: list[float] = field(default_factory=list)
    whole: bool = True  # every pixel a whole number
    scales: list[float] = field(default_factory=list)  # estimate_count_scale of each frame
    detectors: list[Any] = field(default_factory=list)  # each image's DetectorModel, or the reason it has none
    files: list[dict[str, Any]] = field(default_factory=list)


def is_micrographs(raw_dir: Path) -> bool:
    """Whether ``raw_dir`` holds a micrographs: download (and not the em_graphene_sim layout)."""
    return (raw_dir / MICROGRAPHS_DIR).is_dir() and not (raw_dir / "train").exists()


@dataclass
class Drift:
    """How a stack was aligned: ``shifts`` (N, 2) the measured drift of each frame to the first (pixels, sub-pixel;
    None when not measured) and ``how``: measured, off (``preprocess.align: off``), one frame, or unmeasurable."""

    shifts: np.ndarray | None
    how: str

    def record(self) -> dict[str, Any]:
        shifts = None if self.shifts is None else np.round(self.shifts, 2).tolist()
        return {"align": self.how, "drift_px": shifts}


def aligned(frames: list[np.ndarray], where: str, mode: str = "auto", log=None) -> tuple[list[np.ndarray], Drift]:
    """The frames of one stack cut to the area they all share after the drift to the first frame is undone
    (:mod:`emdenoise.data.prepare.registration`; whole-pixel shifts), and the drift. ``mode`` is
    ``preprocess.align``: off (frames as they are), on (an unmeasurable drift is an error), auto (an
    unmeasurable drift leaves the frames as they are, with a warning)."""
    if len(frames) < 2 or mode == "off":
        return frames, Drift(None, "off" if mode == "off" else "one frame")
    try:
        shifts = registration.register(frames)
    except registration.Unmeasurable as exc:
        if mode == "on":
            raise InputError.at(where, "frames", f"expected a measurable drift, {exc} (preprocess.align: on)") from None
        if log is not None:
            log.warning("%s: frames left unaligned (preprocess.align: auto): %s", where, exc)
        return frames, Drift(None, "unmeasurable")
    h, w = frames[0].shape
    d = np.rint(shifts).astype(int)
    if np.any(np.abs(d[:, 0]) > MAX_DRIFT_FRACTION * h) or np.any(np.abs(d[:, 1]) > MAX_DRIFT_FRACTION * w):
        k = max(range(len(d)), key=lambda i: max(abs(d[i, 0]) / h, abs(d[i, 1]) / w))
        raise InputError.at(
            where,
            "frames",
            f"expected a drift within a quarter of the frame between frames, found {tuple(d[k].tolist())}",
        )
    return registration.align(frames, shifts), Drift(shifts, "measured")


def _pixel_size(image: micrographs.ImageArray) -> float:
    """Å per pixel when the file records it (the reader's calibration of the image), else NaN."""
    size = pixel_size_or_none(image.pixel_size)
    return math.nan if size is None else size


def _check_counts(where: str, frames: list[np.ndarray]) -> None:
    """Noisy-only data are counts (the self-supervised modes and the count scale need them): a frame with a
    negative value is refused, naming the file, the frame and the smallest value (non-finite ones are refused
    by the reader)."""
    from emdenoise.classical.noise import counts_problem

    for i, frame in enumerate(frames):
        problem = counts_problem(frame)
        if problem:
            raise InputError.at(where, f"frame {i}" if len(frames) > 1 else None, problem)


def read_tiles(raw_dir: Path, tile: int, log, align: str = "auto") -> Tiles:
    """Every frame of every file under ``raw_dir/micrographs/``, aligned per stack and cut into tiles."""
    from emdenoise.classical.filters import estimate_count_scale

    folder = raw_dir / MICROGRAPHS_DIR
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and micrographs.format_of(p))
    if not paths:
        raise InputError.at(folder, None, "expected micrograph files (run the download task), found none")
    out = Tiles()
    next_stack = 0
    for path in progress(paths, desc="preprocess micrographs", unit="file"):
        with micrographs.open_input(path) as src:
            for image in src.images:
                pixel = _pixel_size(image)
                where = image.label(path)
                h, w = image.frame_shape
                if h < tile or w < tile:
                    raise InputError.at(
                        where,
                        "preprocess.tile_size",
                        f"expected frames of at least {tile}x{tile} pixels (the tile size), got {h}x{w}",
                    )
                stored = [np.asarray(f) for f in src.iter_frames(image)]
                frames = [f.astype(np.float32) for f in stored]
                _check_counts(where, frames)
                out.detectors.append(_detector(stored, where))
                out.whole &= all(np.array_equal(f, np.round(f)) for f in frames)
                out.scales += [estimate_count_scale(f) for f in frames]
                frames, drift = aligned(frames, where, align, log)
                fh, fw = frames[0].shape
                if fh < tile or fw < tile:
                    raise InputError.at(
                        where,
                        "preprocess.tile_size",
                        f"expected an aligned area of at least {tile}x{tile}, got {fh}x{fw}",
                    )
                positions = [(y, x) for y in range(0, fh - tile + 1, tile) for x in range(0, fw - tile + 1, tile)]
                for k, f in enumerate(frames):
                    for p, (y, x) in enumerate(positions):
                        out.images.append(f[y : y + tile, x : x + tile])
                        out.stack.append(next_stack + p)
                        out.frame.append(k)
                        out.pixel_size.append(pixel)
                next_stack += len(positions)
                out.files.append(
                    {
                        "file": path.relative_to(folder).as_posix(),
                        "image": image.name,
                        "frames": len(frames),
                        "frame_shape": [h, w],
                        "aligned_shape": [fh, fw],
                        "tiles_per_frame": len(positions),
                        **drift.record(),
                        "detector": _detector_record(out.detectors[-1]),
                    }
                )
    if not out.images:
        raise InputError.at(folder, None, "expected at least one readable frame, found none")
    log.info(
        "micrographs: %d files, %d images, %d tiles of %dx%d (%d tile positions)",
        len(paths),
        len(out.files),
        len(out.images),
        tile,
        tile,
        next_stack,
    )
    return out


def _detector(frames: list[np.ndarray], where: str) -> Any:
    """The photon-transfer model of one image's frames (their stored type kept: saturation is known by it),
    or the one-line reason none fits, naming the image."""
    from emdenoise.classical.detector import NotDetector, estimate_detector

    try:
        return estimate_detector(np.stack(frames))
    except NotDetector as exc:
        return f"{where}: {exc}"


def _detector_record(found: Any) -> dict[str, Any]:
    return {"refused": found} if isinstance(found, str) else found.to_json()


def detector_fields(tiles: Tiles) -> dict[str, Any]:
    """The card's ``detector_*`` fields: the files' models combined (:func:`emdenoise.classical.detector.combine`)
    when the frames are detector values; all null but ``detector_source`` (why) for whole-number frames whose
    model says they are counts already (or that no model fits: count_scale 1, as before), or when no model fits."""
    from emdenoise.classical.detector import CARD_KEYS, NotDetector, combine, looks_like_counts

    empty: dict[str, Any] = {f"detector_{key}": None for key in CARD_KEYS}
    refused = [d for d in tiles.detectors if isinstance(d, str)]
    try:
        if refused:
            raise NotDetector(refused[0])
        model = combine(tiles.detectors)
    except NotDetector as exc:
        why = "whole-number counts (no detector model fits: " if tiles.whole else "no detector model fits: "
        return {**empty, "detector_source": f"{why}{exc}{')' if tiles.whole else ''}"}
    if tiles.whole and looks_like_counts(model):
        why = f"whole-number counts (fitted gain {model.gain:.3g}, offset {model.offset:.3g}: counts already)"
        return {**empty, "detector_source": why}
    return model.card_fields()


def _write(path: Path, split: str, tiles: Tiles, rows: np.ndarray) -> None:
    noisy = np.stack([tiles.images[i] for i in rows]).astype(np.float32)
    with h5safe.create_sealed(path) as fh:
        fh.attrs["split"] = split
        fh.attrs["format"] = CARD_FORMAT
        fh.create_dataset("noisy", data=noisy, chunks=(1,) + noisy.shape[1:])
        fh.create_dataset("index", data=rows.astype(np.int64))
        fh.create_dataset("stack", data=np.asarray(tiles.stack, np.int64)[rows])
        fh.create_dataset("frame", data=np.asarray(tiles.frame, np.int64)[rows])
        sizes = np.asarray(tiles.pixel_size, np.float32)[rows]
        if np.all(np.isfinite(sizes)):
            fh.create_dataset("pixel_size", data=sizes)


def split_stacks(stack: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): the stack numbers split at random, at least one in each split when there are two."""
    numbers = np.unique(stack)
    if len(numbers) < 2:
        raise InputError.at(
            "micrographs",
            "preprocess.tile_size",
            f"expected at least 2 tile positions (one to train on, one to validate on), got {len(numbers)}; "
            "use a smaller tile size",
        )
    n_val = min(max(math.floor(val_fraction * len(numbers) + 0.5), 1), len(numbers) - 1)
    perm = np.random.default_rng(seed).permutation(numbers)
    val_set = set(perm[:n_val].tolist())
    is_val = np.array([s in val_set for s in stack])
    rows = np.arange(len(stack), dtype=np.int64)
    return rows[~is_val], rows[is_val]


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean(dtype=np.float64)), "std": float(values.std(dtype=np.float64))}


def _scale_note(counts: bool, detector: dict[str, Any]) -> str:
    if counts:
        return "1 (whole-number data)"
    if detector["detector_gain"] is not None:
        offset, gain = detector["detector_offset"], detector["detector_gain"]
        return f"from the detector model (offset {offset:.6g}, gain {gain:.4g} units per electron)"
    return f"unknown (set train.counts_per_unit for poisson_split; {detector['detector_source']})"


def preprocess_micrographs(raw_dir: Path, data_dir: Path, params: PreprocessParams, log) -> dict[str, Any]:
    """Write the noisy-only splits and their card (one Transaction, the card last); return the card."""
    tiles = read_tiles(raw_dir, params.tile_size, log, params.align)
    stack = np.asarray(tiles.stack)
    train_rows, val_rows = split_stacks(stack, params.val_fraction, params.seed)
    plan = {"train": train_rows, "val": val_rows, "test": val_rows}
    arrays = {name: np.stack([tiles.images[i] for i in rows]) for name, rows in plan.items()}
    norm = _stats(arrays["train"])
    if not norm["std"] > 0:
        raise InputError.at(raw_dir / MICROGRAPHS_DIR, None, "expected varying pixel values, every pixel is the same")
    sizes = np.asarray(tiles.pixel_size, np.float64)[train_rows]
    pixel_size = float(np.median(sizes)) if np.all(np.isfinite(sizes)) else None
    estimate = float(np.median(tiles.scales))
    detector = detector_fields(tiles)
    counts = tiles.whole and detector["detector_gain"] is None
    card = {
        "format": CARD_FORMAT,
        "image_shape": [params.tile_size, params.tile_size],
        "splits": {name: {"file": SPLIT_FILE.format(split=name), "n": len(rows)} for name, rows in plan.items()},
        "value_range": {name: {"noisy": [float(a.min()), float(a.max())], "clean": None} for name, a in arrays.items()},
        "normalisation": {"noisy": norm, "clean": dict(norm)},
        "data_range": float(arrays["val"].max() - arrays["val"].min()) or 1.0,
        "data_range_definition": "no clean images: R = max - min of the noisy val tiles (val.h5 'noisy')",
        "has_dose": False,
        "source": recorded_source(raw_dir, log),
        "has_clean": False,
        "count_scale": 1.0 if counts else None,
        "count_scale_source": "whole-number pixel values" if counts else None,
        "count_scale_estimate": estimate,
        **detector,
        "pixel_size_angstrom": pixel_size,
        "has_atoms": False,
        "test_split": "the val tiles again (no clean truth to test against)",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "emdenoise_version": __version__,
        "preprocess": {
            "val_fraction": params.val_fraction,
            "seed": params.seed,
            "tile_size": params.tile_size,
            "align": params.align,
            "raw_data_dir": str(raw_dir.resolve()),
        },
        "micrographs": tiles.files,
    }
    with Transaction() as tx:
        tx.remove(data_dir / CARD)
        for name in SPLITS:
            with tx.writing(data_dir / SPLIT_FILE.format(split=name)) as tmp:
                _write(tmp, name, tiles, plan[name])
        stale = data_dir / SPLIT_FILE.format(split="inference")
        if stale.exists():
            tx.remove(stale)
        tx.write_json(data_dir / CARD, card)
    log.info(
        "noisy-only splits: %d train, %d val tiles; count scale %s (estimate from the frames: %.4g counts per unit)",
        len(train_rows),
        len(val_rows),
        _scale_note(counts, detector),
        estimate,
    )
    return card
