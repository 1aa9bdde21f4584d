"""The study report: ``report.md`` (fidelity per model and training size, the training data needed to beat
the best classical baseline, speed, PSNR by dose, cost) and its figures (``psnr_vs_train_size.png``,
``psnr_vs_dose.png``, ``fidelity_vs_speed.png``), all drawn from the
:class:`~emdenoise.study.summary.StudySummary` record that :func:`emdenoise.study.summary.summarise` builds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emdenoise.evaluation.records import MethodSummary
from emdenoise.evaluation.report import BASELINE_NOTE, dose_header, ranked, structure_section
from emdenoise.report.figures import KIND_COLOURS, figure, legend_line, save
from emdenoise.report.tables import duration, is_number, num, settings, table
from emdenoise.study.summary import StudySummary

FIGURES = {"train_size": "psnr_vs_train_size.png", "dose": "psnr_vs_dose.png", "speed": "fidelity_vs_speed.png"}
NEVER = "never within the sizes run"


def _baseline_order(methods: Mapping[str, MethodSummary]) -> list[str]:
    """Classical rows by PSNR, best first, then the noisy input."""
    return [n for n in ranked(methods) if methods[n].kind == "classical"] + [
        n for n in methods if methods[n].kind == "input"
    ]


def _classical(methods: Mapping[str, MethodSummary]) -> list[str]:
    return [n for n in _baseline_order(methods) if methods[n].kind == "classical"]


def _header(summary: StudySummary) -> list[str]:
    data, cfg, hw = summary.data, summary.config["study"], summary.hardware
    lines = [
        "# em_denoise study: fidelity, speed and training data",
        "",
        f"Created {summary.created} by emdenoise {summary.emdenoise_version} on {hw['device']}"
        + (f" ({hw['gpu']})" if hw.get("gpu") else "")
        + f", CPU {hw['cpu']} ({hw['cpu_count']} cores, "
        f"{hw['torch_threads']} torch threads), torch {hw['torch']}.",
        "",
        f"Data: {data['data_dir']} (source {data['source']}), images {data['image_shape']}, "
        f"{data['n_train_available']} training pairs available, {data['n_test']} test images. "
        f"PSNR = 10 log10(R^2 / MSE) per image with the fixed R = {data['data_range']:.6g} "
        f"({data['data_range_definition']}), then the mean over the test images; SSIM with an 11x11 Gaussian "
        "window (sigma 1.5) and the same R.",
        "",
        f"Each model is trained on the first N training pairs for {cfg['epochs']} epochs"
        + (f" (at least {cfg['min_steps']} optimiser steps)" if cfg["min_steps"] else "")
        + f", batch {cfg['batch_size']}, learning rate {cfg['lr']:g}, "
        + (f"{cfg['patch_size']}-pixel crops" if cfg["patch_size"] else "whole images")
        + f", seed {cfg['seed']}; the weights with the best validation PSNR are tested. "
        + BASELINE_NOTE,
        "",
    ]
    return lines + _status(summary)


def _status(summary: StudySummary) -> list[str]:
    """Notes on several devices, cells still to run and failed cells."""
    lines: list[str] = []
    if len(summary.devices_used) > 1:
        lines += [
            f"Note: the cells ran on more than one device ({', '.join(summary.devices_used)}); speeds "
            "compare only within a device.",
            "",
        ]
    if summary.pending_cells:
        lines += [
            f"**In progress**: {len(summary.cells)} cells finished, {len(summary.pending_cells)} to go "
            f"({', '.join(summary.pending_cells)}); this report is rewritten after every cell.",
            "",
        ]
    if summary.failed_cells:
        lines += [
            "**Failed cells** (a rerun retries them): "
            + "; ".join(f"{c['cell']}: {c['error']}" for c in summary.failed_cells),
            "",
        ]
    return lines


def _by_size(summary: StudySummary, key: str, fmt: str, target: float | None = None) -> list[str]:
    """One row per model, one column per training size: the cells' test ``key`` (bold above ``target``)."""
    cells = {(c["model"], c["train_size"]): c for c in summary.cells}
    rows = []
    for name in summary.models:
        row = [name]
        for size in summary.train_sizes:
            value = (cells.get((name, size)) or {}).get("test", {}).get(key)
            text = num(value, fmt)
            row.append(f"**{text}**" if is_number(value) and is_number(target) and value > target else text)
        rows.append(row)
    sizes = summary.train_sizes
    return table(["model"] + [str(s) for s in sizes], "l" + "r" * len(sizes), rows) + [""]


def _fidelity(summary: StudySummary) -> list[str]:
    best, methods = summary.best_baseline, summary.baselines
    lines = [
        "## Fidelity: mean test PSNR (dB) by number of training pairs",
        "",
        (
            f"**Bold**: above the best classical baseline, {best['name']} at {best['psnr_mean']:.2f} dB."
            if best
            else "No classical baseline was run."
        ),
        "",
    ]
    lines += _by_size(summary, "psnr_mean", ".2f", best["psnr_mean"] if best else None)
    lines += ["Mean test SSIM by number of training pairs:", ""] + _by_size(summary, "ssim_mean", ".4f")
    lines += ["Baselines (no training; the same test images):", ""]
    rows = [
        [
            name,
            methods[name].kind,
            f"{num(methods[name].psnr_mean, '.2f')} ± {num(methods[name].psnr_std, '.2f')}",
            f"{num(methods[name].ssim_mean, '.4f')} ± {num(methods[name].ssim_std, '.4f')}",
            settings(methods[name].to_json()),
        ]
        for name in _baseline_order(methods)
    ]
    return lines + table(["method", "kind", "PSNR (dB)", "SSIM", "tuned setting"], "llrrl", rows) + [""]


def _structure(summary: StudySummary) -> list[str]:
    """The structure table at the largest size (with the truth row), the generalisation split."""
    lines = structure_section(
        "Structure, atoms and consistency (models at their largest training size)",
        summary.at_largest_size,
        summary.structure_settings,
    ) + [""]
    gen = summary.generalisation
    if gen:
        lines += structure_section(
            f"Generalisation ({gen.n_images} images of another distribution; models at their largest size)", gen, None
        )
        rows = [[name, gen.methods[name].kind, num(gen.methods[name].psnr_mean, ".2f")] for name in ranked(gen.methods)]
        lines += ["", "Mean PSNR on the generalisation split:", ""] + table(
            ["method", "kind", "PSNR (dB)"], "llr", rows
        )
        lines += [""]
    return lines


def _training_data(summary: StudySummary) -> list[str]:
    target = summary.best_baseline["psnr_mean"] if summary.best_baseline else None
    rows = []
    for name, info in summary.models.items():
        win, at_win, at_largest = (
            info.smallest_winning_size,
            info.psnr_at_smallest_winning_size,
            info.psnr_at_largest_size,
        )
        rows.append(
            [
                name,
                str(win) if win is not None else NEVER,
                num(at_win, ".2f"),
                num(at_win - target, "+.2f") if at_win is not None and target is not None else "-",
                f"{num(at_largest, '.2f')} ({info.largest_size})" if info.largest_size else "-",
            ]
        )
    header = ["model", "smallest N", "PSNR at N (dB)", "margin (dB)", "PSNR at the largest N"]
    return ["## Training data needed to beat the best classical baseline", ""] + table(header, "lrrrr", rows) + [""]


def _speed(summary: StudySummary) -> list[str]:
    cfg, hw, methods = summary.config["study"], summary.hardware, summary.baselines
    lines = [
        "## Speed",
        "",
        "Inference images/s on the test images (deep models: batches of "
        f"{cfg['batch_size']} on {hw['device']}, warm-up batch excluded, median over the model's cells; "
        "classical filters: one image at a time on the CPU). Training images/s: median over the model's "
        "cells and epochs.",
        "",
    ]
    rows = [
        [
            name,
            "deep",
            num(info.parameters, ","),
            num(info.images_per_s, ".1f"),
            num(1000.0 / info.images_per_s if info.images_per_s else None, ".2f"),
            num(info.train_images_per_s, ".1f"),
        ]
        for name, info in summary.models.items()
    ]
    for name in _classical(methods):
        ms = methods[name].seconds_per_image
        rows.append(
            [
                name,
                "classical",
                "-",
                num(methods[name].images_per_s, ".1f"),
                num(1000.0 * ms if ms is not None else None, ".2f"),
                "-",
            ]
        )
    header = ["method", "kind", "parameters", "images/s", "ms/image", "training images/s"]
    return lines + table(header, "llrrrr", rows) + [""]


def _dose(summary: StudySummary) -> list[str]:
    bins = (summary.dose_bins or {}).get("bins")
    lines = ["## Mean PSNR (dB) by dose", ""]
    if not bins:
        return lines + ["The test split records no dose.", ""]
    lines += [
        "Test images sorted by dose (electrons per pixel at the beam centre) and cut into bins of about "
        "equal size; models at their largest training size.",
        "",
    ]
    rows = [
        [f"{name} ({info.largest_size})"] + [num(v, ".2f") for v in info.psnr_by_dose_at_largest_size]
        for name, info in summary.models.items()
        if info.psnr_by_dose_at_largest_size
    ]
    methods = summary.baselines
    rows += [[name] + [num(v, ".2f") for v in methods[name].psnr_by_dose or []] for name in _baseline_order(methods)]
    return lines + table(["method", *dose_header(bins)], "l" + "r" * len(bins), rows) + [""]


def _cost(summary: StudySummary) -> list[str]:
    sec = summary.seconds
    lines = [
        "## Cost",
        "",
        f"Training, all cells: {duration(sec['training_all_cells'])}; testing: "
        f"{duration(sec['evaluation_all_cells'])}; this run (cells kept from earlier runs cost nothing): "
        f"{duration(sec['this_run'])}. Per cell:",
        "",
    ]
    rows = [
        [
            c["cell"],
            str(c["epochs"]),
            num(c["train"]["seconds"], ".1f"),
            num(c["train"]["images_per_s"], ".1f"),
            str(c["train"]["best_epoch"]),
            num(c["train"]["best_val_psnr"], ".2f"),
        ]
        for c in summary.cells
    ]
    header = ["cell", "epochs", "training s", "training images/s", "best epoch", "best val PSNR"]
    return lines + table(header, "lrrrrr", rows)


def markdown(summary: StudySummary | Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The whole ``report.md``: header, fidelity, structure, training data, speed, dose, figures, cost."""
    summary = StudySummary.coerce(summary)
    lines = _header(summary) + _fidelity(summary) + _structure(summary) + _training_data(summary)
    lines += _speed(summary) + _dose(summary)
    lines += ["## Figures", ""] + [f"![{key}]({file})" for key, file in figures.items()] + [""]
    return "\n".join(lines + _cost(summary)) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _finite_values(values) -> list[float]:
    return [float(v) for v in values if is_number(v)]


def _noisy_on_scale(ax, shown: Sequence[float | None], noisy: Sequence[float | None]) -> bool:
    """Fit the y axis to the ``shown`` values, and to the noisy input's when it lies close enough.

    The noisy input usually scores far below every method (5 dB against 20-30 dB here): drawn on the same
    axis it would squash the differences that matter. It is drawn when it lies within the shown values'
    spread (at least 3 dB) below them; otherwise it is left off the axis (the caller says so in the legend).
    """
    shown, noisy = _finite_values(shown), _finite_values(noisy)
    if not shown:
        return bool(noisy)
    lo, hi = min(shown), max(shown)
    on_scale = bool(noisy) and min(noisy) >= lo - max(3.0, hi - lo)
    if on_scale:
        lo, hi = min(lo, *noisy), max(hi, *noisy)
    pad = max(0.5, 0.08 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    return on_scale


def _off_scale_handle(label: str, values: Sequence[float | None]):
    """A legend entry for the noisy input left off the axis, giving its values."""
    values = _finite_values(values)
    text = f"{min(values):.1f}" if max(values) - min(values) < 0.05 else f"{min(values):.1f}-{max(values):.1f}"
    return legend_line(linestyle=":", color=KIND_COLOURS["input"], label=f"{label} ({text} dB, off scale)")


def _classical_colour(i: int, n_models: int) -> str:
    return f"C{(n_models + i) % 10}"


def plot_psnr_vs_train_size(dest: Path, summary: StudySummary) -> None:
    """Mean test PSNR against the number of training pairs (log x), one line per model; every baseline as a
    horizontal line (the noisy input too, when on scale)."""
    models_out, methods = summary.models, summary.baselines
    colours = _colours(list(models_out))
    fig = figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    shown = []
    for name, info in models_out.items():
        points = sorted((int(s), v) for s, v in info.psnr_by_size.items() if is_number(v))
        if points:
            ax.plot(*zip(*points), marker="o", color=colours[name], label=name)
            shown += [v for _, v in points]
    classical = [n for n in _baseline_order(methods) if methods[n].kind == "classical"]
    for i, name in enumerate(classical):
        if is_number(methods[name].psnr_mean):
            ax.axhline(
                methods[name].psnr_mean,
                color=_classical_colour(i, len(models_out)),
                linestyle="--",
                linewidth=1,
                label=f"{name} (no training)",
            )
            shown.append(methods[name].psnr_mean)
    noisy = [methods["noisy"].psnr_mean] if "noisy" in methods else []
    handles, _ = ax.get_legend_handles_labels()
    if _noisy_on_scale(ax, shown, noisy):
        ax.axhline(noisy[0], color=KIND_COLOURS["input"], linestyle=":", linewidth=1)
        handles.append(legend_line(linestyle=":", color=KIND_COLOURS["input"], label="noisy input"))
    elif _finite_values(noisy):
        handles.append(_off_scale_handle("noisy input", noisy))
    ax.set_xscale("log")
    ax.set_xticks(summary.train_sizes)
    ax.set_xticklabels([str(s) for s in summary.train_sizes], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training pairs")
    ax.set_ylabel("mean test PSNR (dB)")
    ax.set_title(f"{summary.data['n_test']} test images, R = {summary.data['data_range']:.4g}", fontsize=9)
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    save(fig, dest)


def plot_psnr_vs_dose(dest: Path, summary: StudySummary) -> None:
    """Mean PSNR per dose bin (log x at each bin's geometric centre): models at their largest size, baselines,
    the noisy input (in the legend only when off scale)."""
    bins = (summary.dose_bins or {})["bins"]
    centres = [math.sqrt(max(b["dose_min"], 1e-12) * max(b["dose_max"], 1e-12)) for b in bins]
    models_out, methods, colours = summary.models, summary.baselines, _colours(list(summary.models))
    fig = figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    shown: list[float] = []

    def line(values, label, **style):
        points = [(c, v) for c, v in zip(centres, values) if is_number(v)]
        if points:
            ax.plot(*zip(*points), label=label, **style)
            shown.extend(v for _, v in points)

    for name, info in models_out.items():
        if info.psnr_by_dose_at_largest_size:
            line(
                info.psnr_by_dose_at_largest_size,
                f"{name} ({info.largest_size} pairs)",
                marker="o",
                color=colours[name],
            )
    classical = [n for n in _baseline_order(methods) if methods[n].kind == "classical"]
    for i, name in enumerate(classical):
        line(
            methods[name].psnr_by_dose or [],
            name,
            marker="s",
            markersize=4,
            linestyle="--",
            color=_classical_colour(i, len(models_out)),
        )
    noisy = (methods["noisy"].psnr_by_dose or []) if "noisy" in methods else []
    if _noisy_on_scale(ax, shown, noisy):
        line(noisy, "noisy input", marker="x", linestyle=":", color=KIND_COLOURS["input"])
        handles, _ = ax.get_legend_handles_labels()
    else:
        handles, _ = ax.get_legend_handles_labels()
        if _finite_values(noisy):
            handles.append(_off_scale_handle("noisy input", noisy))
    ax.set_xscale("log")
    ax.set_xlabel("dose, electrons per pixel at the beam centre (bin centre)")
    ax.set_ylabel("mean test PSNR (dB)")
    ax.legend(handles=handles, fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    save(fig, dest)


def plot_fidelity_vs_speed(dest: Path, summary: StudySummary) -> None:
    """Mean test PSNR against inference images/s (log x): models at their largest size, the baselines."""
    models_out, methods = summary.models, summary.baselines
    points = [(info.images_per_s, info.psnr_at_largest_size, name, "deep") for name, info in models_out.items()]
    points += [
        (methods[n].images_per_s, methods[n].psnr_mean, n, "classical")
        for n in _baseline_order(methods)
        if methods[n].kind == "classical"
    ]
    points = [p for p in points if p[0] is not None and is_number(p[0]) and p[0] > 0 and is_number(p[1])]
    fig = figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    for speed, psnr, name, kind in points:
        ax.scatter([speed], [psnr], color=KIND_COLOURS[kind], s=30)
        ax.annotate(name, (speed, psnr), xytext=(4, 3), textcoords="offset points", fontsize=8)
    handles = [
        legend_line(marker="o", linestyle="", color=KIND_COLOURS[k], label=label)
        for k, label in (("deep", "deep model (largest training size)"), ("classical", "classical filter"))
    ]
    noisy = [methods["noisy"].psnr_mean] if "noisy" in methods else []
    if _noisy_on_scale(ax, [p[1] for p in points], noisy):
        ax.axhline(noisy[0], color=KIND_COLOURS["input"], linestyle=":", linewidth=1)
        handles.append(legend_line(linestyle=":", color=KIND_COLOURS["input"], label="noisy input"))
    elif _finite_values(noisy):
        handles.append(_off_scale_handle("noisy input", noisy))
    ax.set_xscale("log")
    ax.set_xlabel(
        f"inference images/s (deep models: batches of {summary.config['study']['batch_size']} on "
        f"{summary.hardware['device']}; filters: one image at a time on the CPU)"
    )
    ax.set_ylabel("mean test PSNR (dB)")
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    save(fig, dest)


def write_figures(out_dir: Path, summary: StudySummary) -> dict[str, str]:
    """Draw the figures the data allow; returns figure key -> file name."""
    written = {}
    plot_psnr_vs_train_size(out_dir / FIGURES["train_size"], summary)
    written["train_size"] = FIGURES["train_size"]
    if summary.dose_bins:
        plot_psnr_vs_dose(out_dir / FIGURES["dose"], summary)
        written["dose"] = FIGURES["dose"]
    plot_fidelity_vs_speed(out_dir / FIGURES["speed"], summary)
    written["speed"] = FIGURES["speed"]
    return written
