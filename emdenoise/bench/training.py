"""Training speed: the original benchmark's loop (plain) and the train task's step (engine)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emdenoise import models
from emdenoise.bench.measure import best_of, nchw, plain_loader, plain_model, time_plain
from emdenoise.bench.settings import Config, Measure, Settings
from emdenoise.config import params
from emdenoise.data.splits import Split
from emdenoise.runtime import device as runtime
from emdenoise.runtime.context import Runtime
from emdenoise.training.loop import TrainData, TrainStep, resident, train_epoch

LR = 1e-3  # the plain loop's; the engine uses the train task's defaults


def plain(name: str, noisy: Path, clean: Path, device: torch.device, batch: int, settings: Settings) -> Measure:
    model = plain_model(name, device, True)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loader = [iter(plain_loader([noisy, clean], batch, settings.warmup + settings.steps * settings.repeats))]

    def step() -> None:
        x, y = next(loader[0])
        x, y = nchw(x).to(device), nchw(y).to(device)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        loss.item()  # the original logs the loss of every batch

    return time_plain(device, step, batch, settings, loader)


def engine(
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
    measure = best_of(
        device,
        lambda: settings.warmup and train_epoch(step, data.first(batch * settings.warmup), train, 0, "warm-up"),
        lambda r: train_epoch(step, data, train, r + 1, f"{name} round {r + 1}")["images_per_s"],
        settings.repeats,
    )
    measure.compile_error = step.compile_error
    return measure
