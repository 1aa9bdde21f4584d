"""Inference speed: the original benchmark's loop (plain) and the denoise task's tiled path (engine)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from emdenoise import models
from emdenoise.bench.measure import best_of, nchw, plain_loader, plain_model, time_plain
from emdenoise.bench.settings import Config, Measure, Settings
from emdenoise.inference.denoiser import DEFAULT_MEMORY_MB, Denoiser
from emdenoise.inference.tiling import Tiler

_IDENTITY = {"noisy": {"mean": 0.0, "std": 1.0}, "clean": {"mean": 0.0, "std": 1.0}}


def plain(name: str, noisy: Path, device: torch.device, batch: int, settings: Settings) -> Measure:
    model = plain_model(name, device, False)
    loader = [iter(plain_loader([noisy], batch, settings.warmup + settings.steps * settings.repeats))]
    outputs: list[torch.Tensor] = []

    def step() -> None:
        with torch.no_grad():
            outputs.append(model(nchw(next(loader[0])).to(device)).cpu())
        if len(outputs) > 4:
            outputs.pop(0)

    return time_plain(device, step, batch, settings, loader)


def engine(
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

    return best_of(
        device,
        lambda: settings.warmup and stream(min(per_round, settings.warmup)),
        lambda _: stream(per_round),
        settings.repeats,
    )
