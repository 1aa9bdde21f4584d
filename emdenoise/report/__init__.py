"""The test report: the results table (markdown and log lines) and the figures (PNG, matplotlib Agg).

Inputs are the ``test_metrics.json`` structure built by :mod:`emdenoise.tasks.test` (the ``methods`` mapping
of row name -> ``psnr_mean``, ``psnr_std``, ``ssim_mean``, ...). Figures are drawn on a bare
:class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no display, no global backend switch) and
returned for the caller to write (:func:`save` writes one atomically). When matplotlib's configuration folder
is not writable (a container running as an arbitrary user, a read-only home), ``MPLCONFIGDIR`` is pointed at a
fresh temporary folder before matplotlib is first imported, so it neither fails nor warns.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from emdenoise.outputs import atomic_path

KIND_COLOURS = {"input": "#9e9e9e", "classical": "#4c72b0", "deep": "#dd8452"}

BASELINE_NOTE = ("Classical baselines: filter, then a global gain/offset fitted on the validation split (the "
                 "filter's parameter is tuned on the same validation images). The noisy images are the clean "
                 "image times a beam profile plus shot noise; a filter cannot remove the beam profile, the deep "
                 "models learn to.")


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------

def ranked(methods: Mapping[str, dict]) -> list[str]:
    """Row names sorted by mean PSNR, best first (rows without a finite PSNR last)."""
    def key(name: str) -> float:
        value = methods[name].get("psnr_mean")
        return -value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf
    return sorted(methods, key=key)


def num(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def settings(row: dict) -> str:
    """A short human reading of a row's parameters: the tuned value, gain/offset, or the model file."""
    params = row.get("params") or {}
    if row.get("kind") == "classical":
        tuned = [f"{k}={v}" for k, v in params.items()
                 if k not in ("gain", "offset", "grid", "tuned_on_val_images", "val_psnr", "tune_seconds")]
        gain, offset = params.get("gain"), params.get("offset")
        if gain is not None and offset is not None:
            tuned.append(f"gain {gain:.3g}, offset {offset:.3g}")
        return "; ".join(tuned)
    if row.get("kind") == "deep":
        return ", ".join(f"{k}={v}" for k, v in params.items() if k in ("model", "parameters", "epochs"))
    return ""


def _columns(name: str, row: dict) -> list[str]:
    return [name, row.get("kind", ""),
            f"{num(row.get('psnr_mean'), '.2f')} ± {num(row.get('psnr_std'), '.2f')}",
            f"{num(row.get('ssim_mean'), '.3f')} ± {num(row.get('ssim_std'), '.3f')}",
            num(row.get("mse_mean"), ".3e"), num(row.get("images_per_s"), ".1f"),
            num(None if row.get("seconds_per_image") is None else 1000.0 * row["seconds_per_image"], ".2f")]


HEADER = ["method", "kind", "PSNR (dB)", "SSIM", "MSE", "images/s", "ms/image"]


def markdown(metrics: dict) -> str:
    """The whole ``results.md``: a header saying R, n, device, then the table sorted by PSNR."""
    methods = metrics["methods"]
    lines = ["# em_denoise test results", "",
             f"{metrics['n_images']} test images. PSNR = 10 log10(R^2 / MSE) per image with the fixed data range "
             f"R = {metrics['data_range']:.6g} ({metrics.get('data_range_definition', 'from the dataset card')}), "
             "then the mean ± std over images; SSIM with an 11x11 Gaussian window (sigma 1.5) and the same R. "
             f"Device {metrics.get('device', '?')}, precision {metrics.get('precision', '?')}; deep-model speed "
             "excludes a warm-up batch; classical filters run one image at a time on the CPU.", "",
             BASELINE_NOTE, "",
             "| rank | " + " | ".join(HEADER) + " | settings |",
             "|---:|" + "---|" * 2 + "---:|" * 5 + "---|"]
    for rank, name in enumerate(ranked(methods), 1):
        lines.append(f"| {rank} | " + " | ".join(_columns(name, methods[name])) + f" | {settings(methods[name])} |")
    by_dose = metrics.get("psnr_by_dose")
    if by_dose and by_dose.get("bins"):
        bins = by_dose["bins"]
        lines += ["", "## Mean PSNR (dB) by dose", "",
                  "Dose bins of about equal size (electrons per pixel at the beam centre).", "",
                  "| method | " + " | ".join(f"{b['dose_min']:.3g}-{b['dose_max']:.3g} (n={b['n']})" for b in bins)
                  + " |", "|---|" + "---:|" * len(bins)]
        for name in ranked(methods):
            values = by_dose["methods"].get(name, [])
            lines.append(f"| {name} | " + " | ".join(num(v, ".2f") for v in values) + " |")
    return "\n".join(lines) + "\n"


def text_table(metrics: dict) -> list[str]:
    """The table as aligned plain-text lines, for the log."""
    methods = metrics["methods"]
    rows = [HEADER] + [_columns(name, methods[name]) for name in ranked(methods)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
            for r in rows]


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------

def _config_dir_writable() -> bool:
    """Whether matplotlib's default configuration folder exists or can be made, and is writable."""
    try:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
        base.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return False
    return os.access(base, os.W_OK | os.X_OK)


def figure(width: float, height: float):
    """A new Agg-backed figure, making sure matplotlib has a writable configuration folder first."""
    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR") and not _config_dir_writable():
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="emdenoise-matplotlib-")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def write_png(fig, path: str | os.PathLike) -> None:
    """Render ``fig`` as PNG into ``path`` as it is (a temporary path the caller renames)."""
    fig.savefig(path, format="png")


def save(fig, dest: str | os.PathLike) -> None:
    """Render ``fig`` as PNG into ``dest``, atomically."""
    with atomic_path(dest) as tmp:
        write_png(fig, tmp)


def comparison_figure(noisy: np.ndarray, clean: np.ndarray, outputs: Mapping[str, np.ndarray],
                      psnr: Mapping[str, Sequence[float]], labels: Sequence[str]):
    """A grid, returned: one row per image (``noisy``/``clean`` (K, H, W)), columns noisy, each method, clean.

    ``outputs`` maps method -> (K, H, W) images in column order; ``psnr`` maps ``noisy`` and each method to
    K PSNR values shown in the titles. Every panel of a row shares one grey scale: the clean image's 0.5 to
    99.5 percentiles, so brightness errors (the beam profile) stay visible.
    """
    columns = ["noisy", *outputs, "clean"]
    k = len(noisy)
    side = 2.0
    fig = figure(side * len(columns), side * k + 0.4)
    for r in range(k):
        vmin, vmax = np.percentile(clean[r], [0.5, 99.5])
        if vmax <= vmin:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        for c, name in enumerate(columns):
            image = noisy[r] if name == "noisy" else clean[r] if name == "clean" else outputs[name][r]
            ax = fig.add_subplot(k, len(columns), r * len(columns) + c + 1)
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = name if name == "clean" else f"{name}\n{num(float(psnr[name][r]), '.2f')} dB"
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=8)
    fig.tight_layout()
    return fig


def psnr_bar_chart(dest: str | os.PathLike, metrics: dict) -> None:
    """:func:`psnr_bar_figure` saved as PNG into ``dest``, atomically."""
    save(psnr_bar_figure(metrics), dest)


def psnr_bar_figure(metrics: dict):
    """Mean PSNR ± std per method (best first), coloured by kind: input, classical, deep (a figure to save)."""
    methods = metrics["methods"]
    names = [n for n in ranked(methods)
             if isinstance(methods[n].get("psnr_mean"), (int, float)) and math.isfinite(methods[n]["psnr_mean"])]
    fig = figure(max(4.0, 0.6 * len(names) + 1.5), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    means = [methods[n]["psnr_mean"] for n in names]
    stds = [methods[n].get("psnr_std") or 0.0 for n in names]
    colours = [KIND_COLOURS.get(methods[n].get("kind"), "#555555") for n in names]
    ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("PSNR (dB), mean ± std over images")
    ax.set_title(f"{metrics['n_images']} test images, R = {metrics['data_range']:.4g}", fontsize=9)
    from matplotlib.patches import Patch

    kinds = [kind for kind in KIND_COLOURS if any(methods[n].get("kind") == kind for n in names)]
    if kinds:
        ax.legend(handles=[Patch(color=KIND_COLOURS[kind], label=kind) for kind in kinds], fontsize=8,
                  loc="upper right")
    fig.tight_layout()
    return fig
