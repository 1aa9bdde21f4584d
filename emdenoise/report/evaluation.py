"""The test report: ``results.md`` and the table in the log, ``comparison.png`` and ``psnr_bar.png``.

Inputs are the ``test_metrics.json`` structure built by :mod:`emdenoise.tasks.test` (the ``methods`` mapping
of row name -> ``psnr_mean``, ``psnr_std``, ``ssim_mean``, ...). Figures are returned for the caller to write
(:func:`emdenoise.report.figures.write_png`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emdenoise.report.figures import KIND_COLOURS, figure, legend_patch, save
from emdenoise.report.tables import is_number, num, ranked, settings, table

BASELINE_NOTE = (
    "Classical baselines: filter, then a global gain/offset fitted on the validation split (the "
    "filter's parameter is tuned on the same validation images). The noisy images are the clean "
    "image times a beam profile plus shot noise; a filter cannot remove the beam profile, the deep "
    "models learn to."
)

HEADER = ["method", "kind", "PSNR (dB)", "SSIM", "MSE", "images/s", "ms/image"]


def _columns(name: str, row: Mapping[str, Any]) -> list[str]:
    ms = None if row.get("seconds_per_image") is None else 1000.0 * row["seconds_per_image"]
    return [
        name,
        row.get("kind", ""),
        f"{num(row.get('psnr_mean'), '.2f')} ± {num(row.get('psnr_std'), '.2f')}",
        f"{num(row.get('ssim_mean'), '.3f')} ± {num(row.get('ssim_std'), '.3f')}",
        num(row.get("mse_mean"), ".3e"),
        num(row.get("images_per_s"), ".1f"),
        num(ms, ".2f"),
    ]


def dose_header(bins: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column titles of a PSNR-by-dose table: each bin's dose range and size."""
    return [f"{b['dose_min']:.3g}-{b['dose_max']:.3g} (n={b['n']})" for b in bins]


def markdown(metrics: Mapping[str, Any]) -> str:
    """The whole ``results.md``: a header saying R, n, device, then the table sorted by PSNR."""
    methods = metrics["methods"]
    lines = [
        "# em_denoise test results",
        "",
        f"{metrics['n_images']} test images. PSNR = 10 log10(R^2 / MSE) per image with the fixed data range "
        f"R = {metrics['data_range']:.6g} ({metrics.get('data_range_definition', 'from the dataset card')}), "
        "then the mean ± std over images; SSIM with an 11x11 Gaussian window (sigma 1.5) and the same R. "
        f"Device {metrics.get('device', '?')}, precision {metrics.get('precision', '?')}; deep-model speed "
        "excludes a warm-up batch; classical filters run one image at a time on the CPU.",
        "",
        BASELINE_NOTE,
        "",
    ]
    rows = [
        [str(rank), *_columns(name, methods[name]), settings(methods[name])]
        for rank, name in enumerate(ranked(methods), 1)
    ]
    lines += table(["rank", *HEADER, "settings"], "rllrrrrrl", rows)
    by_dose = metrics.get("psnr_by_dose")
    if by_dose and by_dose.get("bins"):
        bins = by_dose["bins"]
        lines += [
            "",
            "## Mean PSNR (dB) by dose",
            "",
            "Dose bins of about equal size (electrons per pixel at the beam centre).",
            "",
        ]
        rows = [[name, *(num(v, ".2f") for v in by_dose["methods"].get(name, []))] for name in ranked(methods)]
        lines += table(["method", *dose_header(bins)], "l" + "r" * len(bins), rows)
    return "\n".join(lines) + "\n"


def text_table(metrics: Mapping[str, Any]) -> list[str]:
    """The table as aligned plain-text lines, for the log."""
    methods = metrics["methods"]
    rows = [HEADER] + [_columns(name, methods[name]) for name in ranked(methods)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in rows
    ]


def comparison_figure(
    noisy: np.ndarray,
    clean: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    psnr: Mapping[str, Sequence[float]],
    labels: Sequence[str],
) -> Any:
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


def psnr_bar_figure(metrics: Mapping[str, Any]) -> Any:
    """Mean PSNR ± std per method (best first), coloured by kind: input, classical, deep (a figure to save)."""
    methods = metrics["methods"]
    names = [n for n in ranked(methods) if is_number(methods[n].get("psnr_mean"))]
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
    kinds = [kind for kind in KIND_COLOURS if any(methods[n].get("kind") == kind for n in names)]
    if kinds:
        ax.legend(
            handles=[legend_patch(color=KIND_COLOURS[kind], label=kind) for kind in kinds],
            fontsize=8,
            loc="upper right",
        )
    fig.tight_layout()
    return fig


def psnr_bar_chart(dest: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """:func:`psnr_bar_figure` saved as PNG into ``dest``, atomically."""
    save(psnr_bar_figure(metrics), dest)
