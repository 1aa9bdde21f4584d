"""Typed records of the evaluation: one method's summary, the metrics of a split, ``test_metrics.json``.

Frozen dataclasses with ``to_json()`` (the plain mapping written to disk, the keys of before) and
``from_json()`` (which also reads files written before the records existed: a missing optional key takes its
default). A file-level record carries a ``format`` key; nested records are versioned by their file's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from emdenoise.inference.levels import COUNTS_PER_MEAN

R = TypeVar("R", bound="Record")

TEST_FORMAT = "emdenoise-test/1"

BEAM_CENTRE_DOSE = "electrons per pixel at the beam centre"  # the recorded dose of HRTEM data
# the recorded dose of data stored per some other level (the dataset card's input_units)
DOSE_UNITS = {COUNTS_PER_MEAN: "mean counts per pixel: the STEM frames are stored per their mean"}


class Record:
    """The ``to_json``/``from_json`` of a frozen dataclass. ``NESTED``: field -> (record class, "one" | "map");
    ``OMIT_NONE``: fields left out of the JSON when None; ``FORMAT``: the file format written under ``format``."""

    NESTED: ClassVar[Mapping[str, tuple[type[Record], str]]] = {}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()
    FORMAT: ClassVar[str | None] = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self.OMIT_NONE:
                continue
            if isinstance(value, Record):
                value = value.to_json()
            elif f.name in self.NESTED and self.NESTED[f.name][1] == "map":
                value = {k: v.to_json() for k, v in value.items()}
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
        """From a mapping as :meth:`to_json` writes it; ``ValueError`` naming a missing required field or a
        format this version cannot read."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        if cls.FORMAT and "format" in data and data["format"] != cls.FORMAT:
            raise ValueError(f"format: expected {cls.FORMAT!r}, got {data['format']!r}")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ValueError(f"{f.name}: expected in a {cls.__name__} record, missing")
                continue
            value = data[f.name]
            if f.name in cls.NESTED and value is not None:
                kind, how = cls.NESTED[f.name]
                value = kind.from_json(value) if how == "one" else {k: kind.from_json(v) for k, v in value.items()}
            kwargs[f.name] = value
        return cls(**kwargs)

    @classmethod
    def coerce(cls: type[R], value: R | Mapping[str, Any]) -> R:
        """``value`` itself, or the record read from a mapping (for callers that still hold plain JSON)."""
        return value if isinstance(value, cls) else cls.from_json(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MethodSummary(Record):
    """One row of a table: a method's means and stds over images, its speed, settings, structure metrics and
    consistency check. ``atoms`` only where the split carries true atoms; ``psnr_by_dose`` (the study's rows)
    and ``device``/``precision`` (the study's cells) only where given."""

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"atoms", "psnr_by_dose", "device", "precision"})

    kind: str
    psnr_mean: float | None = None
    psnr_std: float | None = None
    ssim_mean: float | None = None
    ssim_std: float | None = None
    mse_mean: float | None = None
    mse_std: float | None = None
    images_per_s: float | None = None
    seconds_per_image: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    band_psnr_mean: float | None = None
    frc_resolution_px: float | None = None
    frc_resolution_angstrom: float | None = None
    deviation_mean: float | None = None
    deviance_ratio_mean: float | None = None
    inconsistent_fraction: float | None = None
    atoms: Mapping[str, Any] | None = None
    psnr_by_dose: list[float | None] | None = None
    device: str | None = None
    precision: str | None = None

    def replace(self, **changes: Any) -> MethodSummary:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SplitMetrics(Record):
    """The rows of one split, the strongest classical row with every deep row's margin, and the ``truth`` row:
    the clean images through the same atom detector (the ceiling of the atom scores; None without atoms)."""

    NESTED: ClassVar[Mapping[str, tuple[type[Record], str]]] = {"methods": (MethodSummary, "map")}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"n_images", "truth"})

    methods: dict[str, MethodSummary]
    strongest_classical: Mapping[str, Any] | None = None
    has_atoms: bool = False
    pixel_size_angstrom: float | None = None
    n_images: int | None = None
    truth: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TestMetrics(Record):
    """``test_metrics.json``: the test split's rows and settings, the generalisation split's rows, PSNR by dose;
    on noisy-only data the scores without truth instead of PSNR
    (:func:`emdenoise.evaluation.without_truth.summary` per kind of pair)."""

    __test__: ClassVar[bool] = False  # not a pytest test class
    NESTED: ClassVar[Mapping[str, tuple[type[Record], str]]] = {
        "methods": (MethodSummary, "map"),
        "generalisation": (SplitMetrics, "one"),
    }
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"truth", "generalisation", "psnr_by_dose", "without_truth"})
    FORMAT: ClassVar[str | None] = TEST_FORMAT

    n_images: int
    data_range: float
    methods: dict[str, MethodSummary]
    format: str = TEST_FORMAT
    data_range_definition: str = "the dataset card's data_range"
    image_shape: list[int] = field(default_factory=list)
    device: str = "?"
    precision: str = "?"
    baseline_treatment: str = ""
    structure_settings: Mapping[str, Any] | None = None
    pixel_size_angstrom: float | None = None
    has_atoms: bool = False
    truth: Mapping[str, Any] | None = None
    strongest_classical: Mapping[str, Any] | None = None
    generalisation: SplitMetrics | None = None
    psnr_by_dose: Mapping[str, Any] | None = None
    without_truth: Mapping[str, Any] | None = None  # noisy-only data: per kind of pair, the ranked scores

    @property
    def split(self) -> SplitMetrics:
        """The test split's part, as the generalisation split's is."""
        return SplitMetrics(
            self.methods, self.strongest_classical, self.has_atoms, self.pixel_size_angstrom, self.n_images, self.truth
        )
