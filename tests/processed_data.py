"""Writing small processed data folders (the ``data_dir`` layout of emdenoise.layout) for the tests that need
one without running download and preprocess."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emdenoise.io import h5safe
from emdenoise.outputs import write_json_atomic
from emdenoise.layout import CARD, CARD_FORMAT, DATASET_CARD_KEYS, SPLIT_FILE


def write_split(path: Path, noisy, clean, dose=None) -> None:
    """One split file, sealed as preprocess seals it: ``noisy``, ``clean`` (N, H, W), one image per chunk, and
    ``dose`` when given."""
    with h5safe.create_sealed(path) as fh:
        for key, images in (("noisy", noisy), ("clean", clean)):
            images = np.asarray(images, dtype=np.float32)
            fh.create_dataset(key, data=images, chunks=(1, *images.shape[1:]) if len(images) else None)
        if dose is not None:
            fh.create_dataset("dose", data=np.asarray(dose, dtype=np.float32))


def write_data_dir(root: Path, splits: dict[str, tuple], normalisation: dict, data_range: float | None = None) -> Path:
    """Write ``{split: (noisy, clean[, dose])}`` and a dataset card with every key of the contract.

    ``data_range`` defaults to the contract's definition: max - min of the clean test images.
    """
    root.mkdir(parents=True, exist_ok=True)
    entries, ranges, doses = {}, {}, []
    for split, (noisy, clean, *dose) in splits.items():
        dose = dose[0] if dose else None
        write_split(root / SPLIT_FILE.format(split=split), noisy, clean, dose)
        entries[split] = {"file": SPLIT_FILE.format(split=split), "n": len(clean)}
        ranges[split] = {"noisy": [float(np.min(noisy)), float(np.max(noisy))],
                         "clean": [float(np.min(clean)), float(np.max(clean))]}
        doses.append(dose is not None)
    if data_range is None:
        data_range = ranges["test"]["clean"][1] - ranges["test"]["clean"][0]
    card = {"format": CARD_FORMAT, "image_shape": list(np.shape(splits["test"][1])[1:]), "splits": entries,
            "value_range": ranges, "normalisation": normalisation, "data_range": float(data_range),
            "data_range_definition": "max - min of the clean test set", "has_dose": all(doses), "source": None}
    assert set(card) == set(DATASET_CARD_KEYS)
    write_json_atomic(root / CARD, card)
    return root
