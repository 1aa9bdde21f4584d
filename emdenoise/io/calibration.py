"""Pixel sizes from the units the microscope formats and image metadata name."""

from __future__ import annotations

import math
from typing import Any

# the lengths rsciio's readers (and the TIFF, ImageJ, OME, HDF5 metadata) name, in Angstrom
_ANGSTROM_PER_UNIT = {
    "a": 1.0,
    "å": 1.0,
    "Å": 1.0,
    "angstrom": 1.0,
    "angstroms": 1.0,
    "pm": 0.01,
    "nm": 10.0,
    "um": 1e4,
    "µm": 1e4,
    "μm": 1e4,
    "micron": 1e4,
    "microns": 1e4,
    "micrometer": 1e4,
    "mm": 1e7,
    "cm": 1e8,
    "m": 1e10,
    "meter": 1e10,
    "meters": 1e10,
}


def angstrom(scale: float | str, units: Any) -> float | None:
    """``scale`` in ``units`` per pixel as A/px; None when the unit is no length (or missing, or reciprocal)
    or the scale is not a positive finite number."""
    if not isinstance(units, str):
        return None
    unit = units.strip().strip("[]").replace("_", "")
    factor = _ANGSTROM_PER_UNIT.get(unit, _ANGSTROM_PER_UNIT.get(unit.lower()))
    try:
        value = float(scale)
    except (TypeError, ValueError):
        return None
    if factor is None or not math.isfinite(value) or value <= 0:
        return None
    return value * factor
