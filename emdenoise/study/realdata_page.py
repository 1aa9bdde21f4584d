"""The "Real data" page and its figures, from what :mod:`emdenoise.study.realdata` measured: one before/after
figure per file (a crop where the atoms can be seen), one table per file (time, the consistency check, the
correlation with the movie's other frames, and the columns left for the detector and without-truth scores), the
movie's registration, and what the numbers say about where the models fail. Also ``results.json`` (every
number) beside the figures.

    python -m emdenoise.study.realdata_page [--realdata DIR] [--out docs/results/real-data] [--page PAGE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from emdenoise.errors import script
from emdenoise.outputs import atomic_path
from emdenoise.report.figures import figure
from emdenoise.report.tables import num, table
from emdenoise.study import realdata
from emdenoise.study.realdata import STEM_ZOO, ZOO, ZOO_RESCALED, Outcome, Sample

VIEW = 160  # the side of the crop each figure shows (pixels of the region's centre)
LOCAL = "local"  # the folder, under the figures' folder, of figures that are not published
SCORE = "uPSNR without truth (dB)"


def _stem(sample: Sample) -> str:
    """The STEM zoo model run on ``sample`` (its imaging mode's)."""
    return STEM_ZOO[sample.spec.imaging]


def _shown(sample: Sample) -> list[Outcome]:
    """The panels after the noisy crop: the STEM zoo model, the HRTEM one as denoise applies it, then the four
    classical filters with the best scores without clean truth (without scores: the best correlation with the
    movie's other frames)."""
    done = [o for o in sample.outcomes if o.image is not None]
    classical = [o for o in done if not o.method.startswith("zoo:")]
    classical.sort(key=lambda o: -(o.score.get("upsnr") or -1e9))
    if not any(o.score.get("upsnr") is not None for o in classical):
        classical.sort(key=lambda o: -(o.frame_correlation or -1.0))
    models = [o for name in (_stem(sample), ZOO) for o in done if o.method == name]
    return models + classical[:4]


def _view(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    top, left = (h - min(VIEW, h)) // 2, (w - min(VIEW, w)) // 2
    return image[top : top + VIEW, left : left + VIEW]


def draw(sample: Sample, dest: Path) -> None:
    """Two rows of four panels, each its own 0.5-99.5 percentile grey scale (the zoo model's raw output is in
    other units): the noisy crop, the estimates, and the whole region (or the movie's reference) for context."""
    panels: list[tuple[np.ndarray, str]] = [(_view(sample.region), "noisy (as recorded)")]
    panels += [(_view(o.image), o.method.replace(", ", ",\n")) for o in _shown(sample) if o.image is not None]
    if sample.reference is not None:
        panels.append((_view(sample.reference), "mean of frames 1-4,\naligned"))
    else:
        panels.append((sample.region, f"the {sample.region.shape[0]} px region"))
    side = 1.8
    fig = figure(4 * side, 2 * side + 0.9)
    for k, (image, title) in enumerate(panels[:8]):
        ax = fig.add_subplot(2, 4, k + 1)
        lo, hi = np.percentile(image, [0.5, 99.5])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{sample.spec.title} ({num(sample.pixel_size, '.4f')} A/px)", fontsize=8)
    fig.tight_layout(h_pad=1.2)
    save_gray(fig, dest)


def save_gray(fig: Any, dest: Path) -> None:
    """The figure as an 8-bit grayscale PNG (a third of the size of matplotlib's RGBA), written atomically."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(buffer) as rendered, atomic_path(dest) as tmp:
        rendered.convert("L").save(tmp, format="PNG", optimize=True)


def _row(sample: Sample, outcome: Outcome) -> list[str]:
    check = outcome.check
    if outcome.image is None:
        return [f"`{outcome.method}`", "-", "-", "-", "-", outcome.note, "-", "-"]
    flagged = "**flagged**" if check.get("inconsistent") else "passes"
    upsnr, se = outcome.score.get("upsnr"), outcome.score.get("upsnr_se")
    score = "-" if upsnr is None else f"{upsnr:.2f} ± {num(se, '.2f')}"
    if upsnr is None and outcome.score.get("umse") is not None:  # scored, but below the noise estimate's reach
        score = "uMSE ≤ 0" + (": the lowest" if outcome.method == _lowest_umse(sample) else "")
    return [
        f"`{outcome.method}`",
        num(outcome.seconds, ".2f"),
        num(check.get("deviance_ratio"), ".3g"),
        num(check.get("z"), ".3g"),
        num(check.get("deviation"), ".3g"),
        flagged,
        num(outcome.frame_correlation, ".3f"),
        score,
    ]


def method_table(sample: Sample) -> list[str]:
    header = ["method", "s per region", "deviance ratio", "z", "deviation", "check", "corr. with frames 1-4"]
    rows = [_row(sample, o) for o in sample.outcomes]
    if sample.reference is not None:
        noisy = ["noisy input", "-", "-", "-", "-", "-", num(_noisy_correlation(sample), ".3f"), "-"]
        rows.insert(0, noisy)
    noisy_score = sample.noisy_score
    if noisy_score and noisy_score[0] is not None:
        rows.insert(0, ["noisy input (score)", *["-"] * 6, f"{noisy_score[0]:.2f} ± {num(noisy_score[1], '.2f')}"])
    return table([*header, SCORE], "lrrrrlrr", rows)


def _noisy_correlation(sample: Sample) -> float:
    from emdenoise.study.realdata import correlation

    return correlation(sample.region, sample.reference) if sample.reference is not None else float("nan")


def results(samples: list[Sample], hardware: dict[str, Any]) -> dict[str, Any]:
    """Every number of the page, JSON-ready."""
    return {
        "hardware": hardware,
        "files": {
            s.spec.key: {
                "path": s.spec.name,
                "shape": list(s.shape),
                "dtype": s.dtype,
                "pixel_size_A": s.pixel_size,
                "calibration": s.calibration,
                "region": list(s.region.shape),
                "registration": s.registration,
                "detector": s.detector,
                "score_kind": s.score_kind,
                "noisy_score": s.noisy_score,
                "score_check": s.score_check,
                "methods": {
                    o.method: {
                        "seconds": None if o.seconds is None else round(o.seconds, 4),
                        "check": o.check,
                        "frame_correlation": None if o.frame_correlation is None else round(o.frame_correlation, 4),
                        "output_mean": None if o.image is None else round(float(o.image.mean()), 3),
                        "output_std": None if o.image is None else round(float(o.image.std()), 3),
                        "score_without_truth": o.score,
                        "note": o.note,
                    }
                    for o in s.outcomes
                },
            }
            for s in samples
        },
    }


def write(samples: list[Sample], out: Path, page: Path, command: str) -> None:
    """The figures and ``results.json`` into ``out``, the page into ``page`` (each written atomically)."""
    import torch

    from emdenoise.study.summary import hardware

    out.mkdir(parents=True, exist_ok=True)
    info = hardware(torch.device("cpu"))
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    info["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    for sample in samples:  # figures of files whose licence forbids publishing them go to the git-ignored local/
        draw(sample, out / ("" if sample.spec.publish else LOCAL) / f"{sample.spec.key}.png")
    numbers = results(samples, info)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(numbers, indent=1) + "\n", encoding="utf-8")
    lines = markdown(samples, numbers, command, os.path.relpath(out, page.parent))
    with atomic_path(page) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------------ the page


def markdown(samples: list[Sample], numbers: dict[str, Any], command: str, figures: str) -> list[str]:
    """The markdown of the page (``figures``: the folder of the figures, relative to the page)."""
    hw = numbers["hardware"]
    lines = [
        "# Real data",
        "",
        f"Measured {hw['date']} on a {hw['cpu_count']}-core {hw['cpu']} (shared with other jobs), torch "
        f"{hw['torch']} CPU, {hw['torch_threads']} thread(s), by `{command}` (every number: "
        f"[results.json]({figures}/results.json)). Generated by `python -m emdenoise.study.realdata_page`: rerun it "
        "rather than edit this page.",
        "",
        "Micrographs recorded by microscopes, not simulated: there is no clean image to score against. What can "
        "be measured is how long each method takes, whether its estimate is consistent with the recorded values "
        "([the consistency check](../explanation/consistency.md)), and, for the ABF movie, how well the estimate "
        "of one frame agrees with the other frames (independent noise on the same area). The files are read where "
        "they are (`../shared/realdata`) or fetched from the package index into the cache "
        "(`emdenoise.data.acquire.examples`); none of them is in this repository.",
        "",
        *_files_table(samples),
    ]
    movie = next((s for s in samples if s.registration), None)
    if movie is not None:
        lines += _registration(movie)
    for sample in samples:
        lines += _file_section(sample, figures)
    lines += _failures(samples)
    lines += _scores_note()
    return lines


def _files_table(samples: list[Sample]) -> list[str]:
    rows = [
        [
            f"`{Path(s.spec.name).name}`",
            s.spec.what,
            f"{'x'.join(map(str, s.shape))} {s.dtype}",
            num(s.pixel_size, ".4f"),
            s.calibration,
            s.spec.source,
        ]
        for s in samples
    ]
    header = ["file", "what", "read as", "A/px", "calibration from", "source"]
    return ["## The files", "", *table(header, "llrrll", rows), ""]


def _registration(movie: Sample) -> list[str]:
    reg = movie.registration
    rows = [
        [
            f"0 -> {k + 1}",
            ", ".join(f"{v:+.2f}" for v in shift),
            ", ".join(f"{v:+d}" for v in best),
            num(before, ".3f"),
            num(after, ".3f"),
        ]
        for k, (shift, best, before, after) in enumerate(
            zip(reg["shifts_px"][1:], reg["best_whole_px"], reg["correlation_before"], reg["correlation_after"])
        )
    ]
    header = ["frames", "registered drift (dy, dx) px", "best whole-pixel drift", "corr. before", "corr. after"]
    return [
        "## Registration of the ABF movie",
        "",
        f"`emdenoise.data.prepare.registration.register` on the five frames took {reg['seconds']:.1f} s. The "
        "drift `(dy, dx)` means `frame_k[y + dy, x + dx]` shows what `frame_0[y, x]` shows; the best whole-pixel "
        "drift is a brute-force search of the real-space correlation within 12 px; the correlations are with "
        "frame 0, before and after the drift is undone (whole pixels, on the common area "
        f"{reg['common_area'][0]}x{reg['common_area'][1]}).",
        "",
        *table(header, "lrrrr", rows),
        "",
        "After registration neighbouring frames correlate at "
        + ", ".join(f"{c:.3f}" for c in reg["neighbours_after"])
        + ": per frame the signal variance is about the noise variance. The drifts listed in the shared folder's "
        "README for 0 -> 2 (-3, 2) and 0 -> 4 (-2, 6) are not what the frames say: both the registration and "
        "the brute-force search put them several pixels further in x. The drift is not one rigid shift either "
        "(the registration's sub-pixel answer and the best whole pixel differ by up to a pixel, and the frames "
        "show scan distortions), which is why the aligned frames correlate below the brute-force optimum.",
        "",
    ]


def _detector_line(sample: Sample) -> str:
    d = sample.detector
    if not d:
        return "Detector model: not measured."
    if "refused" in d:
        return f"Detector model: none fits ({d['refused']}); the split score cannot use counts here."
    return (
        f"Detector model ([fitted to the frame's own noise](../explanation/detector.md)): offset "
        f"{d['offset']:,.0f} ± {d['offset_error']:,.0f}, gain {d['gain']:.4g} ± {d['gain_error']:.2g} values per "
        f"electron (R² {d['r2']:.2f}), median {d['counts_median']:.3g} electrons per pixel."
    )


def _check_line(sample: Sample) -> str:
    check = sample.score_check
    if not check:
        return "Scores without truth: not measured."
    if "refused" in check:
        return f"Scores without truth: none ({check['refused']})."
    z = check.get("z")
    verdict = (
        "holds" if z is not None and abs(z) <= 3 else "**fails** (the scores are biased; the ranking may still hold)"
    )
    return (
        f"Scores' assumptions ({sample.score_kind}): the noisy input's uMSE over its own noise estimate is "
        f"{num(check.get('ratio'), '.2f')} (z {num(check.get('z'), '.1f')}): the check {verdict}."
    )


def _file_section(sample: Sample, figures: str) -> list[str]:
    by = {o.method: o for o in sample.outcomes}
    flagged = [f"`{o.method}`" for o in sample.outcomes if o.check.get("inconsistent")]
    region = sample.region
    zoo = by.get(ZOO)
    lines = [
        f"## {sample.spec.title}",
        "",
        f"`{Path(sample.spec.name).name}`: a {region.shape[0]}x{region.shape[1]} region denoised (the figure shows "
        f"its central {VIEW}x{VIEW} px, each panel on its own grey scale). The recorded values: mean "
        f"{region.mean():,.0f}, standard deviation {region.std():,.0f}, min {region.min():,.0f}, max "
        f"{region.max():,.0f}.",
        "",
        _figure(sample, figures),
        "",
        *method_table(sample),
        "",
        _detector_line(sample),
        "",
        _check_line(sample),
        "",
    ]
    if zoo is not None and zoo.image is not None:
        ratio = _output_level(sample)
        units = "in the input's units" if ratio is not None and 0.8 < ratio < 1.25 else "not in the input's units"
        lines.append(
            f"The zoo model returns values of mean {zoo.image.mean():,.1f} and standard deviation "
            f"{zoo.image.std():,.1f} for this input of mean {region.mean():,.0f}: its output is {units}."
        )
    lines += [f"Flagged by the check: {', '.join(flagged) or 'none'}.", ""]
    return lines


def _figure(sample: Sample, figures: str) -> str:
    if sample.spec.publish:
        return f"![{sample.spec.title}: noisy, the zoo model, classical filters]({figures}/{sample.spec.key}.png)"
    return (
        f"No figure here: the file's source ({sample.spec.source}) does not let us publish pictures of it. "
        f"`bash run/realdata.sh` draws it on your machine into `docs/results/real-data/{LOCAL}/{sample.spec.key}.png` "
        "(git-ignored)."
    )


def _failures(samples: list[Sample]) -> list[str]:
    flagged = [s.spec.key for s in samples if any(o.method == ZOO and o.check.get("inconsistent") for o in s.outcomes)]
    on_every = _count(flagged, samples)
    movie = next((s for s in samples if s.reference is not None), None)
    stem_flagged = [
        s.spec.key for s in samples if any(o.method == _stem(s) and o.check.get("inconsistent") for o in s.outcomes)
    ]
    lines = [
        "## Where the models fail",
        "",
        "Said plainly, from the tables and the figures above (what the figures show was looked at for this run):",
        "",
        f"- **The STEM models** (`{STEM_ZOO['haadf']}` on the HAADF files, `{STEM_ZOO['abf']}` on the ABF movie), "
        "as `denoise` applies them (each frame's counts above the fitted detector offset over their mean, the "
        "level they were trained at: [the model's "
        "level](../guides/denoise.md#counts-detector-values-and-the-models-level)). "
        "They were trained on the physics generator's STEM frames of graphene, MoS2 and SrTiO3 (3,000-300,000 "
        "electrons per probe position, 0.07-0.35 A/px, scan jitter, drift and flyback; [the zoo](zoo.md)); these "
        "files are held out: no frame of them, nor of any real microscope, was seen in training. Scores without "
        f"truth: {_zoo_against_noisy(samples, None)}. {_stem_verdict(samples)} The consistency check flags them "
        f"on {_count(stem_flagged, samples)}, as it flags most filters on these files (below).",
        f"- **`{ZOO}`**, as `denoise` applies it (each frame brought to the model's counts / dose level and "
        "back: [the model's level](../guides/denoise.md#counts-detector-values-and-the-models-level)). It was "
        "trained on HRTEM phase-contrast images of graphene from the physics generator, 20-5,000 e/px; these are "
        "STEM images (HAADF: bright columns, ABF: dark columns) in detector values, offsets of thousands to "
        f"millions. Its output is in the input's units ({_level_range(samples)}), so the scores without truth "
        f"grade it: {_zoo_against_noisy(samples, ZOO)}. The consistency check flags it on {on_every}. What it draws is "
        "its prior: on the HAADF frame round columns where the recorded (scan-distorted) columns and every filter "
        "keep them elongated; on the Au particle elongated blobs where the Bragg filter shows the lattice. It "
        "also removes what it takes for the beam, as the beam-aware filters do: the Au particle's bright "
        "envelope is flattened, which is why it scores far below the noisy input there. Do not use it on STEM "
        "images: use the STEM models.",
        f"- **`{ZOO}` on rescaled input** (the frame mapped onto the training range and fed as it is, the "
        "output fitted back by one gain and offset: what a user had to try before the model's level). It draws "
        "the same images: the clean look is the danger. Round columns and blobs are the graphene prior, not "
        f"the specimen; the consistency check does not see it (it passes it on {_passing(samples, ZOO_RESCALED)}).",
    ]
    if movie is not None:
        lines += [_movie_verdict(movie), _worse_than_noisy(movie)]
    lines += [
        *_score_lines(samples),
        "- **The beam-aware filters on detector values.** They model counts from zero, so where a detector "
        "model fits they now filter the counts above the fitted offset and map the result back, so that one "
        "frame in other detector units gives the same estimate. Measured against filtering the values as "
        "they are: on the MoS2 frame 2-3 dB higher scores for all four (the lattice was erased before), on "
        "the SrTiO3 HAADF frame lower (wiener 25.7 -> 22.4 dB, bragg 22.9 -> 21.1, pnlm 26.6 -> 26.3), on "
        "the Au particle about 2 dB lower (both far below the noisy input). They score below a plain Gaussian "
        "on "
        f"{_below_gaussian(samples)}: the Au particle is no lattice under a Gaussian beam, which is what they "
        "assume, and on the ABF movie no detector model fits at all.",
        "- **The consistency check on these files** works in counts above the fitted offset where a detector "
        "model fits. At their default strengths it flags most filters, mostly its lattice test (peaks of the "
        "counts erased); on the HAADF frame those peaks sit at periods of 2.4-2.6 px, which may be scan noise "
        "rather than lattice: periodic noise that is not Poisson counts as structure to it. On STEM files a "
        "flag is a reason to look, not proof; the scores without truth are the better guide to which estimate "
        "is nearer the signal.",
        "- **Noise that is not white.** The HAADF and ABF frames show scan-line streaks (rows offset against each "
        "other): noise correlated along the scan, which no filter here models and which a model trained on "
        "pixel-independent shot noise does not remove.",
        "",
    ]
    return lines


def _lowest_umse(sample: Sample) -> str | None:
    """The method of the lowest uMSE (the one every margin is taken against), None when nothing was scored."""
    return next((o.score["margin"]["vs"] for o in sample.outcomes if (o.score.get("margin") or {}).get("vs")), None)


def _score_lines(samples: list[Sample]) -> list[str]:
    """One bullet per file: the best method by its score without truth (the lowest uMSE, which may be below the
    noise estimate's reach and so have no uPSNR), and those that scored below the input."""
    lines = []
    for sample in samples:
        scored = [o for o in sample.outcomes if o.score.get("upsnr") is not None]
        best = _lowest_umse(sample)
        if not scored or not sample.noisy_score or best is None:
            continue
        by = {o.method: o.score for o in sample.outcomes}
        noisy = sample.noisy_score[0]
        worse = [f"`{o.method}`" for o in scored if noisy is not None and o.score["upsnr"] < noisy]
        if by[best].get("upsnr") is not None:
            top = f"best `{best}` {by[best]['upsnr']:.2f} dB"
        else:
            second = min(
                (o for o in sample.outcomes if o.score.get("margin")), key=lambda o: o.score["margin"]["delta_umse"]
            )
            margin = second.score["margin"]
            top = (
                f"best `{best}` (its uMSE ≤ 0: below what the noise estimate resolves, so no uPSNR; the next, "
                f"`{second.method}`, {margin['delta_umse']:,.0f} ± {num(margin['se'], ',.0f')} higher)"
            )
        lines.append(
            f"- **{sample.spec.title}, by the scores without truth** ({sample.score_kind}): {top} against the noisy "
            f"input's {num(noisy, '.2f')} dB; below the noisy input: {', '.join(worse) or 'none'}."
        )
    return lines


def _output_level(sample: Sample) -> float | None:
    """The zoo model's output mean over the input's (None where it did not run or the input's mean is 0)."""
    zoo = next((o for o in sample.outcomes if o.method == ZOO and o.image is not None), None)
    mean = float(sample.region.mean())
    return float(zoo.image.mean()) / mean if zoo is not None and zoo.image is not None and mean else None


def _level_range(samples: list[Sample]) -> str:
    """The zoo model's output mean over the input's, across the files."""
    ratios = [r for r in map(_output_level, samples) if r is not None]
    return f"output mean {min(ratios):.3f}-{max(ratios):.3f} of the input's" if ratios else "not run"


def _upsnr(sample: Sample) -> tuple[dict[str, float], str | None]:
    """Each method's uPSNR on ``sample`` (the rows that have one) and the best filter among them (no zoo row; None
    when no filter was scored)."""
    by = {o.method: float(o.score["upsnr"]) for o in sample.outcomes if o.score.get("upsnr") is not None}
    best = max((m for m in by if not m.startswith("zoo:")), key=lambda m: by[m], default=None)
    return by, best


def _stem_verdict(samples: list[Sample]) -> str:
    """Where each file's STEM model stands against the best filter by the scores without truth: ahead (the lowest
    uMSE of every row), or behind it by how many dB."""
    ahead, behind = [], []
    for sample in samples:
        row = _stem(sample)
        by, best = _upsnr(sample)
        if _lowest_umse(sample) == row:
            ahead.append(sample.spec.key)
        elif row in by and best is not None:
            behind.append(f"{sample.spec.key} by {by[best] - by[row]:.2f} dB (`{best}`)")
    said = f"Ahead of every filter on {', '.join(ahead) or 'no file'}"
    return said + (f"; behind the best filter on {'; '.join(behind)}." if behind else ".")


def _count(keys: list[str], samples: list[Sample]) -> str:
    """``every file``, or ``K of N files``."""
    return "every file" if len(keys) == len(samples) else f"{len(keys)} of {len(samples)} files"


def _zoo_against_noisy(samples: list[Sample], model: str | None) -> str:
    """Where the zoo ``model``'s score without truth (None: each file's STEM model) is above and below the noisy
    input's, and the best filter's."""
    parts = []
    for sample in samples:
        by, best = _upsnr(sample)
        noisy = sample.noisy_score[0] if sample.noisy_score else None
        row = model or _stem(sample)
        if row == _lowest_umse(sample) and row not in by and noisy is not None:
            parts.append(f"{sample.spec.key} the lowest uMSE of every row (≤ 0: no uPSNR; noisy {noisy:.2f})")
            continue
        if row not in by or noisy is None:
            continue
        against = f", best filter `{best}` {by[best]:.2f}" if best else ""
        parts.append(f"{sample.spec.key} {by[row]:.2f} dB (noisy {noisy:.2f}{against})")
    return "; ".join(parts) or "no file was scored"


def _below_gaussian(samples: list[Sample]) -> str:
    beam_aware = ("flat_gaussian", "bragg", "wiener", "pnlm")
    below = []
    for sample in samples:
        by = {o.method: o.score.get("upsnr") for o in sample.outcomes}
        gaussian = by.get("gaussian")
        if gaussian is not None and all((by.get(m) or -1e9) < gaussian for m in beam_aware):
            below.append(sample.spec.key)
    return f"{len(below)} of {len(samples)} files ({', '.join(below) or 'none'})"


def _passing(samples: list[Sample], method: str) -> str:
    """The files (by title) on which the check passes ``method``."""
    names = [
        s.spec.title
        for s in samples
        if any(o.method == method and o.check and not o.check.get("inconsistent") for o in s.outcomes)
    ]
    return "; ".join(names) or "no file"


def _worse_than_noisy(movie: Sample) -> str:
    """The methods whose estimate of the movie's first frame agrees with the other frames less than the noisy
    frame itself does: they removed signal, not only noise."""
    noisy = _noisy_correlation(movie)
    worse = [o for o in movie.outcomes if o.frame_correlation is not None and o.frame_correlation < noisy]
    listed = ", ".join(f"`{o.method}` ({o.frame_correlation:.3f})" for o in worse) or "none"
    return (
        f"- **Estimates that lost signal on the ABF movie**: correlating with frames 1-4 below the noisy frame's "
        f"{noisy:.3f}: {listed}."
    )


def _movie_verdict(movie: Sample) -> str:
    done = [o for o in movie.outcomes if o.frame_correlation is not None]
    best = max(done, key=lambda o: o.frame_correlation or -1.0)
    by = {o.method: o for o in done}
    noisy = _noisy_correlation(movie)
    parts = [f"`{m}` {num(by[m].frame_correlation, '.3f')}" for m in (_stem(movie), ZOO, ZOO_RESCALED) if m in by]
    return (
        f"- **On the ABF movie**, where the other four frames are an independent reference, the noisy first frame "
        f"correlates with their aligned mean at {noisy:.3f}; the best estimate is `{best.method}`'s "
        f"({num(best.frame_correlation, '.3f')}), the zoo models': {', '.join(parts)}."
    )


def _scores_note() -> list[str]:
    return [
        "## How the scores without truth are made",
        "",
        f"*{SCORE}*: [scores without clean truth](../explanation/metrics.md) (`emdenoise.score`): the ABF movie by "
        "its registered frame halves, each single frame by a binomial split of its counts (the counts through "
        "the frame's own detector offset and gain, [fitted to its noise](../explanation/detector.md)), with the "
        "data range of the frames; at half the file's dose (half of the frames, or of the counts), so lower "
        "than the whole file would give. The *assumptions* line under each table is the check of these scores: "
        "the noisy input's score against its own noise estimate (ratio 1 when the halves are independent with "
        "the noise the model says); where it fails, the ranking may hold but the numbers are biased.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m emdenoise.study.realdata_page",
        description="The Real data results page: real micrographs through every denoise method.",
    )
    ap.add_argument("--realdata", type=Path, default=realdata.ROOT.parent / "shared" / "realdata")
    ap.add_argument("--out", type=Path, default=realdata.ROOT / "docs" / "results" / "real-data")
    ap.add_argument("--page", type=Path, default=realdata.ROOT / "docs" / "results" / "real-data.md")
    ap.add_argument("--command", default="bash run/realdata.sh", help="the command named on the page")
    args = ap.parse_args(argv)

    def work() -> str:
        write(realdata.measure(args.realdata), args.out, args.page, args.command)
        return f"wrote {args.page} and the figures in {args.out}"

    return script(work)


if __name__ == "__main__":
    sys.exit(main())
