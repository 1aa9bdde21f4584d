"""The test report: ``results.md`` and the table in the log, ``comparison.png`` and ``psnr_bar.png``.

Inputs are the :class:`~emdenoise.evaluation.records.TestMetrics` record built by :mod:`emdenoise.tasks.test`
(or its ``test_metrics.json`` mapping, read into the record). Figures are returned for the caller to write
(:func:`emdenoise.report.figures.write_png`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from emdenoise.evaluation.records import BEAM_CENTRE_DOSE, MethodSummary, SplitMetrics, TestMetrics
from emdenoise.report import tables
from emdenoise.report.figures import KIND_COLOURS, figure, kind_label, legend_patch, save
from emdenoise.report.tables import is_number, num, settings, table

if TYPE_CHECKING:  # the scorer computes with torch; the report only reads its rows
    from emdenoise.evaluation.scorer import Scorer

BASELINE_NOTE = (
    "Classical baselines: filter, then a global gain/offset fitted on the validation split (the "
    "filter's parameter is tuned on the same validation images). The noisy images are the clean "
    "image times a beam profile plus shot noise: the plain filters (gaussian, median, tv, nlm) cannot "
    "remove the beam profile; the beam-aware ones (flat_gaussian, bragg, wiener, pnlm, flat_anscombe_bm3d) "
    "fit the beam to each frame's own counts and flat-field first."
)

HEADER = ["method", "kind", "PSNR (dB)", "SSIM", "MSE", "images/s", "ms/image"]
TRUTH = "truth (clean image)"


def ranked(methods: Mapping[str, MethodSummary]) -> list[str]:
    """Row names sorted by mean PSNR, best first (rows without a finite PSNR last)."""
    return tables.ranked({name: {"psnr_mean": row.psnr_mean} for name, row in methods.items()})


def _columns(name: str, row: MethodSummary) -> list[str]:
    ms = None if row.seconds_per_image is None else 1000.0 * row.seconds_per_image
    return [
        name,
        kind_label(row.kind),
        f"{num(row.psnr_mean, '.2f')} ± {num(row.psnr_std, '.2f')}",
        f"{num(row.ssim_mean, '.3f')} ± {num(row.ssim_std, '.3f')}",
        num(row.mse_mean, ".3e"),
        num(row.images_per_s, ".1f"),
        num(ms, ".2f"),
    ]


STRUCTURE_NOTE = (
    "Band PSNR: PSNR of the lattice band only (d-spacings {band} A; periods {band_px} px when the pixel size "
    "is unknown), blind to the brightness level. FRC: the period where the Fourier ring correlation with the "
    "clean image first drops below 1/7 (median over images; 2 px = resolved to Nyquist). Atoms: peaks of each "
    "output matched one-to-one to the true columns within {tol} A; a vacancy counts as found only where no peak "
    "lies on the site and the lattice around it was detected (vacancy R: share of the vacancies found, vacancy "
    "P: share of the sites called vacant that are); the truth row is the clean image through the same "
    "detector: the ceiling. Deviation: the relative error of the output implied by the Poisson deviance of the "
    "noisy counts given it (0 for an output consistent with its input); flagged: share of images above "
    "{maxdev} (the model may be inventing or erasing structure)."
)


def _pct(value: Any) -> str:
    return num(None if value is None else 100.0 * value, ".0f") + ("%" if is_number(value) else "")


def _atom_cells(atoms: Mapping[str, Any] | None, pixel_size: float | None) -> list[str]:
    atoms = atoms or {}
    rms = atoms.get("rms_error_pm") if pixel_size else atoms.get("rms_error_px")
    cells = [num(atoms.get(k), ".3f") for k in ("precision", "recall", "f1")]
    return cells + [
        num(rms, ".1f"),
        num(atoms.get("vacancy_recall"), ".3f"),
        num(atoms.get("vacancy_precision"), ".3f"),
    ]


def structure_lines(part: SplitMetrics) -> list[str]:
    """The structure-and-consistency table: lattice-band PSNR, FRC resolution, atom columns (with the truth
    row), deviance check."""
    pixel_size, has_atoms = part.pixel_size_angstrom, part.has_atoms
    header = ["method", "kind", "band PSNR (dB)", "FRC res. (" + ("A" if pixel_size else "px") + ")"]
    if has_atoms:
        header += ["atom P", "atom R", "atom F1", "RMS err (" + ("pm" if pixel_size else "px") + ")"]
        header += ["vacancy R", "vacancy P"]
    header += ["deviation", "flagged"]
    rows = []
    for name in ranked(part.methods):
        row = part.methods[name]
        frc = row.frc_resolution_angstrom if pixel_size else row.frc_resolution_px
        cells = [name, kind_label(row.kind), num(row.band_psnr_mean, ".2f"), num(frc, ".2f")]
        cells += _atom_cells(row.atoms, pixel_size) if has_atoms else []
        rows.append(cells + [num(row.deviation_mean, ".3f"), _pct(row.inconsistent_fraction)])
    if has_atoms and part.truth is not None:
        rows.append([TRUTH, "truth", "-", "-", *_atom_cells(part.truth, pixel_size), "-", "-"])
    return table(header, "ll" + "r" * (len(header) - 2), rows)


def margin_lines(strongest: Mapping[str, Any] | None) -> list[str]:
    """The strongest classical row and every deep model's margin against it."""
    if not strongest:
        return ["No classical baseline was run: no margin to state."]
    lines = [
        f"Strongest classical row: **{strongest['name']}** (PSNR {num(strongest.get('psnr'), '.2f')} dB, band "
        f"PSNR {num(strongest.get('band_psnr'), '.2f')} dB, atom F1 {num(strongest.get('atom_f1'), '.3f')}). "
        "Every network's margin against it, trained, pretrained or external (positive: the network is better):",
        "",
    ]
    margins = strongest.get("margins") or {}
    if not margins:
        return lines[:1]
    rows = [
        [name, *(num(m.get(k), "+.2f" if k != "atom_f1" else "+.3f") for k in ("psnr", "band_psnr", "atom_f1"))]
        for name, m in sorted(margins.items(), key=lambda kv: -(kv[1].get("psnr") or -math.inf))
    ]
    return lines + table(["model", "PSNR (dB)", "band PSNR (dB)", "atom F1"], "lrrr", rows)


def structure_section(title: str, part: SplitMetrics, settings_: Mapping[str, Any] | None) -> list[str]:
    """A titled section: the margins against the strongest classical row, then the structure table."""
    lines = ["", f"## {title}", ""]
    if settings_:
        lines += [
            STRUCTURE_NOTE.format(
                band="-".join(f"{v:g}" for v in settings_.get("lattice_band_angstrom", [])),
                band_px="-".join(f"{v:g}" for v in settings_.get("lattice_band_px_when_pixel_size_unknown", [])),
                tol=settings_.get("atom_tolerance_angstrom"),
                maxdev=settings_.get("consistency_max_deviation"),
            ),
            "",
        ]
    return lines + margin_lines(part.strongest_classical) + [""] + structure_lines(part)


def dose_header(bins: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column titles of a PSNR-by-dose table: each bin's dose range and size."""
    return [f"{b['dose_min']:.3g}-{b['dose_max']:.3g} (n={b['n']})" for b in bins]


PRETRAINED_NOTE = (
    "Rows of kind pretrained (zoo), named zoo:NAME, are models of the model zoo (emdenoise zoo): trained before "
    "this run on data of their own (their model cards give the pixel sizes and doses), not by it, and run with "
    "their own normalisation; the rows of kind deep were trained by this run."
)

EXTERNAL_NOTE = (
    "Rows of kind external (peer), named tk_r_em_NETWORK, are the peer restorer's pretrained networks (tk_r_em "
    "1.0.4, Lobato et al., npj Comput. Mater. 2024; GPL-3, TensorFlow on the CPU): the beam fitted and divided "
    "out as the beam-aware filters do, then the gain/offset of the classical rows, tuned on the val split."
)


def _header(metrics: TestMetrics) -> list[str]:
    pretrained = any(row.kind == "pretrained" for row in metrics.methods.values())
    external = any(row.kind == "external" for row in metrics.methods.values())
    return [
        "# em_denoise test results",
        "",
        f"{metrics.n_images} test images. PSNR = 10 log10(R^2 / MSE) per image with the fixed data range "
        f"R = {metrics.data_range:.6g} ({metrics.data_range_definition}), "
        "then the mean ± std over images; SSIM with an 11x11 Gaussian window (sigma 1.5) and the same R. "
        f"Device {metrics.device}, precision {metrics.precision}; deep-model speed "
        "excludes a warm-up batch; classical filters run one image at a time on the CPU.",
        "",
        BASELINE_NOTE,
        "",
        *([PRETRAINED_NOTE, ""] if pretrained else []),
        *([EXTERNAL_NOTE, ""] if external else []),
    ]


def _generalisation_lines(gen: SplitMetrics) -> list[str]:
    lines = structure_section(f"Generalisation ({gen.n_images} images of another distribution)", gen, None)
    rows = [[name, *_columns(name, gen.methods[name])[1:]] for name in ranked(gen.methods)]
    return lines + ["", "PSNR and SSIM on the generalisation split:", ""] + table(HEADER, "llrrrrr", rows)


def _dose_lines(by_dose: Mapping[str, Any], methods: Mapping[str, MethodSummary]) -> list[str]:
    bins = by_dose["bins"]
    lines = [
        "",
        "## Mean PSNR (dB) by dose",
        "",
        f"Dose bins of about equal size ({by_dose.get('unit', BEAM_CENTRE_DOSE)}).",
        "",
    ]
    rows = [[name, *(num(v, ".2f") for v in by_dose["methods"].get(name, []))] for name in ranked(methods)]
    return lines + table(["method", *dose_header(bins)], "l" + "r" * len(bins), rows)


WITHOUT_TRUTH_NOTE = (
    "No clean images (dataset card has_clean: false): every method is scored without truth. Each input x1 is "
    "denoised and compared with an independent noisy target y2 of the same signal; uMSE = mean[(f(x1) - y2)^2 - v] "
    "with v an unbiased estimate of the target's noise variance, so it estimates the MSE against the signal; "
    "uPSNR = 10 log10(R^2 / uMSE) per image, then averaged; ± one standard error (32 px blocks). uMSE above "
    "the best: the difference on the same pairs, whose error is smaller (the target noise cancels). "
    "Movie: x1, y2 the means of the interleaved frame halves of a stack, v their sample variance over frames "
    "(the Poisson variance with fewer than 2 target frames); split: the counts of one frame split binomially, "
    "v the Poisson variance of the target's counts. The score is at the dose of x1 (half the stack's, or p x "
    "the frame's). Baselines with their default settings (nothing to tune them on). local_maps.png: the "
    "consistency check's local deviation of each output against its input, in 32 px blocks."
)


def without_truth_lines(metrics: TestMetrics) -> list[str]:
    """The scores-without-truth tables of noisy-only data, one per kind of pair, best first."""
    from emdenoise.evaluation import without_truth as wt

    lines = [
        "# em_denoise test results (no clean truth)",
        "",
        f"{metrics.n_images} test tiles, data range R = {metrics.data_range:.6g} "
        f"({metrics.data_range_definition}). Device {metrics.device}, precision {metrics.precision}.",
        "",
        WITHOUT_TRUTH_NOTE,
    ]
    for kind, section in (metrics.without_truth or {}).items():
        pairs = "movie halves" if kind == "movie" else "binomial splits of single frames"
        lines += ["", f"## Scores without truth: {pairs}", ""]
        rows = wt.table_rows(wt.from_summary(section), section.get("margins"))
        lines += table(wt.TABLE_HEADER, wt.TABLE_ALIGN, rows) + wt.check_lines(section.get("identity_check"))
    return lines


def markdown(metrics: TestMetrics | Mapping[str, Any]) -> str:
    """The whole ``results.md``: a header saying R, n, device, then the table sorted by PSNR, the structure
    table, the generalisation split, PSNR by dose (noisy-only data: the scores without truth)."""
    metrics = TestMetrics.coerce(metrics)
    if metrics.without_truth is not None:
        return "\n".join(without_truth_lines(metrics)) + "\n"
    methods = metrics.methods
    rows = [
        [str(rank), *_columns(name, methods[name]), settings(methods[name].to_json())]
        for rank, name in enumerate(ranked(methods), 1)
    ]
    lines = _header(metrics) + table(["rank", *HEADER, "settings"], "rllrrrrrl", rows)
    lines += structure_section("Structure, atoms and consistency", metrics.split, metrics.structure_settings)
    if metrics.generalisation:
        lines += _generalisation_lines(metrics.generalisation)
    if metrics.psnr_by_dose and metrics.psnr_by_dose.get("bins"):
        lines += _dose_lines(metrics.psnr_by_dose, methods)
    return "\n".join(lines) + "\n"


def text_table(metrics: TestMetrics | Mapping[str, Any]) -> list[str]:
    """The table as aligned plain-text lines, for the log."""
    metrics = TestMetrics.coerce(metrics)
    if metrics.without_truth is not None:
        keep = ("|", "## ", "Check: ")
        return [line for line in without_truth_lines(metrics) if line.startswith(keep)]
    methods = metrics.methods
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
    K PSNR values shown in the titles. Every panel of a row but the noisy one shares one grey scale: the clean
    image's 0.5 to 99.5 percentiles, so brightness errors (the beam profile) stay visible. The noisy panel has its
    own 0.5 to 99.5 percentiles (on the clean image's few per cent of weak-phase contrast it would be saturated).
    """
    columns = ["noisy", *outputs, "clean"]
    k = len(noisy)
    side = 2.0
    fig = figure(side * len(columns), side * k + 0.4)
    for r in range(k):
        vmin, vmax = np.percentile(clean[r], [0.5, 99.5])
        if vmax <= vmin:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        own = np.percentile(noisy[r], [0.5, 99.5])
        for c, name in enumerate(columns):
            image = noisy[r] if name == "noisy" else clean[r] if name == "clean" else outputs[name][r]
            ax = fig.add_subplot(k, len(columns), r * len(columns) + c + 1)
            lo, hi = (own[0], max(own[1], own[0] + 1e-6)) if name == "noisy" else (vmin, vmax)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = name if name == "clean" else f"{name}\n{num(float(psnr[name][r]), '.2f')} dB"
            title += " (own scale)" if name == "noisy" else ""
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=8)
    fig.tight_layout()
    return fig


def psnr_bar_figure(metrics: TestMetrics | Mapping[str, Any]) -> Any:
    """Mean PSNR ± std per method (best first), coloured by kind: input, classical, deep, pretrained (a figure to
    save)."""
    metrics = TestMetrics.coerce(metrics)
    methods = metrics.methods
    names = [n for n in ranked(methods) if is_number(methods[n].psnr_mean)]
    fig = figure(max(4.0, 0.6 * len(names) + 1.5), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    means = [methods[n].psnr_mean for n in names]
    stds = [methods[n].psnr_std or 0.0 for n in names]
    colours = [KIND_COLOURS.get(methods[n].kind, "#555555") for n in names]
    ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("PSNR (dB), mean ± std over images")
    ax.set_title(f"{metrics.n_images} test images, R = {metrics.data_range:.4g}", fontsize=9)
    kinds = [kind for kind in KIND_COLOURS if any(methods[n].kind == kind for n in names)]
    if kinds:
        ax.legend(
            handles=[legend_patch(color=KIND_COLOURS[kind], label=kind_label(kind)) for kind in kinds],
            fontsize=8,
            loc="upper right",
        )
    fig.tight_layout()
    return fig


def psnr_bar_chart(dest: str | os.PathLike[str], metrics: TestMetrics | Mapping[str, Any]) -> None:
    """:func:`psnr_bar_figure` saved as PNG into ``dest``, atomically."""
    save(psnr_bar_figure(metrics), dest)


# -------------------------------------------------------------------- what the test task writes

COMPARISON = "comparison.png"


def per_image_csv(scorers: dict[str, Scorer]) -> str:
    """One line per split, image and method (the generalisation split's after the test split's)."""
    dose = any(scorer.split.dose is not None for scorer in scorers.values())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["index"]
        + (["dose"] if dose else [])
        + ["method", "kind", "psnr", "ssim", "mse", "band_psnr", "frc_px", "deviation", "inconsistent", "split"]
    )
    for split, scorer in scorers.items():
        doses = scorer.split.dose
        for name, row in scorer.rows.items():
            for i in range(row.n):
                writer.writerow(
                    [i]
                    + ([f"{doses[i]:.6g}" if doses is not None else ""] if dose else [])
                    + [name, kind_label(row.kind), f"{row.psnr[i]:.6f}", f"{row.ssim[i]:.6f}", f"{row.mse[i]:.6e}"]
                    + [f"{row.band_psnr[i]:.6f}", f"{row.frc_px[i]:.4f}", f"{row.deviation[i]:.5f}"]
                    + [int(row.inconsistent[i]), split]
                )
    return buf.getvalue()


def figure_indices(n: int, k: int) -> list[int]:
    """``k`` test image indices spread evenly over the split (first and last included)."""
    if k <= 0 or n <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(k, n))})


def figures(scorer: Scorer, metrics: TestMetrics, indices: list[int]) -> dict[str, Any]:
    """File name -> drawn figure: ``psnr_bar.png``, and ``comparison.png`` when ``indices`` is not empty."""
    drawn = {"psnr_bar.png": psnr_bar_figure(metrics)}
    if indices:
        split = scorer.split
        methods = [name for name in scorer.rows if name != "noisy"]
        labels = [f"test #{i}" + (f", dose {split.dose[i]:.3g}" if split.dose is not None else "") for i in indices]
        drawn[COMPARISON] = comparison_figure(
            split.noisy[indices],
            split.truth[indices],
            {name: np.stack([scorer.rows[name].figure[i] for i in indices]) for name in methods},
            {name: [row.psnr[i] for i in indices] for name, row in scorer.rows.items()},
            labels,
        )
    return drawn
