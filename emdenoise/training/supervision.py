"""Training targets (``train.supervision``): turn a batch of in-memory images into (input, target, loss mask).

The one training engine (:mod:`emdenoise.training.loop`) calls :meth:`Supervisor.batch` on every gathered
batch; every mode trains every architecture unchanged (the blind spot is made by masking the input, not by
changing the network).

- ``clean``: input the noisy image, target its clean image, no mask (the supervised training of before).
- ``noise2void``: blind-spot training on single noisy frames (Krull et al. 2019). A random fraction
  (``train.blind_spot_fraction``) of the pixels, drawn independently per pixel (a random pattern, never a grid),
  is replaced in the input by the median of its 5x5 neighbourhood *without* the centre (N2V2, Hoeck et al.
  2022: a replacement that can never be the pixel itself, and no grid, avoids the checkerboard artefacts of
  the original); the loss is taken only at those pixels, against their original noisy values.
- ``poisson_split``: binomial thinning. With ``c`` the counts of a frame (stored values less the detector
  offset, times the count scale, rounded), ``a ~ Binomial(c, 1/2)`` and ``b = c - a`` are independent Poisson
  halves of the same signal: input ``2a``, target ``2b`` (back in stored units, the offset added again), a
  Noise2Noise pair from one frame, drawn afresh each epoch. The offset is 0 unless the dataset card records a
  detector model (:mod:`emdenoise.classical.detector`).
- ``frame_pairs``: consecutive frames of a stack (aligned by preprocess) as Noise2Noise pairs, both ways round;
  :func:`frame_pair_rows` builds them, the batch is then input frame, target frame.

Dead pixels are left out of every self-supervised loss: a pixel is taken as dead when it reads exactly 0
while its eight neighbours say at least :data:`DEAD_MIN_COUNTS` counts were expected there (a Poisson zero
is then rarer than one in 400), or when the split marks it (a ``dead`` dataset). The random draws of a batch
come from a generator seeded by the batch's key (seed, epoch, batch number), so a resumed run draws the same
masks and halves as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from emdenoise.errors import InputError
from emdenoise.training.choices import SUPERVISIONS

MODES = SUPERVISIONS  # the schema offers these (train.supervision); Supervisor implements each
SELF_SUPERVISED = MODES[1:]
DEAD_MIN_COUNTS = 6.0  # expected counts above which a 0 reading is taken as a dead pixel (P(0) = e^-6)
BLIND_SPOT_RADIUS = 2  # the replacement's neighbourhood: (2r+1)^2 pixels minus the centre
VAL_KEY = 0x5EED  # the fixed key of the validation batches' draws


def batch_generator(key: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(key) % (2**63 - 1))


@dataclass(frozen=True)
class Supervisor:
    """How one run makes its targets: the mode, and what it needs to undo the normalisation (poisson_split)."""

    mode: str
    blind_spot_fraction: float = 0.02
    mean: float = 0.0  # the noisy normalisation (poisson_split works on counts)
    std: float = 1.0
    offset: float = 0.0  # the detector value of zero counts (poisson_split)

    @property
    def self_supervised(self) -> bool:
        return self.mode != "clean"

    def batch(
        self,
        noisy: torch.Tensor,
        clean: torch.Tensor,
        valid: torch.Tensor | None,
        scale: torch.Tensor | None,
        key: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(input, target, loss mask or None) of one batch of normalised (B, 1, h, w) images; ``valid``: the
        pixels that may enter the loss (not dead), ``scale``: (B,) counts per stored unit (poisson_split)."""
        if self.mode in ("clean", "frame_pairs"):
            return noisy, clean, valid
        gen = batch_generator(key, noisy.device)
        if self.mode == "noise2void":
            spots = torch.rand(noisy.shape, generator=gen, device=noisy.device) < self.blind_spot_fraction
            inp = blind_spot_input(noisy, spots, gen)
            return inp, noisy, spots if valid is None else spots & valid
        if self.mode == "poisson_split":
            if scale is None:
                raise ValueError("poisson_split needs the count scale of every image")
            s = scale.to(noisy.device, torch.float32).view(-1, 1, 1, 1)
            counts = torch.round(torch.clamp(noisy * self.std + self.mean - self.offset, min=0.0) * s)
            half = torch.binomial(counts, torch.full_like(counts, 0.5), generator=gen)
            inp = (self.offset + 2.0 * half / s - self.mean) / self.std
            target = (self.offset + 2.0 * (counts - half) / s - self.mean) / self.std
            return inp, target, valid
        raise ValueError(f"unknown supervision {self.mode!r}")


def blind_spot_input(noisy: torch.Tensor, spots: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``noisy`` with every pixel of ``spots`` replaced by the median of its (2r+1)^2 neighbourhood without the
    centre (at the borders the opposite neighbour stands in for one off the image, never the centre)."""
    r = BLIND_SPOT_RADIUS
    where = spots.nonzero(as_tuple=True)  # (b, c, y, x) of the spots
    if where[0].numel() == 0:
        return noisy
    height, width = noisy.shape[-2:]
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    keep = (dy != 0) | (dx != 0)
    dy, dx = dy[keep].to(noisy.device), dx[keep].to(noisy.device)
    ys = _reflect(where[2][:, None], dy, height)
    xs = _reflect(where[3][:, None], dx, width)
    values = noisy[where[0][:, None], where[1][:, None], ys, xs]  # (K, (2r+1)^2 - 1)
    out = noisy.clone()
    out[where] = values.median(dim=1).values
    return out


def _reflect(centre: torch.Tensor, offset: torch.Tensor, n: int) -> torch.Tensor:
    """``centre + offset``, or ``centre - offset`` (the opposite neighbour) where that falls off 0..n-1: a
    non-zero offset never lands on the centre (images of at least 2r+1 pixels a side)."""
    i = centre + offset
    return torch.where((i < 0) | (i > n - 1), centre - offset, i).clamp(0, n - 1)


# ---------------------------------------------------------------------------------------------- data


def dead_pixels(raw: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels reading exactly 0 where their 8 neighbours expect >= DEAD_MIN_COUNTS counts;
    ``raw`` in stored units, ``scale`` (N,) counts per unit."""
    x = torch.from_numpy(np.clip(raw, 0.0, None))[:, None]
    summed = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * 9.0
    neighbours = (summed - x) / 8.0
    expected = neighbours[:, 0].numpy() * np.asarray(scale, np.float32)[:, None, None]
    return (raw == 0) & (expected >= DEAD_MIN_COUNTS)


def whole_numbers(values: np.ndarray) -> bool:
    """Whether every value is a whole number of counts (>= 0: a negative one is no count)."""
    return bool(np.all(values == np.round(values)) and (values.size == 0 or values.min() >= 0))


def count_scales(
    noisy: np.ndarray, dose: np.ndarray | None, card: dict, counts_per_unit: float, path: Path, required: bool
) -> tuple[np.ndarray | None, str]:
    """Counts per stored unit of every image (N,) and where that came from (:func:`count_model` without the
    offset)."""
    scales, _, source = count_model(noisy, dose, card, counts_per_unit, path, required)
    return scales, source


def count_model(
    noisy: np.ndarray, dose: np.ndarray | None, card: dict, counts_per_unit: float, path: Path, required: bool
) -> tuple[np.ndarray | None, float, str]:
    """Counts per stored unit of every image (N,), the detector offset (stored value of zero counts) and where
    they came from: ``train.counts_per_unit`` when set, else the recorded dose, else the dataset card's detector
    model (``detector_offset``, ``detector_gain``: scale 1 / gain), else its ``count_scale``, else 1 for
    whole-number data; the offset is 0 except with the card's detector model. When none applies: an
    InputError if ``required`` (poisson_split), else the scale estimated from each image."""
    from emdenoise.classical.detector import from_card
    from emdenoise.classical.noise import counts_problem

    n = len(noisy)
    problem = counts_problem(noisy) if required else None
    if problem:  # whatever the scale, negative or non-finite values are no counts to split
        raise InputError.at(path, "noisy", f"{problem}, for train.supervision: poisson_split")
    if counts_per_unit > 0:
        return np.full(n, counts_per_unit, np.float32), 0.0, "train.counts_per_unit"
    if dose is not None and len(dose) == n and np.all(dose > 0):
        return np.asarray(dose, np.float32), 0.0, "dose"
    model = from_card(card)
    if model is not None:
        where = f"dataset card detector model (offset {model.offset:.6g}, gain {model.gain:.4g}; {model.source})"
        return np.full(n, model.count_scale, np.float32), model.offset, where
    scales, source = _card_or_estimate(noisy, card, path, required)
    return scales, 0.0, source


def _card_or_estimate(noisy: np.ndarray, card: dict, path: Path, required: bool) -> tuple[np.ndarray, str]:
    """The count scale without a dose or a detector model: the card's ``count_scale``, 1 for whole numbers,
    else an InputError (``required``) or each image's own estimate."""
    from emdenoise.classical.noise import NotCounts, estimate_count_scale

    n = len(noisy)
    card_scale = card.get("count_scale")
    if isinstance(card_scale, (int, float)) and not isinstance(card_scale, bool) and card_scale > 0:
        return np.full(n, card_scale, np.float32), f"dataset card count_scale ({card.get('count_scale_source')})"
    if whole_numbers(noisy):
        return np.ones(n, np.float32), "whole-number data (1 count per unit)"
    if required:
        raise InputError.at(
            path,
            "noisy",
            "expected whole-number counts for train.supervision: poisson_split, got non-integer values and no "
            "count scale (no dose recorded, no count_scale or detector model in the dataset card); set "
            "train.counts_per_unit"
            + (
                f" (estimated from the frames: {card['count_scale_estimate']:.4g}, the card's count_scale_estimate)"
                if isinstance(card.get("count_scale_estimate"), (int, float))
                else ""
            )
            + (f"; no detector model either: {card['detector_source']}" if card.get("detector_source") else ""),
        )
    try:
        return np.array([estimate_count_scale(im) for im in noisy], np.float32), "estimated from each image"
    except NotCounts as exc:  # not counts: no scale (it only tunes the dead-pixel test of the other modes)
        return np.ones(n, np.float32), f"none: the data are not counts ({exc})"


def frame_pair_rows(
    stack: np.ndarray | None, frame: np.ndarray | None, path: Path, required: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(input rows, target rows) of every pair of consecutive frames of the same stack, both ways round; none
    is an InputError when ``required`` (the train split), else empty (a val split of single frames)."""
    if (stack is None or frame is None) and not required:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if stack is None or frame is None:
        raise InputError.at(
            path,
            "stack",
            "expected stack and frame datasets for train.supervision: frame_pairs (data preprocessed from a "
            "micrographs: source with stacks of frames)",
        )
    order = np.lexsort((frame, stack))
    s, f = stack[order], frame[order]
    nxt = (s[1:] == s[:-1]) & (f[1:] == f[:-1] + 1)
    a, b = order[:-1][nxt], order[1:][nxt]
    if len(a) == 0 and required:
        raise InputError.at(
            path,
            "frame",
            "expected stacks of at least 2 consecutive frames for train.supervision: frame_pairs, every stack "
            "has one frame",
        )
    return np.concatenate([a, b]), np.concatenate([b, a])


def record(
    mode: str, source: str | None, scales: np.ndarray | None, fraction: float, offset: float = 0.0
) -> dict[str, Any]:
    """The model file's ``supervision`` meta entry (contract 4)."""
    entry: dict[str, Any] = {"mode": mode}
    if mode == "noise2void":
        entry["blind_spot_fraction"] = fraction
    if mode == "poisson_split" and scales is not None:
        entry.update(count_scale_source=source, count_scale_median=float(np.median(scales)))
        if offset:
            entry["count_offset"] = float(offset)
    return entry
