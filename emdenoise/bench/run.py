"""``emdenoise bench``: training and inference speed of the engine ``emdenoise train`` and ``emdenoise denoise``
run, against the original benchmark's loop, in the same run.

    python -m emdenoise bench --models=sciml_ae --device=auto --output=bench.json

For each model and frame size it measures, after warm-up, training images/s and inference images/s (the
fastest of ``--repeats`` timed rounds: on a shared machine the slower rounds measure the neighbours), and
the peak memory, for:

- **plain**: the loop as the original em_denoise benchmark wrote it: a torch DataLoader with 2 worker
  processes reading one image per ``__getitem__`` from an (N, S, S, 1) float32 HDF5 file (a temporary file
  of random images, contiguous layout as h5py writes by default), float32, NCHW, eager, blocking copies to
  the GPU, ``loss.item()`` after every step;
- **engine**: what the tasks run. Training: :class:`emdenoise.training.loop.TrainStep` driven by
  :func:`~emdenoise.training.loop.train_epoch` over in-memory pairs (the train task's defaults: adam,
  cosine schedule, mse; whole images, shuffled), one timed round being one epoch of ``--steps`` batches, its
  images/s the figure the train task logs. Inference: :class:`emdenoise.inference.denoiser.Denoiser` through
  :class:`emdenoise.inference.tiling.Tiler` with the denoise task's defaults (whole frames where they fit
  ``denoise.memory_mb``, tiles of 256 overlapping by 32 beyond), frames in and denoised frames out in host memory.

The rows of ``ablation`` (at the first size) are settings a user can choose: ``fp32``; the precision
``--precision`` resolves to (``auto``: bf16 where the hardware computes it natively, see
:mod:`emdenoise.runtime.device`); ``compile`` (``train.compile: true``, with ``--compile``; the inference
path runs eager, so it is skipped there). The engine figure is the last row measured: what ``emdenoise
train`` with ``precision: <--precision>`` and ``compile: <--compile>`` runs (a compile that fails falls back to
eager, as in training, and the row says why).

Batch size: ``--batch-size`` images per step at 256 x 256 (default 16 on a CPU, 256 on a GPU), scaled down
by the pixel count for larger frames (1024 x 1024: 1/16 of it, at least 1); the tiler batches
``--batch-size`` tiles. Training is measured at ``--train-sizes`` (default: the smallest of ``--sizes``),
inference at every size of ``--sizes``.

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` over the measurement; on a CPU the peak resident
memory of this process above its level when the measurement started, sampled every few milliseconds (the
plain loop's worker processes are not included).

The JSON written to ``--output``::

    {"format": "emdenoise-bench/2", "emdenoise_version", "torch_version", "device", "device_name",
     "cpu_count", "torch_threads", "platform", "memory_method", "settings": {...},
     "models": {NAME: {"parameters", "train_speedup_vs_plain", "infer_speedup_vs_plain",
                       "train_images_per_s": {SIZE: x}, "plain_train_images_per_s": {SIZE: x},
                       "infer_images_per_s": {SIZE: x}, "plain_infer_images_per_s": {SIZE: x},
                       "train_speedup_vs_plain_by_size": {...}, "infer_speedup_vs_plain_by_size": {...},
                       "peak_memory_bytes": {"train": {SIZE: x}, "infer": {...}},
                       "plain_peak_memory_bytes": {"train": {...}, "infer": {...}},
                       "batch_size": {"train": {SIZE: b}, "infer": {...}}, "fallbacks": [...],
                       "fast_config": {"train": {"precision", "compile"}, "infer": {...}},
                       "ablation": [{"step", "adds", "train_images_per_s", "infer_images_per_s", "train_gain",
                                     "infer_gain", "train_failed"} or {"step", "adds", "skipped"}]}}}

``*_speedup_vs_plain`` (no suffix) are at the first (reference) size. Sizes are JSON keys as strings.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from emdenoise import __version__, models
from emdenoise.bench import inference, training
from emdenoise.bench.measure import PLAIN_WORKERS, release
from emdenoise.bench.report import table
from emdenoise.bench.settings import REFERENCE_SIDE, Config, Measure, Settings, ladder, settings_from_args
from emdenoise.bench.training import LR
from emdenoise.errors import EXIT_OK, write_stdout
from emdenoise.outputs import check_output, write_json_atomic
from emdenoise.runtime.device import cpu_name

FORMAT = "emdenoise-bench/2"
PLAIN_FILE_BYTES = 256 << 20  # cap on the temporary HDF5 file; items beyond it wrap around (page-cached)


def _write_images(path: Path, images: np.ndarray) -> None:
    """(N, S, S) -> dataset "images" (N, S, S, 1) float32, channels last, as the original files."""
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=images[..., None])


def _pairs(side: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 frames: the content does not change the speed."""
    rng = np.random.default_rng(seed)
    clean = rng.random((n, side, side), dtype=np.float32)
    noisy = clean + rng.normal(0.0, 0.1, clean.shape).astype(np.float32)
    return noisy, clean


def _rows(side: int, batch: int, needed: int) -> int:
    """Frames to generate: enough for every step, capped by PLAIN_FILE_BYTES, a multiple of the batch."""
    cap = max(batch, PLAIN_FILE_BYTES // (side * side * 4))
    return max(batch, min(needed, cap) // batch * batch)


def _measure_rows(
    rows: list[dict[str, Any]],
    kind: str,
    plain: Measure,
    run: Callable[[Config], Measure],
    log: logging.Logger,
    label: str,
) -> tuple[Measure, Config]:
    """Measure ``kind`` for every row of the ablation that applies; the last one measured is the engine's
    figure (a compile that fell back is recorded and counts as the eager row before it)."""
    rows[0][f"{kind}_images_per_s"] = plain.images_per_s
    engine: tuple[Measure, Config] | None = None
    for row in rows[1:]:
        cfg = row["config"]
        if cfg is None or (cfg.compile and kind == "infer"):
            continue
        log.info("%s: %s", label, row["step"])
        measure = run(cfg)
        release(torch.device("cpu"))
        if cfg.compile and measure.compile_error:
            row[f"{kind}_failed"] = measure.compile_error
            continue
        row[f"{kind}_images_per_s"] = measure.images_per_s
        engine = measure, cfg
    assert engine is not None  # fp32 is always measured
    return engine


def _finish_ablation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON rows: gains relative to the previous measured row, configs left out."""
    out: list[dict[str, Any]] = []
    previous: dict[str, float] = {}
    for row in rows:
        row = {k: v for k, v in row.items() if k != "config"}
        if row["step"] == "compile" and "skipped" not in row:
            row["infer_skipped"] = "the inference path (Denoiser) runs eager"
        for kind in ("train", "infer"):
            value = row.get(f"{kind}_images_per_s")
            if value is None:
                continue
            if kind in previous:
                row[f"{kind}_gain"] = value / previous[kind]
            previous[kind] = value
        out.append(row)
    return out


@dataclass(frozen=True)
class _Frames:
    """Random frames of one size: in memory (N, S, S) and in the plain loop's HDF5 files."""

    side: int
    batch: int
    noisy: np.ndarray
    clean: np.ndarray
    paths: dict[str, Path]


def _frames(side: int, settings: Settings, tmp: Path) -> _Frames:
    batch = settings.batch_for(side)
    total = settings.warmup + settings.steps * settings.repeats
    noisy, clean = _pairs(side, _rows(side, batch, batch * total), seed=side)
    paths = {"noisy": tmp / f"graphene_img_noise_{side}.h5", "clean": tmp / f"graphene_img_clean_{side}.h5"}
    _write_images(paths["noisy"], noisy)
    _write_images(paths["clean"], clean)
    return _Frames(side, batch, noisy, clean, paths)


def _plain_and_engine(
    name: str, kind: str, frames: _Frames, settings: Settings, log: logging.Logger
) -> tuple[Measure, Callable[[Config], Measure]]:
    """The plain loop's measure of ``kind`` (train or infer) on ``frames``, and the engine's, to run per config."""
    device, batch = settings.device, frames.batch
    if kind == "train":
        plain = training.plain(name, frames.paths["noisy"], frames.paths["clean"], device, batch, settings)
        noisy, clean = torch.from_numpy(frames.noisy)[:, None], torch.from_numpy(frames.clean)[:, None]
        return plain, functools.partial(
            training.engine, name, noisy, clean, device, batch=batch, settings=settings, log=log
        )
    plain = inference.plain(name, frames.paths["noisy"], device, batch, settings)
    per_round = min(len(frames.noisy), batch * settings.steps)
    return plain, functools.partial(
        inference.engine, name, frames.noisy, device, per_round=per_round, settings=settings
    )


def _empty_result(name: str) -> dict[str, Any]:
    result: dict[str, Any] = {"parameters": models.count_parameters(models.build(name))}
    for field in (
        "train_images_per_s",
        "plain_train_images_per_s",
        "infer_images_per_s",
        "plain_infer_images_per_s",
        "train_speedup_vs_plain_by_size",
        "infer_speedup_vs_plain_by_size",
    ):
        result[field] = {}
    for field in ("peak_memory_bytes", "plain_peak_memory_bytes", "batch_size"):
        result[field] = {"train": {}, "infer": {}}
    result["fallbacks"] = []
    return result


def _ablation_rows(settings: Settings) -> list[dict[str, Any]]:
    """The ablation's rows, plain first, each with its config (None: not measured), to be filled in."""
    plain = {
        "step": "plain",
        "adds": f"the original loop: one HDF5 read per image, DataLoader with {PLAIN_WORKERS} workers, float32, "
        "NCHW, eager",
        "config": None,
    }
    return [plain] + [
        {"step": step, "adds": adds, "config": cfg, **({"skipped": why} if why else {})}
        for step, adds, cfg, why in ladder(settings)
    ]


def _record(result: dict[str, Any], kind: str, frames: _Frames, plain: Measure, engine: Measure) -> None:
    """Put one size's figures of ``kind`` into ``result``."""
    key = str(frames.side)
    if engine.compile_error:
        result["fallbacks"].append(f"{kind} {key}: {engine.compile_error}")
    result[f"{kind}_images_per_s"][key] = engine.images_per_s
    result[f"plain_{kind}_images_per_s"][key] = plain.images_per_s
    result[f"{kind}_speedup_vs_plain_by_size"][key] = engine.images_per_s / plain.images_per_s
    result["peak_memory_bytes"][kind][key] = engine.peak_memory_bytes
    result["plain_peak_memory_bytes"][kind][key] = plain.peak_memory_bytes
    result["batch_size"][kind][key] = frames.batch


def bench_model(name: str, settings: Settings, tmp: Path, log: logging.Logger) -> dict[str, Any]:
    """All measurements of one model: plain and engine per size, the ablation at the reference sizes."""
    result = _empty_result(name)
    rows = _ablation_rows(settings)
    reference = {"train": settings.train_sizes[0], "infer": settings.sizes[0]}
    chosen: dict[str, Config] = {}
    # the reference sizes first: their ablation decides the configuration used at the other sizes
    sides = sorted(set(settings.sizes) | set(settings.train_sizes), key=lambda s: (s not in reference.values(), s))
    for side in sides:
        frames = _frames(side, settings, tmp)
        for kind, sizes in (("train", settings.train_sizes), ("infer", settings.sizes)):
            if side not in sizes:
                continue
            label = f"{name} {kind} {side}x{side}"
            log.info("%s: plain loop (batch %d)", label, frames.batch)
            plain, run = _plain_and_engine(name, kind, frames, settings, log)
            release(settings.device)
            if side == reference[kind]:
                engine, chosen[kind] = _measure_rows(rows, kind, plain, run, log, label)
            else:
                log.info("%s: engine", label)
                engine = run(chosen[kind])
                release(settings.device)
            _record(result, kind, frames, plain, engine)
        for path in frames.paths.values():
            path.unlink()
    for kind in ("train", "infer"):
        result[f"{kind}_speedup_vs_plain"] = result[f"{kind}_speedup_vs_plain_by_size"][str(reference[kind])]
    result["fast_config"] = {kind: asdict(cfg) for kind, cfg in chosen.items()}
    result["ablation"] = _finish_ablation(rows)
    return result


# ---------------------------------------------------------------------------------------------- the command


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def run_bench(settings: Settings, log: logging.Logger) -> dict[str, Any]:
    """Every model's measurements plus the machine and settings, as the JSON document."""
    if settings.device.type == "cuda":
        torch.cuda.set_device(settings.device)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "emdenoise_version": __version__,
        "torch_version": torch.__version__,
        "device": str(settings.device),
        "device_name": device_name(settings.device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory_method": (
            "torch.cuda.max_memory_allocated"
            if settings.device.type == "cuda"
            else "peak resident memory of the main process above its level at the start of the "
            "measurement (loader workers not included)"
        ),
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k != "device"},
            "plain_workers": PLAIN_WORKERS,
            "reference_side": REFERENCE_SIDE,
            "plain_learning_rate": LR,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="emdenoise-bench-") as tmp:
        for name in settings.models:
            doc["models"][name] = bench_model(name, settings, Path(tmp), log)
    return doc


def command(args: argparse.Namespace, log: logging.Logger) -> int:
    """``emdenoise bench``: measure, print the table, write the JSON; exit code 0."""
    os.environ.setdefault("EMDENOISE_PROGRESS", "0")  # the train step's progress bars: not in a timing table
    settings = settings_from_args(args)
    if args.output:
        check_output(args.output, "--output", "file")  # before minutes of measuring
    log.info(
        "emdenoise %s: bench %s on %s (%s), batch %d at %dx%d, best of %d x %d steps after %d warm-up",
        __version__,
        ",".join(settings.models),
        settings.device,
        settings.precision,
        settings.batch_size,
        REFERENCE_SIDE,
        REFERENCE_SIDE,
        settings.repeats,
        settings.steps,
        settings.warmup,
    )
    doc = run_bench(settings, log)
    if args.output:
        write_json_atomic(args.output, doc)
    write_stdout(table(doc))
    if args.output:
        log.info("results: %s", args.output)
    return EXIT_OK
