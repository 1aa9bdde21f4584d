"""One optimiser step (:class:`TrainStep`, the object ``emdenoise train``, the study and ``emdenoise bench`` all
run), one epoch (:func:`train_epoch`) and the per-epoch validation (PSNR/SSIM on clean val images, the
self-supervised val loss, the Poisson-deviance check on noisy-only val images).

The step (the fast path is the training path): the model runs channels_last under the resolved precision's
autocast, the loss stays on the device (no synchronisation per step), and ``train.compile: true`` runs the
model under ``torch.compile`` (a failure to compile is a one-line warning and the eager step, never a crash).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from emdenoise.config.params import TrainParams
from emdenoise.data.splits import Split
from emdenoise.errors import RuntimeFailure
from emdenoise.evaluation import consistency
from emdenoise.evaluation.metrics import (
    LATTICE_BAND_ANGSTROM,
    band_periods_px,
    band_psnr,
    psnr_per_image,
    ssim_per_image,
)
from emdenoise.inference.denoiser import Denoiser
from emdenoise.log import progress
from emdenoise.runtime import device as devices
from emdenoise.runtime import distributed
from emdenoise.runtime.context import Runtime
from emdenoise.runtime.distributed import World
from emdenoise.training import optim, supervision
from emdenoise.training.data import TrainData, batches, epoch_plan, gather

DEVIANCE_VAL_IMAGES = 32  # noisy-only val data: images checked by the Poisson-deviance consistency check per epoch


class TrainStep:
    """One optimiser step of one model: the object ``emdenoise train``, the study and ``emdenoise bench`` all
    run. ``model`` is the bare model (trained, checkpointed); the step runs it wrapped for several
    processes when ``world`` has them, and compiled when ``compile`` is set (``compile_error`` then says why
    it fell back to eager, if it did). ``averaged.model``: what is validated and saved, the exponential moving
    average of the weights with ``train.ema``, else ``model`` itself."""

    def __init__(self, model: nn.Module, train: TrainParams, total_steps: int, rt: Runtime):
        device = rt.device
        self.model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.rt = rt
        self.device, self.precision, self.world = device, rt.precision, rt.world
        self.optimizer = optim.make_optimizer(train.optimizer, self.model.parameters(), train.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, optim.lr_factor(train.lr_schedule, total_steps, train.warmup_steps)
        )
        self.averaged = optim.Averager(self.model, train.ema)
        self.scaler = torch.amp.GradScaler(device.type, enabled=rt.precision == "fp16")
        self.loss_fn = optim.make_loss(train.loss)
        self.loss_name = train.loss
        self.trainer = distributed.wrap(self.model, rt.world, device)  # model itself, or in DistributedDataParallel
        self.log = rt.log
        self.compile_error: str | None = None
        self._compiled: nn.Module | None = None
        if train.compile:
            try:
                self._compiled = torch.compile(self.trainer)  # type: ignore[assignment]
            except Exception as exc:  # noqa: BLE001 - compile failures come in many types
                self._fall_back(exc)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _fall_back(self, exc: BaseException) -> None:
        text = str(exc).strip()
        self.compile_error = type(exc).__name__ + (f": {text.splitlines()[0][:200]}" if text else "")
        self.log.warning("train.compile: torch.compile failed (%s); training eager", self.compile_error)
        self._compiled = None

    def masked_loss(self, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The loss over the pixels of ``mask`` (all pixels when it is None)."""
        if mask is None:
            return self.loss_fn(out, target)
        return optim.masked_loss(self.loss_name, out, target, mask)

    def _objective(
        self, net: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, global_n: int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Forward and backward of one batch; returns the batch's mean loss (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        with devices.autocast(self.device, self.precision):
            out = net(noisy)
        if len(noisy) == 0:  # an empty share still joins the gradient all-reduce, with zero gradients
            loss = objective = out.float().sum() * 0.0
        else:
            loss = objective = self.masked_loss(out.float(), clean, mask)
            if self.world.enabled:  # DDP averages over processes: weight by this share of the global batch
                objective = loss * (len(noisy) * self.world.size / global_n)
        self.scaler.scale(objective).backward()
        return loss.detach()

    def __call__(
        self,
        noisy: torch.Tensor,
        clean: torch.Tensor,
        global_n: int | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Train on one batch (``global_n``: the size of the global batch this process's share belongs to;
        ``mask``: the pixels the loss is taken over, None for all); returns the batch's mean loss as a tensor
        on the device (reading it would synchronise)."""
        noisy = noisy.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        clean = clean.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if mask is not None:
            mask = mask.to(self.device, non_blocking=True)
        global_n = len(noisy) if global_n is None else global_n
        loss = None
        if self._compiled is not None:
            try:
                loss = self._objective(self._compiled, noisy, clean, global_n, mask)
            except Exception as exc:  # noqa: BLE001 - nothing has been stepped yet: redo the batch eagerly
                self._fall_back(exc)
        if loss is None:
            loss = self._objective(self.trainer, noisy, clean, global_n, mask)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.averaged.update(self.model)
        return loss


def train_epoch(step: TrainStep, data: TrainData, train: TrainParams, epoch: int, desc: str) -> dict:
    """One pass of ``step`` over the training pairs; returns the epoch's row without the validation fields.
    With several processes each process trains on its share of every global batch of the plan."""
    world, device = step.world, step.device
    step.trainer.train()
    lr = step.lr
    plan = epoch_plan(data, train.batch_size, train.seed, epoch)
    global_sizes = [len(index) for index, _, _ in plan]
    if world.enabled:  # each process's share draws its own masks / halves (the key names the share as well)
        plan = [
            (index[part], corners[part], key * 1009 + world.rank)
            for index, corners, key in plan
            for part in (distributed.shard(len(index), world),)
        ]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    t0 = time.perf_counter()
    for (noisy, clean, mask), global_n in zip(
        progress(
            batches(data, plan, train.num_workers, device.type == "cuda"),
            total=len(plan),
            desc=desc,
            unit="batch",
            leave=False,
            disable=not world.is_main,
        ),
        global_sizes,
    ):
        loss_sum += step(noisy, clean, global_n, mask).double() * len(noisy)
    distributed.sum_(loss_sum, world)
    train_loss = loss_sum.item()  # synchronises with the device: the epoch's work is done
    seconds = time.perf_counter() - t0
    train_loss /= len(data)
    if not math.isfinite(train_loss):
        raise RuntimeFailure(
            f"training diverged at epoch {epoch}: the loss is {train_loss}; lower train.lr or use precision fp32"
        )
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_psnr": None,
        "val_ssim": None,
        "val_loss": None,
        "steps": int(step.scheduler.last_epoch),  # optimiser steps since the start of the run
        "images_per_s": len(data) / seconds,
        "seconds": seconds,
        "lr": lr,
    }


def validate(
    denoiser: Denoiser,
    val: Split,
    data_range: float,
    batch_size: int,
    world: World = distributed.SINGLE,
    pixel_size: float | None = None,
) -> tuple[float, float, float]:
    """Mean per-image PSNR, SSIM and lattice-band PSNR of the denoised val split in raw units (NaNs if val is
    empty). The band (:data:`~emdenoise.evaluation.metrics.LATTICE_BAND_ANGSTROM`) is placed by each image's
    pixel size, else ``pixel_size`` (the dataset card's). With several processes each denoises its share of the
    images and the sums are added up."""
    if len(val) == 0 or val.clean is None:
        return math.nan, math.nan, math.nan
    device = denoiser.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # PSNR, SSIM, band PSNR
    part = distributed.shard(len(val), world)
    for start in range(part.start, part.stop, batch_size):
        stop = min(start + batch_size, part.stop)
        noisy = torch.from_numpy(val.noisy[start:stop])[:, None].to(device)
        clean = torch.from_numpy(val.clean[start:stop])[:, None].to(device)
        pred = denoiser.denoise(noisy)
        sums[0] += psnr_per_image(pred, clean, data_range).double().sum()
        sums[1] += ssim_per_image(pred, clean, data_range).double().sum()
        out = pred.float().cpu().numpy()[:, 0]
        for i, image in zip(range(start, stop), out):
            size = float(val.pixel_size[i]) if val.pixel_size is not None else pixel_size
            band = band_periods_px(LATTICE_BAND_ANGSTROM, size)
            sums[2] += float(band_psnr(image[None], val.clean[i][None], data_range, band)[0])
    psnr, ssim, band_value = (distributed.sum_(sums, world) / len(val)).tolist()
    return psnr, ssim, band_value


def validation_loss(denoiser: Denoiser, pairs: TrainData | None, batch_size: int) -> float:
    """The self-supervised loss (mean squared error on normalised values, over the loss mask) of the
    denoised val split, with fixed draws (the same masks / halves every epoch); NaN without val pairs."""
    if pairs is None or len(pairs) == 0:
        return math.nan
    sup, device = pairs.supervisor, denoiser.device
    total, weight = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        index = torch.arange(start, min(start + batch_size, len(pairs)))
        inp, target, mask = gather(
            pairs, index, torch.zeros(len(index), 2, dtype=torch.int64), supervision.VAL_KEY + start
        )
        pred = (denoiser.denoise((inp * sup.std + sup.mean).to(device)) - sup.mean) / sup.std
        err = (pred.cpu() - target.cpu()).double().square()
        m = torch.ones_like(err) if mask is None else mask.cpu().double()
        total += (err * m).sum()
        weight += m.sum()
    return float(total / weight.clamp(min=1.0))


def validation_deviation(denoiser: Denoiser, val: Split, batch_size: int) -> float:
    """Noisy-only val data: the mean Poisson-deviance deviation (:func:`emdenoise.evaluation.consistency.check`,
    the relative structure error the deviance excess implies) of the denoised first
    :data:`DEVIANCE_VAL_IMAGES` val images against their own counts; NaN with clean val images or none."""
    n = min(len(val), DEVIANCE_VAL_IMAGES)
    if n == 0 or val.clean is not None:
        return math.nan
    values = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pred = denoiser.denoise(torch.from_numpy(val.noisy[start:stop])[:, None]).cpu().numpy()[:, 0]
        for i, estimate in zip(range(start, stop), pred):
            dose = float(val.dose[i]) if val.dose is not None else None
            values.append(consistency.check(val.noisy[i], estimate, dose).deviation)
    return float(np.mean(values))
