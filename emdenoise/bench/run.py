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
import gc
import logging
import math
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from emdenoise import __version__, models
from emdenoise.config import params
from emdenoise.data.splits import Split
from emdenoise.errors import EXIT_OK, InputError, reported
from emdenoise.inference.denoiser import DEFAULT_MEMORY_MB, Denoiser
from emdenoise.inference.tiling import Tiler
from emdenoise.log import setup as setup_logging
from emdenoise.outputs import check_output, write_json_atomic
from emdenoise.runtime import device as runtime
from emdenoise.runtime.context import Runtime
from emdenoise.training.loop import TrainData, TrainStep, resident, train_epoch

FORMAT = "emdenoise-bench/2"
REFERENCE_SIDE = 256  # --batch-size is per 256 x 256 frames; larger frames get proportionally fewer
PLAIN_WORKERS = 2  # as the original benchmark's DataLoader
PLAIN_FILE_BYTES = 256 << 20  # cap on the temporary HDF5 file; items beyond it wrap around (page-cached)
LR = 1e-3  # the plain loop's; the engine uses the train task's defaults
RSS_SAMPLE_S = 0.005
_IDENTITY = {"noisy": {"mean": 0.0, "std": 1.0}, "clean": {"mean": 0.0, "std": 1.0}}


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    precision_requested: str
    batch_size: int  # at REFERENCE_SIDE
    steps: int
    warmup: int
    repeats: int
    sizes: tuple[int, ...]  # inference
    train_sizes: tuple[int, ...]
    compile: bool
    quick: bool
    tile_size: int
    tile_overlap: int

    def batch_for(self, side: int) -> int:
        if side <= REFERENCE_SIDE:
            return self.batch_size
        return max(1, self.batch_size * REFERENCE_SIDE**2 // side**2)


@dataclass(frozen=True)
class Config:
    """One engine setting measured: what ``train.precision`` and ``train.compile`` would be."""

    precision: str
    compile: bool = False


@dataclass
class Measure:
    images_per_s: float
    peak_memory_bytes: int
    compile_error: str | None = None


def _int_list(text: str, option: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise InputError.at("command line", option, f"expected comma-separated integers >= {minimum}, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emdenoise bench",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="sciml_ae", help="comma-separated model names, or all (default sciml_ae)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step at 256x256, scaled down by area for larger frames; tiles per "
        "inference batch (default 16 on a CPU, 256 on a GPU; 2 with --quick)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 5 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 10 GPU)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds of --steps steps; the fastest counts (default 3; 1 with --quick)",
    )
    p.add_argument("--sizes", default="256,1024", help="inference frame sides (default 256,1024)")
    p.add_argument("--train-sizes", default=None, help="training frame sides (default: the smallest of --sizes)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto",) + runtime.PRECISIONS,
        help="the engine's precision (auto: bf16 where it is native, see emdenoise.runtime.device)",
    )
    p.add_argument("--compile", action="store_true", help="also measure train.compile: true (falls back to eager)")
    p.add_argument("--quick", action="store_true", help="tiny run (batch 2, 2 steps, 1 warm-up) to check it works")
    p.add_argument("--output", default=None, metavar="FILE.json", help="write the results here (atomically)")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    known = models.names()
    names = known if args.models.strip() == "all" else tuple(n.strip() for n in args.models.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise InputError.at(
            "command line", "--models", f"expected all or names from {', '.join(known)}, got {args.models!r}"
        )
    device = runtime.resolve_device(args.device, "--device", "command line")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    precision = runtime.resolve_precision(args.precision, device, "--precision", "command line")
    gpu = device.type == "cuda"
    defaults = (2, 2, 1, 1) if args.quick else ((256, 50, 10, 3) if gpu else (16, 5, 2, 3))
    batch, steps, warmup, repeats = (
        v if v is not None else d for v, d in zip((args.batch_size, args.steps, args.warmup, args.repeats), defaults)
    )
    for option, value, minimum in (
        ("--batch-size", batch, 1),
        ("--steps", steps, 1),
        ("--warmup", warmup, 0),
        ("--repeats", repeats, 1),
    ):
        if value < minimum:
            raise InputError.at("command line", option, f"expected an integer >= {minimum}, got {value}")
    sizes = _int_list(args.sizes, "--sizes", 16)
    train_sizes = _int_list(args.train_sizes, "--train-sizes", 16) if args.train_sizes else (min(sizes),)
    denoise = params.defaults().denoise
    return Settings(
        tuple(names),
        device,
        precision,
        args.precision,
        batch,
        steps,
        warmup,
        repeats,
        sizes,
        train_sizes,
        args.compile,
        args.quick,
        denoise.tile_size,
        denoise.tile_overlap,
    )


def ladder(settings: Settings) -> list[tuple[str, str, Config | None, str]]:
    """The ablation after plain: (step, what it is, config or None, why skipped)."""
    rows: list[tuple[str, str, Config | None, str]] = [
        ("fp32", "the engine, fp32, eager (train.precision: fp32)", Config("fp32"), "")
    ]
    if settings.precision != "fp32":
        rows.append(
            (
                settings.precision,
                f"{settings.precision} autocast (train.precision: {settings.precision_requested})",
                Config(settings.precision),
                "",
            )
        )
    else:
        rows.append(
            (
                "bf16",
                "bf16 autocast",
                None,
                "precision fp32 requested"
                if settings.precision_requested == "fp32"
                else "precision auto chose fp32: this CPU has no native bfloat16 (emulated bf16 is much slower)",
            )
        )
    if settings.compile:
        rows.append(("compile", "torch.compile (train.compile: true)", Config(settings.precision, True), ""))
    else:
        rows.append(("compile", "torch.compile (train.compile: true)", None, "not requested (--compile)"))
    return rows


# ---------------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory over a ``with`` block: CUDA max_memory_allocated on a GPU; on a CPU the resident memory
    of this process above its level at the start, sampled in a thread (``/proc/self/statm``; elsewhere the
    growth of ru_maxrss)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._base = self._max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            import resource  # not on Windows; ru_maxrss is in KiB on Linux

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self._max = max(self._max, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = self._max = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(0, max(self._max, self._rss()) - self._base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _best_of(
    device: torch.device, warm_up: Callable[[], object], round_: Callable[[int], float], repeats: int
) -> Measure:
    """``warm_up()``, then ``repeats`` timed rounds, each returning its images/s; the fastest counts (on a
    shared machine the others measure the neighbours as much as the code)."""
    with PeakMemory(device) as mem:
        warm_up()
        _sync(device)
        best = max(round_(r) for r in range(repeats))
    return Measure(best, mem.peak)


def _timed_steps(device: torch.device, step: Callable[[], object], steps: int, images: int) -> float:
    """Images/s of ``steps`` calls of ``step``, each on ``images`` images."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * images / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- plain loop


class _PlainImages(torch.utils.data.Dataset):
    """The original's data path: one HDF5 read per item, returned as the (S, S, 1) float32 array h5py gives
    (the DataLoader collates them into (B, S, S, 1) tensors); ``length`` items wrap around the file's rows.
    Each worker opens the files itself on first use."""

    def __init__(self, paths: list[Path], length: int):
        self.paths, self.length = paths, length
        self._files: list | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if self._files is None:
            self._files = [h5py.File(p, "r")["images"] for p in self.paths]
        items = [ds[i % len(ds)] for ds in self._files]
        return items[0] if len(items) == 1 else tuple(items)


def _nchw(batch: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 1) -> (B, 1, S, S) with NCHW strides, as the original moves the channel axis after collation
    (with the axes in the right order). One channel: the same memory, so a reshape. (A permute would give
    strides that PyTorch reads as channels_last and would quietly run the plain loop channels_last.)"""
    return batch.reshape(batch.shape[0], 1, batch.shape[1], batch.shape[2])


def _plain_loader(paths: list[Path], batch: int, steps: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _PlainImages(paths, batch * steps), batch_size=batch, shuffle=True, num_workers=PLAIN_WORKERS, drop_last=True
    )


def _plain_model(name: str, device: torch.device, train: bool) -> torch.nn.Module:
    """A fresh seeded model, as the original builds it (cuDNN's autotuner left off)."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = False
    return models.build(name).to(device).train(train)


def _time_plain(
    device: torch.device, step: Callable[[], None], batch: int, settings: Settings, loader: list
) -> Measure:
    """Best of ``settings.repeats`` rounds of the plain loop's ``step`` (after a warm-up), then the loader's
    worker processes end now, not whenever the frame is collected."""
    try:
        return _best_of(
            device,
            lambda: [_timed_steps(device, step, settings.warmup, batch)],
            lambda _: _timed_steps(device, step, settings.steps, batch),
            settings.repeats,
        )
    finally:
        loader.clear()


def plain_train(name: str, noisy: Path, clean: Path, device: torch.device, batch: int, settings: Settings) -> Measure:
    model = _plain_model(name, device, True)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = [iter(_plain_loader([noisy, clean], batch, settings.warmup + settings.steps * settings.repeats))]

    def step() -> None:
        x, y = next(loader[0])
        x, y = _nchw(x).to(device), _nchw(y).to(device)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        loss.item()  # the original logs the loss of every batch

    return _time_plain(device, step, batch, settings, loader)


def plain_infer(name: str, noisy: Path, device: torch.device, batch: int, settings: Settings) -> Measure:
    model = _plain_model(name, device, False)
    loader = [iter(_plain_loader([noisy], batch, settings.warmup + settings.steps * settings.repeats))]
    outputs: list[torch.Tensor] = []

    def step() -> None:
        with torch.no_grad():
            outputs.append(model(_nchw(next(loader[0])).to(device)).cpu())
        if len(outputs) > 4:
            outputs.pop(0)

    return _time_plain(device, step, batch, settings, loader)


# ---------------------------------------------------------------------------------------------- the engine


def engine_train(
    name: str,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    device: torch.device,
    cfg: Config,
    batch: int,
    settings: Settings,
    log: logging.Logger,
) -> Measure:
    """The train task's step (:class:`TrainStep` through :func:`train_epoch`) on the in-memory pairs: one
    round is one epoch of ``settings.steps`` batches; its images/s are what the train task logs."""
    train = params.defaults().train.replace(batch_size=batch, precision=cfg.precision, compile=cfg.compile)
    empty = Split("val", np.empty((0,) + tuple(noisy.shape[-2:]), np.float32), np.empty((0,), np.float32))
    data = resident(TrainData(noisy[: batch * settings.steps], clean[: batch * settings.steps], empty, 0), device)
    runtime.seed_everything(train.seed)
    torch.backends.cudnn.benchmark = True
    step = TrainStep(
        models.build(name), train, settings.steps * settings.repeats, Runtime(device, cfg.precision, log=log)
    )
    measure = _best_of(
        device,
        lambda: settings.warmup and train_epoch(step, data.first(batch * settings.warmup), train, 0, "warm-up"),
        lambda r: train_epoch(step, data, train, r + 1, f"{name} round {r + 1}")["images_per_s"],
        settings.repeats,
    )
    measure.compile_error = step.compile_error
    return measure


def engine_infer(
    name: str, frames: np.ndarray, device: torch.device, cfg: Config, per_round: int, settings: Settings
) -> Measure:
    """The denoise task's path: :class:`Denoiser` through the :class:`Tiler` (its default tiles,
    ``settings.batch_size`` tiles a model call), host frames in, host frames out; ``frames`` (N, S, S)
    float32, ``per_round`` of them a timed round."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    denoiser = Denoiser(models.build(name), {"model": name, "normalisation": _IDENTITY}, device, cfg.precision)
    tiler = Tiler(
        denoiser.denoise,
        settings.tile_size,
        settings.tile_overlap,
        settings.batch_size,
        pin_memory=device.type == "cuda",
        max_pixels=denoiser.max_pixels(DEFAULT_MEMORY_MB * 2**20),  # as the denoise task: whole frames that fit
    )

    def stream(n: int) -> float:
        t0 = time.perf_counter()
        done = sum(1 for _ in tiler.stream(frames[:n]))
        return done / (time.perf_counter() - t0)

    return _best_of(
        device,
        lambda: settings.warmup and stream(min(per_round, settings.warmup)),
        lambda _: stream(per_round),
        settings.repeats,
    )


# ---------------------------------------------------------------------------------------------- one model


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
        _release(torch.device("cpu"))
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


def bench_model(name: str, settings: Settings, tmp: Path, log: logging.Logger) -> dict[str, Any]:
    """All measurements of one model: plain and engine per size, the ablation at the reference sizes."""
    device = settings.device
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
    rows: list[dict[str, Any]] = [
        {
            "step": "plain",
            "adds": "the original loop: one HDF5 read per image, "
            f"DataLoader with {PLAIN_WORKERS} workers, float32, NCHW, eager",
            "config": None,
        }
    ]
    rows += [
        {"step": step, "adds": adds, "config": cfg, **({"skipped": why} if why else {})}
        for step, adds, cfg, why in ladder(settings)
    ]
    reference = {"train": settings.train_sizes[0], "infer": settings.sizes[0]}
    chosen: dict[str, Config] = {}
    total = settings.warmup + settings.steps * settings.repeats
    # the reference sizes first: their ablation decides the configuration used at the other sizes
    for side in sorted(
        set(settings.sizes) | set(settings.train_sizes), key=lambda side: (side not in reference.values(), side)
    ):
        batch = settings.batch_for(side)
        noisy_np, clean_np = _pairs(side, _rows(side, batch, batch * total), seed=side)
        paths = {"noisy": tmp / f"graphene_img_noise_{side}.h5", "clean": tmp / f"graphene_img_clean_{side}.h5"}
        _write_images(paths["noisy"], noisy_np)
        _write_images(paths["clean"], clean_np)
        noisy, clean = torch.from_numpy(noisy_np)[:, None], torch.from_numpy(clean_np)[:, None]
        for kind, sizes in (("train", settings.train_sizes), ("infer", settings.sizes)):
            if side not in sizes:
                continue
            label = f"{name} {kind} {side}x{side}"
            log.info("%s: plain loop (batch %d)", label, batch)
            run: Callable[[Config], Measure]
            if kind == "train":
                plain = plain_train(name, paths["noisy"], paths["clean"], device, batch, settings)
                run = functools.partial(
                    engine_train, name, noisy, clean, device, batch=batch, settings=settings, log=log
                )
            else:
                plain = plain_infer(name, paths["noisy"], device, batch, settings)
                per_round = min(len(noisy_np), batch * settings.steps)
                run = functools.partial(engine_infer, name, noisy_np, device, per_round=per_round, settings=settings)
            _release(device)
            if side == reference[kind]:
                engine, chosen[kind] = _measure_rows(rows, kind, plain, run, log, label)
            else:
                log.info("%s: engine", label)
                engine = run(chosen[kind])
                _release(device)
            if engine.compile_error:
                result["fallbacks"].append(f"{kind} {side}: {engine.compile_error}")
            key = str(side)
            result[f"{kind}_images_per_s"][key] = engine.images_per_s
            result[f"plain_{kind}_images_per_s"][key] = plain.images_per_s
            result[f"{kind}_speedup_vs_plain_by_size"][key] = engine.images_per_s / plain.images_per_s
            result["peak_memory_bytes"][kind][key] = engine.peak_memory_bytes
            result["plain_peak_memory_bytes"][kind][key] = plain.peak_memory_bytes
            result["batch_size"][kind][key] = batch
        for path in paths.values():
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
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def main(argv: list[str] | None = None) -> int:
    """``emdenoise bench ...``: measure, print the table, write the JSON; exit codes as the tasks'."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("EMDENOISE_PROGRESS", "0")  # the train step's progress bars: not in a timing table
    log = setup_logging("bench", None)
    return reported(log, lambda: _bench(args, log))


def _bench(args: argparse.Namespace, log: logging.Logger) -> int:
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
    print(table(doc))
    if args.output:
        log.info("results: %s", args.output)
    return EXIT_OK
