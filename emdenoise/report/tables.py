"""The one markdown-table writer of every report, and the small formatting helpers the reports share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def num(value: Any, fmt: str) -> str:
    """``value`` formatted with ``fmt``; ``-`` for anything that is not a finite number (None, NaN, inf)."""
    return format(value, fmt) if is_number(value) else "-"


def table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table as lines; ``align`` has one letter per column: ``l`` (left) or ``r`` (right)."""
    if len(align) != len(header):
        raise ValueError(f"{len(header)} columns, {len(align)} alignments")
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def ranked(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Row names sorted by mean PSNR, best first (rows without a finite PSNR last)."""

    def key(name: str) -> float:
        value: Any = methods[name].get("psnr_mean")
        return -float(value) if is_number(value) else math.inf

    return sorted(methods, key=key)


def settings(row: Mapping[str, Any]) -> str:
    """A short human reading of a row's parameters: the tuned value, gain/offset, or the model file."""
    params = row.get("params") or {}
    if row.get("kind") == "classical":
        tuned = [
            f"{k}={v}"
            for k, v in params.items()
            if k not in ("gain", "offset", "grid", "tuned_on_val_images", "val_psnr", "tune_seconds")
        ]
        gain, offset = params.get("gain"), params.get("offset")
        if gain is not None and offset is not None:
            tuned.append(f"gain {gain:.3g}, offset {offset:.3g}")
        return "; ".join(tuned)
    if row.get("kind") in ("deep", "pretrained"):
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if k in ("model", "parameters", "epochs"))
        return shown + ("; pretrained (model zoo), not trained by this run" if row.get("kind") == "pretrained" else "")
    if row.get("kind") == "external" and "network" in params:
        gain, offset = params.get("gain"), params.get("offset")
        level = f"; gain {gain:.3g}, offset {offset:.3g}" if gain is not None and offset is not None else ""
        return f"network={params['network']}; beam=fitted, divided out{level}; external peer, not trained by us"
    return ""


def duration(seconds: float) -> str:
    """A duration in the unit that reads best: 42 s, 12.5 min, 3.2 h, 4.1 days."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
