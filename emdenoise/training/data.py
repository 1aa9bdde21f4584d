"""Training data in memory: :class:`TrainData` (the pairs, normalised, on the CPU or resident on the GPU), read
by :func:`load_data` for every supervision mode, and the epoch's batches: the seeded plan, crops gathered with
one indexing operation per batch (no Python loop per image), optional worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdenoise.config.params import TrainParams
from emdenoise.data.card import DatasetCard
from emdenoise.data.splits import Split, load_split
from emdenoise.errors import InputError
from emdenoise.training import supervision
from emdenoise.training.supervision import Supervisor

GPU_RESIDENT_FRACTION = 0.5  # training pairs go into GPU memory when they take at most this much of what is free


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
    augment: bool = False  # train.augment: dihedral (each crop under a random symmetry of the square)

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


def load_data(
    data_dir: Path, train: TrainParams, normalisation: dict, where: str, card: DatasetCard | dict | None = None
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
    doc = card.to_json() if isinstance(card, DatasetCard) else card or {}
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
        noisy, clean = torch.from_numpy(tr.noisy)[:, None], torch.from_numpy(tr.clean)[:, None]
        return TrainData(noisy, clean, val, patch, augment=train.augment == "dihedral")
    sup = Supervisor(mode, train.blind_spot_fraction, normalisation["noisy"]["mean"], normalisation["noisy"]["std"])
    data = _self_supervised(tr, sup, train, doc, path, patch)
    data.val, data.augment = val, train.augment == "dihedral"
    if len(val):
        data.val_pairs = _self_supervised(val, sup, train, doc, Path(data_dir) / "val.h5", 0, required=False)
    return data


def _self_supervised(
    split: Split, sup: Supervisor, train: TrainParams, card: dict, path: Path, patch: int, required: bool = True
) -> TrainData:
    """One split as self-supervised training data: count scales and dead pixels found on the raw values, the
    frame pairs built (frame_pairs), everything normalised with the noisy statistics (the targets are noisy)."""
    scales, offset, source = supervision.count_model(
        split.noisy, split.dose, card, train.counts_per_unit, path, required=sup.mode == "poisson_split"
    )
    assert scales is not None
    sup = replace(sup, offset=offset)
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
        supervision=supervision.record(sup.mode, source, scales, sup.blind_spot_fraction, offset),
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
    valid = None if data.valid is None or not data.supervisor.self_supervised else pick(data.valid)
    if data.augment:
        noisy, clean, valid = dihedral((noisy, clean, valid), key)
    if not data.supervisor.self_supervised:
        return noisy, clean, None
    scale = None if data.scale is None else data.scale[index]
    return data.supervisor.batch(noisy, clean, valid, scale, key)


AUGMENT_KEY = 7_919  # added to the batch's key: the symmetries are drawn apart from the supervisor's draws


def dihedral(tensors: tuple[Any, ...], key: int) -> tuple[Any, ...]:
    """The (B, C, h, w) tensors (None passes through) with each sample ``i`` of every tensor under the same
    random symmetry, drawn from ``key``: a turn by a multiple of 90 degrees and a flip (the eight symmetries of
    the square), or for non-square crops a flip of either axis (the four that keep the shape)."""
    first = next(t for t in tensors if t is not None)
    square = first.shape[-1] == first.shape[-2]
    codes = torch.randint(
        0, 8 if square else 4, (len(first),), generator=torch.Generator().manual_seed(key + AUGMENT_KEY)
    )
    out = [None if t is None else t.clone() for t in tensors]
    for code in codes.unique().tolist():
        turns, flip = (code % 4, code // 4) if square else (2 * (code % 2), code // 2)
        rows = (codes == code).nonzero()[:, 0].to(first.device)
        for t in out:
            if t is not None:
                turned = torch.rot90(t[rows], turns, dims=(-2, -1))
                t[rows] = turned.flip(-1) if flip else turned
    return tuple(out)


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
