"""Reading the processed ``data_dir`` layout (see :mod:`emdenoise.layout`) into memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from emdenoise.data.card import check_normalisation as check_normalisation  # re-exported
from emdenoise.data.card import read_card
from emdenoise.errors import InputError
from emdenoise.io import h5safe
from emdenoise.layout import SPLIT_FILE

ATOM_DATASETS = ("atom_offsets", "atom_yx", "atom_vacant")


@dataclass
class Split:
    """One split in memory: ``noisy`` and ``clean`` float32 (N, H, W) (``clean`` None in noisy-only data);
    ``dose`` float32 (N,) or None; ``stack`` and ``frame`` int64 (N,) (which stack each image belongs to and
    its frame number there) or None; ``pixel_size`` float32 (N,) A/px or None; the true atom columns
    (``atom_offsets`` (N+1,), ``atom_yx`` (M, 2) px, ``atom_vacant`` (M,) bool) or None when the split does not
    carry them."""

    name: str
    noisy: np.ndarray
    clean: np.ndarray | None
    dose: np.ndarray | None = None
    stack: np.ndarray | None = None
    frame: np.ndarray | None = None
    pixel_size: np.ndarray | None = None
    atom_offsets: np.ndarray | None = None
    atom_yx: np.ndarray | None = None
    atom_vacant: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.noisy)

    @property
    def truth(self) -> np.ndarray:
        """The clean images; a one-line InputError for noisy-only data (nothing to score against)."""
        if self.clean is None:
            raise InputError.at(
                f"{self.name}.h5",
                "clean",
                "expected clean images to score against; these data are noisy-only (dataset card has_clean: false)",
            )
        return self.clean

    @property
    def has_atoms(self) -> bool:
        return self.atom_offsets is not None

    def atoms(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i``'s atom sites (M_i, 2) px and their vacancy flags (M_i,) bool."""
        assert self.atom_offsets is not None and self.atom_yx is not None and self.atom_vacant is not None
        a, b = int(self.atom_offsets[i]), int(self.atom_offsets[i + 1])
        return self.atom_yx[a:b], self.atom_vacant[a:b]


def _read_atoms(fh, path: Path, n_images: int) -> dict[str, np.ndarray]:
    """The optional atom datasets of a split file (rules: contract 2), checked; {} when absent."""
    found = {key: fh.get(key) for key in ATOM_DATASETS}
    if all(ds is None for ds in found.values()):
        return {}
    if not all(isinstance(ds, h5py.Dataset) for ds in found.values()):
        missing = [key for key, ds in found.items() if not isinstance(ds, h5py.Dataset)]
        raise InputError.at(path, missing[0], f"expected the atom datasets {', '.join(ATOM_DATASETS)} together")
    offsets = np.asarray(found["atom_offsets"][: n_images + 1], dtype=np.int64)
    total = int(offsets[-1]) if len(offsets) else 0
    if len(offsets) != n_images + 1 or np.any(np.diff(offsets) < 0) or offsets[0] != 0:
        raise InputError.at(path, "atom_offsets", f"expected {n_images + 1} non-decreasing offsets from 0")
    yx = np.asarray(found["atom_yx"][:total], dtype=np.float64)
    vacant = np.asarray(found["atom_vacant"][:total]).astype(bool)
    if yx.shape != (total, 2) or vacant.shape != (total,):
        raise InputError.at(path, "atom_yx", f"expected ({total}, 2) positions and ({total},) vacancy flags")
    return {"atom_offsets": offsets, "atom_yx": yx, "atom_vacant": vacant}


def load_card(data_dir: str | Path) -> dict:
    """The dataset card of ``data_dir`` as JSON, checked (:func:`emdenoise.data.card.read_card`; new code reads
    the typed :class:`~emdenoise.data.card.DatasetCard` itself)."""
    return read_card(data_dir).to_json()


def load_split(data_dir: str | Path, split: str, max_images: int = 0) -> Split:
    """Read one split (``train``, ``val``, ``test``, ``inference``) wholly into memory (first ``max_images``).

    The file's seal (:mod:`emdenoise.io.h5safe`) is checked first, over the whole file."""
    path = Path(data_dir) / SPLIT_FILE.format(split=split)
    if not path.is_file():
        raise InputError.at(path, None, f"{split} split not found; run the preprocess task first")
    n = None if max_images <= 0 else max_images
    try:
        with h5safe.open_sealed(path, hint="run the preprocess task again") as fh:
            arrays: dict[str, np.ndarray | None] = {}
            for key in ("noisy", "clean"):
                ds = fh.get(key)
                if key == "clean" and ds is None:  # noisy-only data (dataset card has_clean: false)
                    arrays[key] = None
                    continue
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
                    raise InputError.at(path, key, "expected a (N, H, W) dataset")
                arrays[key] = np.asarray(ds[:n], dtype=np.float32)
            for key, dtype in (
                ("dose", np.float32),
                ("stack", np.int64),
                ("frame", np.int64),
                ("pixel_size", np.float32),
            ):
                found = fh.get(key)
                arrays[key] = np.asarray(found[:n], dtype=dtype) if isinstance(found, h5py.Dataset) else None
            noisy = arrays["noisy"]
            assert noisy is not None
            atoms = _read_atoms(fh, path, len(noisy))
    except (OSError, RuntimeError) as exc:  # RuntimeError: h5py on damaged metadata
        raise InputError.at(path, None, f"expected a readable HDF5 file ({' '.join(str(exc).split())})") from None
    clean = arrays["clean"]
    if clean is not None and noisy.shape != clean.shape:
        raise InputError.at(path, "clean", f"expected the shape of 'noisy' {noisy.shape}, got {clean.shape}")
    return Split(
        split,
        noisy,
        clean,
        arrays["dose"],
        stack=arrays["stack"],
        frame=arrays["frame"],
        pixel_size=arrays["pixel_size"],
        **atoms,
    )
