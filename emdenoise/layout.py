"""File layouts shared by the tasks: the raw em_graphene_sim layout and the processed ``data_dir`` layout.

Raw (what ``download`` writes and ``preprocess`` reads; the public dataset's own layout)::

    raw_data_dir/
      train/graphene_img_noise.h5   dataset "images", float32, (N, H, W, 1), channels last
      train/graphene_img_clean.h5   dataset "images", same shape, pair i = row i of both files
      test/graphene_img_noise.h5
      test/graphene_img_clean.h5
      inference/raw/*.tif           optional, single-channel noisy images
      inference/truth/*.tif         optional, matching clean images (same file names)
      generalisation/...            optional, the same two files (another material or other optics)
      MANIFEST.json                 written by download: source, keys, sizes, checksums, time

    or, from a ``micrographs:PATH`` source (the user's own noisy micrographs, no clean images)::

      micrographs/...               the folder's or zip's micrograph files, as they are (any format denoise reads)
      MANIFEST.json

    The synthetic generator also stores per-image attributes (float32 arrays of length N) on the noisy
    "images" dataset: "dose" (electrons per pixel at the beam centre), "pixel_size" (A/px), "voltage_kv",
    "defocus_angstrom", "cs_mm" (and more optics, see emdenoise.data.simulate.pairs), the file attribute
    "material" on both files, and the true atom columns as four datasets of the clean file:
    "atom_offsets" int64 (N+1,) (image i's columns are rows atom_offsets[i]:atom_offsets[i+1]),
    "atom_yx" float32 (M, 2) (row, col) pixels, pixel centres at integer coordinates, "atom_vacant" uint8
    (M,) (1: a lattice site whose atoms were removed) and "atom_z" uint8 (M,) (atomic number).

Processed (what ``preprocess`` writes and ``train``/``test`` read)::

    data_dir/
      train.h5, val.h5, test.h5     datasets "noisy" and "clean": float32 (N, H, W), chunked one image per chunk,
                                    no compression; optional "dose": float32 (N,); optional "index": int64 (N,),
                                    the row in the raw file each pair came from. Noisy-only data (from a
                                    micrographs: source) have no "clean" and add "stack", "frame" int64 (N,)
                                    and optional "pixel_size" float32 (N,) (emdenoise.data.prepare.noisy_only)
      inference.h5                  optional, same datasets, from inference/raw + inference/truth
      generalisation.h5             optional, like test.h5, from raw generalisation/
                                    (every split: optional "pixel_size" float32 (N,) and the four atom
                                    datasets re-based to the split's rows, when the raw files carry them)
      dataset_card.json             see DATASET_CARD_KEYS

Models (what ``train`` writes and ``test``, ``denoise`` and ``study`` read)::

    model_dir/<model>/
      em_denoise_model.h5           the best weights by validation PSNR (real HDF5, see emdenoise.io.modelfile)
      em_denoise_model_last.h5      the weights after the last epoch
      checkpoint_last.h5            the resumable training state
      .staging/                     the model files of a run not finished yet (moved into place when it succeeds)
"""

from __future__ import annotations

from pathlib import Path

from emdenoise.errors import InputError

MICROGRAPHS_DIR = "micrographs"  # raw_data_dir/micrographs/: a micrographs: source's own noisy files
RAW_SPLITS = ("train", "test")
GENERALISATION_SPLIT = "generalisation"  # an optional raw split (same two files), processed like test
RAW_FILES = {"noisy": "graphene_img_noise.h5", "clean": "graphene_img_clean.h5"}
RAW_DATASET = "images"
MANIFEST = "MANIFEST.json"

SPLITS = ("train", "val", "test")
SPLIT_FILE = "{split}.h5"
CARD = "dataset_card.json"

# dataset_card.json holds at least these keys:
#   format          "emdenoise-data/1"
#   image_shape     [H, W]
#   splits          {split: {"file": "train.h5", "n": N}} for train, val, test (and inference when present)
#   value_range     {split: {"noisy": [min, max], "clean": [min, max]}}
#   normalisation   {"noisy": {"mean": m, "std": s}, "clean": {"mean": m, "std": s}}  (from the train split)
#   data_range      R, the fixed PSNR data range: max - min of the clean test set
#   data_range_definition  a sentence saying so
#   has_dose        whether the splits carry a "dose" dataset
#   source          the raw MANIFEST's source (or null)
#   pixel_size_angstrom  the median pixel size (A/px) of the train split, or null when the raw data do not say
#   has_atoms       whether the splits carry the true atom columns (atom_offsets, atom_yx, atom_vacant, atom_z)
DATASET_CARD_KEYS = (
    "format",
    "image_shape",
    "splits",
    "value_range",
    "normalisation",
    "data_range",
    "data_range_definition",
    "has_dose",
    "source",
    "pixel_size_angstrom",
    "has_atoms",
)
CARD_FORMAT = "emdenoise-data/1"

# The largest frame (image) any reader accepts: 2**28 pixels, 1 GiB as float32 (e.g. 16384 x 16384). Frames
# are read whole, so a header declaring more (a damaged or hostile file: a few bytes of HDF5, TIFF, NPY or MRC
# can declare 200000 x 200000) is refused before anything is allocated, instead of exhausting memory.
MAX_FRAME_PIXELS = 2**28


def check_frame_pixels(where, field: str | None, height: int, width: int) -> None:
    """Raise a one-line :class:`InputError` if a frame of ``height`` x ``width`` exceeds MAX_FRAME_PIXELS."""
    if height * width > MAX_FRAME_PIXELS:
        raise InputError.at(
            where,
            field,
            f"expected frames of at most {MAX_FRAME_PIXELS} pixels (2^28, e.g. "
            f"16384x16384: emdenoise's limit per frame), got {height}x{width}",
        )


MODEL_FILE = "em_denoise_model.h5"
LAST_MODEL_FILE = "em_denoise_model_last.h5"
CHECKPOINT_FILE = "checkpoint_last.h5"


def trained_models(model_dir: Path) -> dict[str, Path]:
    """``{model name: model file}`` for every ``model_dir/<name>/em_denoise_model.h5``, sorted by name."""
    return {p.parent.name: p for p in sorted(Path(model_dir).glob(f"*/{MODEL_FILE}")) if p.is_file()}


def select_model(model_dir: Path, choice: str, field: str = "denoise.model") -> tuple[str, Path]:
    """``(name, model file)`` for ``choice`` (the parameter ``field``): a folder name in ``model_dir``, or ``auto``
    (the only model there)."""
    if not model_dir.is_dir():
        raise InputError.at(
            model_dir, "model_dir", "expected a folder of trained models, not found; run the train task first"
        )
    found = trained_models(model_dir)
    if choice == "auto":
        if len(found) == 1:
            return next(iter(found.items()))
        if not found:
            raise InputError.at(
                model_dir,
                field,
                f"expected a trained model ({'<name>/' + MODEL_FILE}), found none; run the train task first",
            )
        raise InputError.at(
            model_dir,
            field,
            f"expected one model for 'auto', found {len(found)}: {', '.join(found)}; set {field} to one of them",
        )
    if choice not in found:
        have = f"one of {', '.join(found)}" if found else "a trained model name (none found; run train first)"
        raise InputError.at(model_dir / choice / MODEL_FILE, field, f"expected {have}, got {choice!r}")
    return choice, found[choice]
