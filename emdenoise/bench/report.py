"""The plain-text table ``emdenoise bench`` prints from its JSON document."""

from __future__ import annotations

import math
from typing import Any


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(doc: dict[str, Any]) -> str:
    """A plain-text summary: one line per model, task and size, then each model's ablation."""
    s = doc["settings"]
    lines = [
        f"emdenoise bench: {doc['device']} ({doc['device_name']}, {doc['cpu_count']} CPUs, "
        f"{doc['torch_threads']} threads), torch {doc['torch_version']}, {s['precision']}, "
        f"best of {s['repeats']} x {s['steps']} steps after {s['warmup']} warm-up",
        f"{'model':<10} {'task':<6} {'size':>5} {'batch':>6} {'plain img/s':>12} {'engine img/s':>13} "
        f"{'speedup':>8} {'peak MB':>8}",
    ]
    for name, m in doc["models"].items():
        for kind in ("train", "infer"):
            for size, fast in m[f"{kind}_images_per_s"].items():
                lines.append(
                    f"{name:<10} {kind:<6} {size:>5} {m['batch_size'][kind][size]:>6} "
                    f"{_fmt(m[f'plain_{kind}_images_per_s'][size]):>12} {_fmt(fast):>13} "
                    f"{m[f'{kind}_speedup_vs_plain_by_size'][size]:>7.2f}x "
                    f"{m['peak_memory_bytes'][kind][size] / 2**20:>8.0f}"
                )
    for name, m in doc["models"].items():
        lines.append(
            f"ablation {name} (train {s['train_sizes'][0]}, infer {s['sizes'][0]}): "
            "step, train img/s (gain), infer img/s (gain)"
        )
        for row in m["ablation"]:
            if "skipped" in row:
                lines.append(f"  {row['step']:<10} skipped: {row['skipped']}")
                continue
            cells = []
            for kind in ("train", "infer"):
                value, gain = row.get(f"{kind}_images_per_s"), row.get(f"{kind}_gain")
                failed, skipped = row.get(f"{kind}_failed"), row.get(f"{kind}_skipped")
                cells.append(
                    f"failed ({failed})"
                    if failed
                    else f"skipped ({skipped})"
                    if skipped
                    else f"{_fmt(value):>8}" + (f" ({gain:.2f}x)" if gain else "")
                )
            lines.append(f"  {row['step']:<10} {cells[0]:<20} {cells[1]}")
        lines.extend(f"  fallback: {item}" for item in m["fallbacks"])
    return "\n".join(lines)
