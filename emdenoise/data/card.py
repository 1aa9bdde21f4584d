"""The dataset card (``dataset_card.json``): what preprocess wrote and every later task relies on, as
:class:`DatasetCard`; and :func:`pixel_size_or_none`, the one reading of a pixel size (A/px) found in a file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdenoise.errors import InputError
from emdenoise.layout import CARD, CARD_FORMAT, DATASET_CARD_KEYS


def pixel_size_or_none(value: Any) -> float | None:
    """``value`` as a pixel size: a positive finite number (a Python or NumPy scalar), else None (missing,
    booleans, text, arrays, zero, negative, NaN)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None
    if not isinstance(value, (int, float, np.generic, np.ndarray)):
        return None
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in "uif":
        return None
    size = float(array)
    return size if math.isfinite(size) and size > 0 else None


def pixel_range_or_none(value: Any) -> list[float] | None:
    """``value`` as a range of pixel sizes: two of them, [min, max] with min <= max (a list, tuple or 1-D
    array), else None."""
    if not isinstance(value, (list, tuple, np.ndarray)) or np.ndim(value) != 1 or len(value) != 2:
        return None
    low, high = (pixel_size_or_none(v) for v in value)
    return [low, high] if low is not None and high is not None and low <= high else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_normalisation(path: str | Path, norm: Any) -> dict:
    """Check a {"noisy": {"mean", "std"}, "clean": {...}} mapping (std > 0, finite) or raise InputError."""
    for side in ("noisy", "clean"):
        stats = norm.get(side) if isinstance(norm, dict) else None
        ok = isinstance(stats, dict) and all(_is_number(stats.get(k)) for k in ("mean", "std"))
        if not ok or not isinstance(stats, dict) or stats["std"] <= 0:
            raise InputError.at(path, f"normalisation.{side}", f'expected {{"mean": m, "std": s > 0}}, got {stats!r}')
    return norm


@dataclass(frozen=True)
class DatasetCard:
    """The card's contract (:data:`emdenoise.layout.DATASET_CARD_KEYS`, described there) as fields; everything
    else it holds (provenance: ``created``, ``emdenoise_version``, ``preprocess``, ``raw``; noisy-only data:
    ``has_clean``, ``count_scale``, ...) in ``extra``, written back as it was. ``format`` is the version."""

    image_shape: list[int]
    splits: dict[str, dict[str, Any]]
    value_range: dict[str, Any]
    normalisation: dict[str, dict[str, float]]
    data_range: float
    data_range_definition: str
    has_dose: bool = False
    source: Any = None
    pixel_size_angstrom: float | None = None
    has_atoms: bool = False
    format: str = CARD_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The card as written to ``dataset_card.json``: the contract keys first, then the rest."""
        return {**{key: getattr(self, key) for key in DATASET_CARD_KEYS}, **self.extra}

    @classmethod
    def from_json(cls, doc: Any, path: str | Path = CARD) -> DatasetCard:
        """The card ``doc`` read from ``path``, checked where train, test and study rely on it: its ``format``,
        a ``data_range`` > 0 and a ``normalisation`` with std > 0 (one-line InputErrors naming the field)."""
        if not isinstance(doc, dict) or doc.get("format") != CARD_FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else doc
            raise InputError.at(path, "format", f"expected {CARD_FORMAT!r}, got {got!r}")
        value: Any = doc.get("data_range")
        if not _is_number(value) or value <= 0:
            raise InputError.at(
                path, "data_range", f"expected a number > 0, got {value!r}; run the preprocess task again"
            )
        check_normalisation(path, doc.get("normalisation"))
        contract: dict[str, Any] = {key: doc.get(key) for key in DATASET_CARD_KEYS}
        extra = {key: value for key, value in doc.items() if key not in contract}
        return cls(**contract, extra=extra)

    @property
    def has_clean(self) -> bool:
        """Whether the splits hold clean images (noisy-only data say ``has_clean: false``)."""
        return self.extra.get("has_clean", True) is not False

    @property
    def pixel_size(self) -> float | None:
        """A/px of the train split, None when the raw data did not say (or the card holds no positive number)."""
        return pixel_size_or_none(self.pixel_size_angstrom)

    @property
    def detector(self) -> Any:
        """The detector model the card records (:class:`emdenoise.classical.detector.DetectorModel`: offset and
        gain of detector values), None for cards without one (counts, or written before these fields)."""
        from emdenoise.classical.detector import from_card

        return from_card(self.extra)

    def contract(self) -> dict[str, Any]:
        """The contract keys alone (what a model's data fingerprint is taken over: not the date or folder)."""
        return {key: getattr(self, key) for key in DATASET_CARD_KEYS}


def read_card(data_dir: str | Path) -> DatasetCard:
    """The dataset card of ``data_dir`` (:meth:`DatasetCard.from_json`); a missing folder or card, or text
    that is not JSON, is a one-line InputError naming it."""
    data_dir = Path(data_dir)
    path = data_dir / CARD
    if not data_dir.is_dir():
        raise InputError.at(
            data_dir, "data_dir", "expected a folder of processed data, not found; run the preprocess task first"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError.at(path, None, "dataset card not found; run the preprocess task first") from None
    except (OSError, ValueError) as exc:
        raise InputError.at(
            path,
            None,
            f"expected a JSON dataset card ({exc.__class__.__name__}: "
            f"{' '.join(str(exc).split())}); run the preprocess task again",
        ) from None
    return DatasetCard.from_json(doc, path)
