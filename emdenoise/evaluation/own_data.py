"""The own-data path's report: the fine-tuned model against the zoo model as is and the tuned classical filters,
on the same frames (``run/own-data.sh`` prints it; ``run/own-data-check.sh`` measures with it).

    python -m emdenoise.evaluation.own_data INPUT_DIR --model fine-tuned=RUN/models/ffdnet/em_denoise_model.h5 \\
        --model zoo=zoo:hrtem-ffdnet [--truth TRUTH_DIR] [--out RUN/comparison.json]

``INPUT_DIR``: the noisy frames (any format ``denoise`` reads). ``TRUTH_DIR``, when the data have clean truth
(simulated frames): a file of the same name for each input holding the noise-free frames (any scale: every
score is taken after the best affine fit). With truth every row is scored by :func:`affine_psnr`, and each
classical filter's parameter is the one of its grid with the best mean score on these frames (the filter's
best case: an oracle choice no user without truth can make, so a model that beats it beats the filter).
Without truth the filters run at their defaults and every row is scored without truth
(:func:`scores_without_truth`: :mod:`emdenoise.evaluation.without_truth` through :func:`emdenoise.score`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from emdenoise.classical import methods as classical
from emdenoise.classical.tuning import fit_gain_offset
from emdenoise.errors import InputError, script
from emdenoise.method import Context

# the plain filter a microscopist reaches for, then the project's beam-aware ones (emdenoise.classical)
BASELINES = ("gaussian", "flat_gaussian", "bragg", "wiener", "pnlm")
# wider grids than the test task's for the two Gaussian filters: at a few e/px the best sigma can exceed 3 px
GRIDS = {
    "gaussian": (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
    "flat_gaussian": (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0),
}

Frames = dict[str, np.ndarray]  # file name -> (N, H, W) float32
PixelSizes = Mapping[str, float | None]  # file name -> A/px


@dataclass(frozen=True)
class Row:
    """One method's result on the frames: ``psnr`` the mean of ``per_frame`` (None without truth)."""

    method: str
    setting: str
    psnr: float | None
    per_frame: list[float]
    seconds: float
    without_truth: dict[str, float] = field(default_factory=dict)


def read_frames(folder: Path) -> tuple[Frames, dict[str, float | None]]:
    """Every micrograph file under ``folder`` (sorted by name) as float32 frames, and each file's pixel size
    (A/px, None when uncalibrated); no file is an InputError."""
    from emdenoise import api
    from emdenoise.io import micrographs

    paths = sorted(p for p in folder.rglob("*") if p.is_file() and micrographs.format_of(p))
    if not paths:
        raise InputError.at(folder, None, "expected micrograph files (any format denoise reads), found none")
    out, sizes = {}, {}
    for path in paths:
        micrograph = api.load(path)
        image = np.asarray(micrograph.image, np.float32)
        out[str(path.relative_to(folder))] = image.reshape(-1, *image.shape[-2:])
        sizes[str(path.relative_to(folder))] = micrograph.pixel_size
    return out, sizes


def with_starting_points(models: Mapping[str, str]) -> dict[str, str]:
    """``models`` (label -> model file, folder or zoo:NAME) plus, for each one fine-tuned from another
    (``train.init_from`` in its file), that starting model as is, labelled ``<init_from> as is``."""
    from emdenoise.inference.methods import find_model
    from emdenoise.io import modelfile

    out = dict(models)
    for spec in models.values():
        _, path = find_model(spec, None, "--model")
        start = modelfile.load_model(path)[1].get("train_config", {}).get("init_from", "none")
        if start != "none" and start not in out.values():
            out[f"{start} as is"] = start
    return out


def affine_psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (dB) of ``a * estimate + b`` against ``truth``, ``a, b`` the least-squares fit over the frame, the
    peak the truth's range (max - min): a score blind to the estimate's scale and offset (the units of a
    self-supervised model's output, a filter's brightness), not to its structure."""
    gain, offset = fit_gain_offset(estimate, truth)
    t = np.asarray(truth, np.float64)
    mse = float(np.mean((gain * np.asarray(estimate, np.float64) + offset - t) ** 2))
    peak = float(t.max() - t.min())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _count_scale(frame: np.ndarray) -> float | None:
    """1 for whole non-negative numbers (counts), else None (the beam-aware filters estimate it)."""
    return 1.0 if float(frame.min()) >= 0 and bool(np.all(frame == np.rint(frame))) else None


def _scores(outputs: Frames, truth: Frames | None) -> list[float]:
    if truth is None:
        return []
    return [affine_psnr(o, t) for name in outputs for o, t in zip(outputs[name], truth[name])]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _filtered(baseline: classical.Baseline, value: float, frames: Frames) -> Frames:
    return {
        name: np.stack([baseline.apply(f, value, _count_scale(f)) for f in stack]) for name, stack in frames.items()
    }


def classical_row(name: str, frames: Frames, truth: Frames | None, sizes: PixelSizes) -> Row:
    """The filter ``name`` at the best value of its grid (with truth) or at its default (without)."""
    baseline = classical.get(name)
    start = time.perf_counter()
    if truth is None:
        value = float(baseline.default(Context(pixel_size=next(iter(sizes.values()), None))))
        return Row(name, f"{baseline.param}={value:g} (default)", None, [], 0.0)  # run by scores_without_truth
    best: tuple[float, float, list[float]] | None = None
    for value in GRIDS.get(name, baseline.grid):
        scores = _scores(_filtered(baseline, value, frames), truth)
        if best is None or np.mean(scores) > best[0]:
            best = (float(np.mean(scores)), value, scores)
    assert best is not None
    return Row(name, f"{baseline.param}={best[1]:g} (best on the truth)", best[0], best[2], time.perf_counter() - start)


def model_row(label: str, spec: str, frames: Frames, truth: Frames | None, sizes: PixelSizes) -> Row:
    """The model ``spec`` (a model file or ``zoo:NAME``) applied as ``emdenoise denoise`` would."""
    from emdenoise import api

    start = time.perf_counter()
    outputs = {name: api.denoise(stack, spec, sizes.get(name), max_deviation=0).image for name, stack in frames.items()}
    seconds = time.perf_counter() - start
    scores = _scores(outputs, truth)
    return Row(label, spec, _mean(scores), scores, seconds)


def scores_without_truth(frames: Frames, methods: Sequence[str], sizes: PixelSizes) -> dict[str, dict[str, float]]:
    """Each method's scores without clean truth (:func:`emdenoise.score`: a binomial split of each frame's counts,
    or a movie's frame halves), averaged over the files: ``uPSNR_dB`` (pooled per file) and ``uMSE``; files that
    cannot be scored (values that are not counts, too few) are left out, named in a warning."""
    from emdenoise import api
    from emdenoise.log import get_logger

    found: dict[str, dict[str, list[float]]] = {}
    for name, stack in frames.items():
        try:
            result = api.score(stack, list(methods), pixel_size=sizes.get(name))
        except InputError as exc:
            get_logger().warning("%s: no scores without truth (%s)", name, exc)
            continue
        for score in result.scores:
            entry = found.setdefault(score.method, {"uPSNR_dB": [], "uMSE": []})
            if score.upsnr_pooled is not None:
                entry["uPSNR_dB"].append(score.upsnr_pooled)
            entry["uMSE"].append(score.umse)
    return {m: {k: round(float(np.mean(v)), 4) for k, v in e.items() if v} for m, e in found.items()}


def compare(
    frames: Frames,
    models: Mapping[str, str],
    truth: Frames | None = None,
    baselines: Sequence[str] = BASELINES,
    sizes: PixelSizes | None = None,
) -> list[Row]:
    """Every model of ``models`` (label -> model file or zoo:NAME) and every filter of ``baselines`` on
    ``frames``, best first when there is truth."""
    if truth is not None:
        for name, stack in frames.items():
            if name not in truth or truth[name].shape != stack.shape:
                got = "none" if name not in truth else f"shape {truth[name].shape}"
                raise InputError.at(name, "truth", f"expected truth frames of shape {stack.shape}, got {got}")
    sizes = sizes or {}
    rows = [model_row(label, spec, frames, truth, sizes) for label, spec in models.items()]
    rows += [classical_row(name, frames, truth, sizes) for name in baselines]
    if truth is None:
        specs = [*models.values(), *baselines]
        found = scores_without_truth(frames, specs, sizes)
        keys = [*models.values(), *baselines]
        rows = [dataclasses.replace(row, without_truth=found.get(key, {})) for row, key in zip(rows, keys)]
    if truth is not None:
        rows.sort(key=lambda row: -(row.psnr or -math.inf))
    return rows


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    extra = sorted({key for row in rows for key in row.without_truth})
    head = "| method | setting | PSNR after affine fit (dB) |" + "".join(f" {k} |" for k in extra)
    lines = [head, "|---|---|---:|" + "---:|" * len(extra)]
    for row in rows:
        psnr = "no truth" if row.psnr is None else f"{row.psnr:.2f}"
        lines.append(
            f"| {row.method} | {row.setting} | {psnr} |" + "".join(f" {row.without_truth.get(k, '')} |" for k in extra)
        )
    if not any(row.psnr is not None or row.without_truth for row in rows):
        lines.append("\nNo clean truth, and the frames could not be scored without it: compare by eye.")
    return "\n".join(lines)


def _labelled(spec: str) -> tuple[str, str]:
    """``LABEL=SPEC`` -> (label, spec); a bare SPEC is its own label."""
    label, _, model = spec.rpartition("=")
    return (label or model, model)


def main(argv: Sequence[str] | None = None) -> int:
    from emdenoise.outputs import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("input", type=Path)
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=SPEC")
    ap.add_argument("--truth", type=Path)
    ap.add_argument("--baselines", default=",".join(BASELINES))
    ap.add_argument("--pixel-size", type=float, default=None, help="A/px (default: each file's calibration)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    def work() -> str:
        models = with_starting_points(dict(_labelled(spec) for spec in args.model))
        frames, sizes = read_frames(args.input)
        truth = read_frames(args.truth)[0] if args.truth else None
        if args.pixel_size:
            sizes = dict.fromkeys(frames, args.pixel_size)
        rows = compare(frames, models, truth, [b for b in args.baselines.split(",") if b], sizes)
        if args.out:
            write_json_atomic(args.out, {"truth": bool(truth), "rows": [asdict(row) for row in rows]})
        return table(rows)

    return script(work)


if __name__ == "__main__":
    raise SystemExit(main())
