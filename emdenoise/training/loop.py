"""The training engine: data in memory, the optimiser, schedule and loss, the train step, one epoch, validation,
and :func:`train_model` (one model, with checkpoints and resume). The train task (:mod:`emdenoise.tasks.train`)
and the study call it, and ``emdenoise bench`` times the same :class:`TrainStep` through :func:`train_epoch`; the
file layout it writes is described in the train task.

The step (the fast path is the training path): batches are gathered from the in-memory pairs with one indexing
operation per batch (crops included, no Python loop per image; on a GPU the pairs are held in GPU memory when
they fit), the model runs channels_last under the resolved precision's autocast (bf16 only where the hardware
computes it natively: :func:`emdenoise.runtime.device.resolve_precision`), the loss stays on the device (no
synchronisation per step), and ``train.compile: true`` runs the model under ``torch.compile`` (a failure to
compile is a one-line warning and the eager step, never a crash).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emdenoise import __version__, models
from emdenoise.config.params import TrainParams
from emdenoise.data.splits import Split, load_split
from emdenoise.errors import InputError, RuntimeFailure
from emdenoise.evaluation import consistency
from emdenoise.evaluation.metrics import psnr_per_image, ssim_per_image
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import modelfile
from emdenoise.layout import CHECKPOINT_FILE, DATASET_CARD_KEYS, LAST_MODEL_FILE, MODEL_FILE
from emdenoise.log import progress
from emdenoise.outputs import STAGING_DIR, Transaction, remove_staging
from emdenoise.runtime import device as runtime
from emdenoise.runtime import distributed
from emdenoise.runtime.distributed import World
from emdenoise.training import supervision
from emdenoise.training.supervision import Supervisor

METRICS_FILE = "train_metrics.json"

# train: keys that determine the result, hence the checkpoint fingerprint (device, precision, compile and
# num_workers are left out on purpose: a run may resume on another machine)
FINGERPRINT_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "lr_schedule",
    "loss",
    "seed",
    "max_train_images",
    "patch_size",
)
# keys that enter the fingerprint only when they differ from these defaults (checkpoints of supervised runs
# written before them keep resuming)
OPTIONAL_FINGERPRINT_KEYS = {
    "supervision": "clean",
    "blind_spot_fraction": None,
    "counts_per_unit": 0.0,
    "init_from": "none",
}
STEP_MILESTONES = (0.5, 0.75)  # lr_schedule "step": x0.1 after half and after three quarters of all steps
SGD_MOMENTUM = 0.9
GPU_RESIDENT_FRACTION = 0.5  # training pairs go into GPU memory when they take at most this much of what is free
DEVIANCE_VAL_IMAGES = 32  # noisy-only val data: images checked by the Poisson-deviance consistency check per epoch

EpochHook = Callable[[int], None]


@dataclass
class TrainData:
    """Training pairs normalised, (N, 1, H, W) float32 (on the CPU, or resident on the training GPU), plus
    the raw val pairs. ``clean`` holds the targets: the clean images, the partner frames (frame_pairs) or the
    noisy images themselves (noise2void, poisson_split: the supervisor makes the targets per batch).
    ``valid`` (N, 1, H, W) bool: the pixels a self-supervised loss may use (not dead), ``scale`` (N,) the
    counts per stored unit, ``val_pairs`` the val split prepared the same way (the self-supervised val loss)."""

    noisy: torch.Tensor
    clean: torch.Tensor
    val: Split
    patch: int  # crop side, 0 for whole images
    supervisor: Supervisor = field(default_factory=lambda: Supervisor("clean"))
    valid: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    val_pairs: TrainData | None = None
    supervision: dict[str, Any] = field(default_factory=lambda: {"mode": "clean"})

    def __len__(self) -> int:
        return len(self.noisy)

    def mapped(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TrainData:
        """The same data with ``fn`` applied to every per-pair tensor (noisy, clean, valid, scale)."""
        return replace(
            self,
            noisy=fn(self.noisy),
            clean=fn(self.clean),
            valid=None if self.valid is None else fn(self.valid),
            scale=None if self.scale is None else fn(self.scale),
        )

    def first(self, n: int) -> TrainData:
        """The first ``n`` training pairs (all when ``n`` is 0), without a copy."""
        cut = slice(None, n or None)
        return self.mapped(lambda t: t[cut])


def publish(records: dict[str, dict], model_dir: Path, metrics_path: Path) -> None:
    """Put the run's outputs in place once every model of ``records`` (name -> record) has finished: each
    model's staged files onto their names in ``model_dir/<name>/``, then ``train_metrics.json`` (the last
    model's record at the top, ``models`` holding every record), declared last. A model with nothing staged
    (finished by an earlier run, its files already in place) keeps its files."""
    with Transaction(resumable=True) as tx:
        for name in records:
            for file in (MODEL_FILE, LAST_MODEL_FILE):
                if tx.is_staged(model_dir / name / file):
                    tx.put(model_dir / name / file)
        tx.write_json(metrics_path, {**records[list(records)[-1]], "models": records})
    for name in records:  # what else a killed run left there (a half-written temporary file)
        remove_staging(model_dir / name / STAGING_DIR)


def load_data(
    data_dir: Path, train: TrainParams, normalisation: dict, where: str, card: dict | None = None
) -> TrainData:
    """Read train (first ``max_train_images``) and val into memory; normalise the training pairs in place and
    prepare them for ``train.supervision`` (``card``: the dataset card, for its count scale)."""
    tr = load_split(data_dir, "train", train.max_train_images)
    val = load_split(data_dir, "val")
    if len(tr) == 0:
        raise InputError.at(Path(data_dir) / "train.h5", "noisy", "expected at least one training pair, got 0")
    height, width = tr.noisy.shape[1:]
    if len(val) and val.noisy.shape[1:] != tr.noisy.shape[1:]:
        raise InputError.at(
            Path(data_dir) / "val.h5",
            "noisy",
            f"expected images of {height}x{width} like the train split, got {val.noisy.shape[1]}x{val.noisy.shape[2]}",
        )
    patch = train.patch_size
    if patch > min(height, width):
        raise InputError.at(
            where, "train.patch_size", f"expected 0 or at most the image side {min(height, width)}, got {patch}"
        )
    if patch == height == width:
        patch = 0
    mode = train.supervision
    path = Path(data_dir) / "train.h5"
    if mode == "clean":
        if tr.clean is None:
            raise InputError.at(
                path,
                "clean",
                "expected clean images for train.supervision: clean; these data are noisy-only: train with "
                "noise2void, poisson_split or frame_pairs",
            )
        for array, side in ((tr.noisy, "noisy"), (tr.clean, "clean")):
            array -= normalisation[side]["mean"]
            array /= normalisation[side]["std"]
        # (N, H, W) -> (N, 1, H, W): a channel axis added, no axis ever swapped
        return TrainData(torch.from_numpy(tr.noisy)[:, None], torch.from_numpy(tr.clean)[:, None], val, patch)
    sup = Supervisor(mode, train.blind_spot_fraction, normalisation["noisy"]["mean"], normalisation["noisy"]["std"])
    data = _self_supervised(tr, sup, train, card or {}, path, patch)
    data.val = val
    if len(val):
        data.val_pairs = _self_supervised(val, sup, train, card or {}, Path(data_dir) / "val.h5", 0, required=False)
    return data


def _self_supervised(
    split: Split, sup: Supervisor, train: TrainParams, card: dict, path: Path, patch: int, required: bool = True
) -> TrainData:
    """One split as self-supervised training data: count scales and dead pixels found on the raw values, the
    frame pairs built (frame_pairs), everything normalised with the noisy statistics (the targets are noisy)."""
    scales, source = supervision.count_scales(
        split.noisy, split.dose, card, train.counts_per_unit, path, required=sup.mode == "poisson_split"
    )
    assert scales is not None
    valid = ~supervision.dead_pixels(split.noisy, scales)
    # the train split is normalised in place (memory); the val split's raw images stay for PSNR/SSIM
    noisy = split.noisy if required else split.noisy.copy()
    noisy -= sup.mean
    noisy /= sup.std
    inputs = targets = torch.from_numpy(noisy)[:, None]
    if sup.mode == "frame_pairs":
        a, b = supervision.frame_pair_rows(split.stack, split.frame, path, required)
        inputs, targets, valid, scales = inputs[a], inputs[b], valid[b], scales[a]
    return TrainData(
        inputs,
        targets,
        split,
        patch,
        supervisor=sup,
        valid=torch.from_numpy(np.ascontiguousarray(valid))[:, None],
        scale=torch.from_numpy(scales),
        supervision=supervision.record(sup.mode, source, scales, sup.blind_spot_fraction),
    )


def resident(data: TrainData, device: torch.device) -> TrainData:
    """``data`` with its training pairs in ``device``'s memory when that is a GPU with room for them (then
    batches are gathered there, no host-to-device copy per step); otherwise ``data`` itself."""
    if device.type != "cuda" or data.noisy.device == device:
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if 3 * data.noisy.nbytes > GPU_RESIDENT_FRACTION * free:
        return data
    return data.mapped(lambda t: t.to(device))


# ---------------------------------------------------------------------------------------------- pieces


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier of optimiser step ``s`` (0-based) over a run of ``total_steps``."""
    if schedule == "constant":
        return lambda s: 1.0
    if schedule == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps))
    if schedule == "step":
        milestones = [int(m * total_steps) for m in STEP_MILESTONES]
        return lambda s: 0.1 ** sum(s >= m for m in milestones)
    raise ValueError(f"unknown lr_schedule {schedule!r}")


def make_loss(name: str) -> nn.Module:
    return {"mse": nn.MSELoss(), "l1": nn.L1Loss()}[name]


Plan = list[tuple[torch.Tensor, torch.Tensor, int]]


def epoch_plan(data: TrainData, batch_size: int, seed: int, epoch: int) -> Plan:
    """The epoch's batches: (image indices, crop corners (B, 2), the batch's key for the supervisor's draws),
    drawn from a generator seeded by (seed, epoch) alone, so an epoch is the same whether or not the run was
    interrupted before it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(data)
    order = torch.randperm(n, generator=gen)
    height, width = data.noisy.shape[-2:]
    if data.patch:
        corners = torch.stack(
            [
                torch.randint(0, height - data.patch + 1, (n,), generator=gen),
                torch.randint(0, width - data.patch + 1, (n,), generator=gen),
            ],
            dim=1,
        )
    else:
        corners = torch.zeros(n, 2, dtype=torch.int64)
    key0 = (seed * 1_000_003 + epoch) * 1_000_033
    return [(order[i : i + batch_size], corners[i : i + batch_size], key0 + i) for i in range(0, n, batch_size)]


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def gather(data: TrainData, index: torch.Tensor, corners: torch.Tensor, key: int = 0) -> Batch:
    """One batch (input, target, loss mask or None), (B, 1, h, w), cropped when ``data.patch`` is set: one
    indexing operation per tensor (crops as an (image, row, column) index grid), on the device the pairs are
    on; then made into the supervision mode's input and target (:mod:`emdenoise.training.supervision`)."""
    index = index.to(data.noisy.device)
    if not data.patch:
        pick: Callable[[torch.Tensor], torch.Tensor] = lambda t: t[index]  # noqa: E731
    else:
        offsets = torch.arange(data.patch, device=data.noisy.device)
        corners = corners.to(data.noisy.device)
        rows = (corners[:, 0, None] + offsets)[:, :, None]  # (B, p, 1)
        cols = (corners[:, 1, None] + offsets)[:, None, :]  # (B, 1, p)
        images = index[:, None, None]
        pick = lambda t: t[images, 0, rows, cols][:, None]  # noqa: E731
    noisy, clean = pick(data.noisy), pick(data.clean)
    if not data.supervisor.self_supervised:
        return noisy, clean, None
    valid = None if data.valid is None else pick(data.valid)
    scale = None if data.scale is None else data.scale[index]
    return data.supervisor.batch(noisy, clean, valid, scale, key)


class _Batches(torch.utils.data.Dataset):
    """The epoch's batches as a Dataset of whole batches, for a DataLoader with worker processes."""

    def __init__(self, data: TrainData, plan: Plan):
        self.data, self.plan = data, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        return gather(self.data, *self.plan[i])


def batches(data: TrainData, plan: Plan, num_workers: int, pin: bool) -> Iterable[Batch]:
    """Iterate the plan's batches, in the main process or (num_workers > 0, pairs on the CPU) in worker
    processes."""
    if num_workers == 0 or data.noisy.device.type != "cpu":
        return (gather(data, *item) for item in plan)
    return torch.utils.data.DataLoader(
        _Batches(data, plan), batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin
    )


# ---------------------------------------------------------------------------------------------- the step


class TrainStep:
    """One optimiser step of one model: the object ``emdenoise train``, the study and ``emdenoise bench`` all
    run. ``model`` is the bare model (saved, validated, checkpointed); the step runs it wrapped for several
    processes when ``world`` has them, and compiled when ``compile`` is set (``compile_error`` then says why
    it fell back to eager, if it did)."""

    def __init__(
        self,
        model: nn.Module,
        train: TrainParams,
        total_steps: int,
        device: torch.device,
        precision: str,
        world: World = distributed.SINGLE,
        log: logging.Logger | None = None,
    ):
        self.model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.device, self.precision, self.world = device, precision, world
        self.optimizer = make_optimizer(train.optimizer, self.model.parameters(), train.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(train.lr_schedule, total_steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.loss_fn = make_loss(train.loss)
        self.loss_name = train.loss
        self.trainer = distributed.wrap(self.model, world, device)  # model itself, or in DistributedDataParallel
        self.log = log or logging.getLogger("emdenoise")
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
        err = out - target
        err = err.square() if self.loss_name == "mse" else err.abs()
        weight = mask.to(err.dtype)
        return (err * weight).sum() / weight.sum().clamp(min=1.0)

    def _objective(
        self, net: nn.Module, noisy: torch.Tensor, clean: torch.Tensor, global_n: int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Forward and backward of one batch; returns the batch's mean loss (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(self.device, self.precision):
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
        "images_per_s": len(data) / seconds,
        "seconds": seconds,
        "lr": lr,
    }


def validate(
    denoiser: Denoiser, val: Split, data_range: float, batch_size: int, world: World = distributed.SINGLE
) -> tuple[float, float]:
    """Mean per-image PSNR and SSIM of the denoised val split in raw units (NaN, NaN if val is empty).
    With several processes each denoises its share of the images and the sums are added up."""
    if len(val) == 0 or val.clean is None:
        return math.nan, math.nan
    device = denoiser.device
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # PSNR, SSIM
    part = distributed.shard(len(val), world)
    for start in range(part.start, part.stop, batch_size):
        stop = min(start + batch_size, part.stop)
        noisy = torch.from_numpy(val.noisy[start:stop])[:, None].to(device)
        clean = torch.from_numpy(val.clean[start:stop])[:, None].to(device)
        pred = denoiser.denoise(noisy)
        sums[0] += psnr_per_image(pred, clean, data_range).double().sum()
        sums[1] += ssim_per_image(pred, clean, data_range).double().sum()
    psnr, ssim = (distributed.sum_(sums, world) / len(val)).tolist()
    return psnr, ssim


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


def data_fingerprint(card: dict) -> str:
    """Fingerprint of the data a model trains on: the dataset card's contract keys (image shape, split sizes,
    value ranges, normalisation, data range, source), not its creation time or folder, so re-running
    preprocess on the same raw data keeps checkpoints valid."""
    return modelfile.fingerprint({key: card.get(key) for key in DATASET_CARD_KEYS})


def _optional_keys(train: TrainParams) -> list[str]:
    """The OPTIONAL_FINGERPRINT_KEYS that matter for this run (those off their defaults; the blind-spot
    fraction only for noise2void)."""
    keys = [
        k for k, default in OPTIONAL_FINGERPRINT_KEYS.items() if default is not None and getattr(train, k) != default
    ]
    if train.supervision == "noise2void":
        keys.append("blind_spot_fraction")
    return keys


def init_weights(model: nn.Module, name: str, options: dict, path_text: str, where: Any, log: Any) -> None:
    """Load the weights of the model file ``path_text`` (``train.init_from``) into ``model``: refused in one
    line when the file is missing or holds another architecture or other options."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise InputError.at(where, "train.init_from", f"expected an existing model file, {path} not found")
    loaded, meta = modelfile.load_model(path)
    if meta["model"] != name:
        raise InputError.at(
            path,
            "model",
            f"expected a {name} model file for train.init_from (train.model is {name}), got {meta['model']}",
        )
    if meta["options"] != options:
        raise InputError.at(
            path,
            "options",
            f"expected the options of this run for train.init_from ({_config_diff(meta['options'], options)})",
        )
    model.load_state_dict(loaded.state_dict())
    log.info("%s: starting from the weights of %s (train.init_from)", name, path)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown difference"


# ---------------------------------------------------------------------------------------------- one model


def training_pixel_size(card: dict) -> float | None:
    """The model file's ``pixel_size`` (A/px of the training data): the dataset card's ``pixel_size_angstrom``,
    None when the card has none (or not a positive number)."""
    value = card.get("pixel_size_angstrom")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)


def train_model(
    name: str,
    train: TrainParams,
    data: TrainData,
    card: dict,
    data_range: float,
    device: torch.device,
    precision: str,
    out_dir: Path,
    log: Any,
    world: World = distributed.SINGLE,
    *,
    on_epoch_end: EpochHook | None = None,
) -> dict:
    """Train model ``name`` (resuming when allowed): its checkpoint into ``out_dir``, its model files into
    ``out_dir/.staging/`` for :func:`publish` (rank 0 only); return its record. ``world``: this process's
    place in a torchrun run (all processes call this alike). ``on_epoch_end(epoch)`` is called after each
    epoch's checkpoint is written."""
    options = models.options_from_train(name, train)
    config = {
        "model": name,
        "options": options,
        **{k: getattr(train, k) for k in FINGERPRINT_KEYS},
        **{k: getattr(train, k) for k in _optional_keys(train)},
        "data_card": data_fingerprint(card),
    }
    fingerprint = modelfile.fingerprint(config)
    ckpt_path = out_dir / CHECKPOINT_FILE
    stage = out_dir / STAGING_DIR
    epochs = train.epochs

    runtime.seed_everything(train.seed)
    built = models.build(name, **options)
    if train.init_from != "none":
        init_weights(built, name, options, train.init_from, train.where, log)
    model = distributed.prepare(built, world, device)
    step = TrainStep(model, train, math.ceil(len(data) / train.batch_size) * epochs, device, precision, world, log)
    record: dict[str, Any] = {
        "model": name,
        "device": str(device),
        "precision": precision,
        "parameters": models.count_parameters(model),
        "options": options,
        "fingerprint": fingerprint,
        "n_train": len(data),
        "n_val": len(data.val),
        "epochs": [],
        "best_epoch": None,
        "best_val_psnr": None,
        "complete": False,
        "processes": world.size,
    }
    start = 1

    if train.resume == "auto" and ckpt_path.exists():
        info = modelfile.checkpoint_info(ckpt_path)
        if info["fingerprint"] != fingerprint:
            raise InputError.at(
                ckpt_path,
                "fingerprint",
                "expected a checkpoint of this training configuration, "
                f"found one of another ({_config_diff(info['config'], config)}); set "
                "train.resume: never to start afresh (deleting it) or use another model_dir",
            )
        if info["epoch"] >= epochs:
            state = modelfile.load_checkpoint(ckpt_path, step.model)
            log.info(
                "%s: already trained for %d epochs with this configuration (%s); nothing to do (set "
                "train.resume: never to train again)",
                name,
                epochs,
                ckpt_path,
            )
            return state["record"]
        state = modelfile.load_checkpoint(ckpt_path, step.model, step.optimizer, step.scheduler)
        runtime.set_rng_state(state["rng"])
        if state.get("scaler"):
            step.scaler.load_state_dict(state["scaler"])
        record = {**state["record"], "device": str(device), "precision": precision, "processes": world.size}
        start = state["epoch"] + 1
        log.info("%s: resuming from %s after epoch %d of %d", name, ckpt_path, state["epoch"], epochs)
    elif world.is_main:
        remove_staging(stage)  # what an earlier, unfinished run staged
        if ckpt_path.exists():
            log.info(
                "%s: starting afresh (train.resume: never): the first epoch replaces %s; the model files "
                "are replaced when the run succeeds",
                name,
                ckpt_path,
            )

    meta = {
        "model": name,
        "options": options,
        "data_range": data_range,
        # the targets' statistics de-normalise the output: the noisy ones when the targets are noisy frames
        "normalisation": {
            side: {k: card["normalisation"][target][k] for k in ("mean", "std")}
            for side, target in (("noisy", "noisy"), ("clean", "noisy" if data.supervisor.self_supervised else "clean"))
        },
        "pixel_size": training_pixel_size(card),
        "supervision": data.supervision,
        "train_config": {
            **config,
            "fingerprint": fingerprint,
            "device": str(device),
            "precision": precision,
            "num_workers": train.num_workers,
            "resume": train.resume,
            "processes": world.size,
            "emdenoise_version": __version__,
        },
    }
    pairs = resident(data, device)

    for epoch in range(start, epochs + 1):
        row = train_epoch(step, pairs, train, epoch, f"{name} {epoch}/{epochs}")
        t_val = time.perf_counter()
        distributed.sync_buffers(step.model, world)
        denoiser = Denoiser(step.model, meta, device, precision)
        val_psnr, val_ssim = validate(denoiser, data.val, data_range, train.batch_size, world)
        val_loss = validation_loss(denoiser, data.val_pairs, train.batch_size)
        val_deviation = validation_deviation(denoiser, data.val, train.batch_size) if world.is_main else math.nan
        step.model.train()
        row.update(
            val_psnr=_finite(val_psnr),
            val_ssim=_finite(val_ssim),
            val_loss=_finite(val_loss),
            val_deviation=_finite(val_deviation),
            seconds=row["seconds"] + time.perf_counter() - t_val,
        )
        record["epochs"].append(row)
        log.info(
            "%s epoch %d/%d: train_loss %.5f, val PSNR %.2f dB, SSIM %.4f%s, %.1f images/s, %.1f s, lr %.3g",
            name,
            epoch,
            epochs,
            row["train_loss"],
            val_psnr,
            val_ssim,
            ("" if row["val_loss"] is None else f", val loss ({data.supervisor.mode}) {val_loss:.5f}")
            + ("" if row["val_deviation"] is None else f", val deviance deviation {val_deviation:.4f}"),
            row["images_per_s"],
            row["seconds"],
            row["lr"],
        )

        if data.val.clean is None:  # noisy-only data: the best epoch is the one with the lowest val loss
            improved = record["best_epoch"] is None or (
                row["val_loss"] is not None and row["val_loss"] < (record.get("best_val_loss") or math.inf)
            )
        else:
            improved = record["best_epoch"] is None or (
                row["val_psnr"] is not None and row["val_psnr"] > (record["best_val_psnr"] or -math.inf)
            )
        if improved or len(data.val) == 0:
            record.update(best_epoch=epoch, best_val_psnr=row["val_psnr"], best_val_loss=row["val_loss"])
            if world.is_main:
                modelfile.save_model(stage / MODEL_FILE, step.model, {**meta, "metrics": {**row, "best_epoch": epoch}})
        record["complete"] = epoch == epochs
        if record["complete"] and world.is_main:
            modelfile.save_model(
                stage / LAST_MODEL_FILE, step.model, {**meta, "metrics": {**row, "best_epoch": record["best_epoch"]}}
            )
        # the checkpoint goes last: it marks the epoch as done, so a crash before it just redoes the epoch
        if world.is_main:
            modelfile.save_checkpoint(
                ckpt_path,
                step.model,
                step.optimizer,
                step.scheduler,
                {
                    "model": name,
                    "options": options,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "config": config,
                    "record": record,
                    "rng": runtime.rng_state(),
                    "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else None,
                },
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    log.info(
        "%s: best %s at epoch %s -> %s (staged until every model of the run has finished)",
        name,
        f"val PSNR {record['best_val_psnr']:.2f} dB"
        if record["best_val_psnr"] is not None
        else f"val loss {record.get('best_val_loss')}",
        record["best_epoch"],
        out_dir / MODEL_FILE,
    )
    return record
