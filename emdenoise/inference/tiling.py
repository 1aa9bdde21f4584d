"""Denoise frames of any size by overlapping tiles with smooth blending, tiles batched across frames.

    tiler = Tiler(model_fn, tile_size=256, overlap=32, batch_size=8)
    for out in tiler.stream(frames):        # frames: any iterable of 2-D arrays (memory maps welcome)
        ...                                 # out: float32 array of the frame's shape, in the same order

``model_fn`` is any callable mapping a float32 (B, 1, h, w) CPU tensor to a (B, 1, h, w) tensor (on any
device, any float dtype); it must not keep a reference to its input, whose buffer is reused.

How a frame is cut (per axis; the two axes are independent):

- A side no longer than ``tile_size`` (or ``tile_size == 0``) is one tile spanning the whole side.
- Otherwise tiles start every ``tile_size - overlap`` pixels and the last tile is moved back to end flush with
  the frame, so every tile is a plain slice of the frame: nothing is padded or mirrored, the model handles the
  frame's own borders exactly as it would untiled, and a memory-mapped frame is read one tile at a time.
- Where two tiles overlap, the first quarter of the overlap nearest each tile's edge gets weight 0 (those
  pixels see the tile's artificial border), and the middle half is a raised-cosine cross-fade
  (w(t) = sin^2(pi/2 * (t + 1/2) / ramp)), so the two weights sum to 1. The last pair, whose overlap is larger,
  cross-fades over a ramp of the same width centred in its overlap. Frame borders keep weight 1.
- Each pixel keeps the running weighted mean of the tiles that cover it and their summed weight, in float32
  (no float64 pass over the frame): where the tiles agree the mean does not move, so an identity model gives
  back its input bit for bit.

Consequence: for a translation-equivariant network (convolutions, no resampling) whose receptive-field radius
is at most ``overlap // 4``, tiled and untiled outputs agree to float rounding; for other networks the seams are
cross-faded. Keep ``tile_size`` and ``overlap`` multiples of 8 so that tiles stay aligned with the 2x2 pooling
grid of the U-Net-like models.

Whole frames where memory allows: with ``tile_size=0`` and ``max_pixels`` (what the model may hold in one call,
from the memory budget: :meth:`emdenoise.inference.denoiser.Denoiser.max_pixels`) a frame goes through the
model whole, several frames a call as the budget allows; a larger frame is cut into tiles of ``fallback_tile``.

Memory: the batch buffer, the tile outputs of one batch, and per frame in flight a float32 output plus two
float32 bands (mean and weight) of the rows not yet final (about ``tile_size + batch_size * stride`` rows at
most); frames are finished and handed out in order, so a stack of any length holds at most the frames that one
batch of tiles touches.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

ModelFn = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_TILE = 256  # the tile side used when a whole frame does not fit the memory budget


def axis_tiles(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start positions along one axis of ``length`` pixels (tiles of ``min(tile, length)`` pixels)."""
    if tile <= 0 or length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - overlap) / stride)
    return [min(i * stride, length - tile) for i in range(count)]


def _ramp(width: int) -> np.ndarray:
    """Rising raised-cosine weights of ``width`` samples, strictly between 0 and 1; ramp + reversed ramp = 1."""
    t = (np.arange(width) + 0.5) / width
    return np.sin(0.5 * np.pi * t) ** 2


def axis_windows(starts: list[int], tile: int, overlap: int) -> list[np.ndarray]:
    """The 1-D blending weight of each tile along one axis (float64, ``tile`` samples each)."""
    windows = [np.ones(tile) for _ in starts]
    ramp_width = overlap - 2 * (overlap // 4)
    for i in range(len(starts) - 1):
        shared = starts[i] + tile - starts[i + 1]  # pixels both tiles cover (>= overlap)
        begin = starts[i + 1] + (shared - ramp_width) // 2  # frame position where the cross-fade starts
        up = _ramp(ramp_width)
        # next tile: 0 before the ramp, rising over it, 1 after
        lo = begin - starts[i + 1]
        windows[i + 1][:lo] = 0.0
        windows[i + 1][lo : lo + ramp_width] *= up
        # this tile: 1 before the ramp, falling over it, 0 after
        lo = begin - starts[i]
        windows[i][lo : lo + ramp_width] *= up[::-1]
        windows[i][lo + ramp_width :] = 0.0
    return windows


@dataclass(frozen=True)
class TilePlan:
    """How one frame shape is cut: tile starts and blending weights per axis."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    wy: tuple[np.ndarray, ...]
    wx: tuple[np.ndarray, ...]

    @classmethod
    def make(cls, height: int, width: int, tile_size: int, overlap: int) -> TilePlan:
        th = height if tile_size <= 0 else min(tile_size, height)
        tw = width if tile_size <= 0 else min(tile_size, width)
        ys = axis_tiles(height, tile_size, overlap)
        xs = axis_tiles(width, tile_size, overlap)
        wy = axis_windows(ys, th, overlap)
        wx = axis_windows(xs, tw, overlap)
        return cls(
            height,
            width,
            th,
            tw,
            tuple(ys),
            tuple(xs),
            tuple(wy),
            tuple(wx),
        )

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


class _Stitcher:
    """Blends the weighted tile outputs of one frame; rows move to ``out`` once no later tile touches them.

    Each pixel holds the running weighted mean of the tiles added so far and their summed weight, both float32:
    adding a tile of weight ``w`` moves the mean by ``w / (summed weight) * (tile - mean)``. Where the tiles
    agree the mean does not move at all, so an identity model gives back its input bit for bit without float64.
    Only a band of rows is kept: from the first row not yet final to the bottom of the lowest tile added so far.
    A frame that is one tile is copied straight to ``out``.
    """

    def __init__(self, plan: TilePlan):
        self.plan = plan
        self.out = np.empty((plan.height, plan.width), np.float32)
        self.mean = np.zeros((0, plan.width), np.float32)
        self.weight = np.zeros((0, plan.width), np.float32)
        self.top = 0  # frame row of mean[0]
        self.added = 0  # tiles added so far (row-major order)

    def add(self, tile_out: np.ndarray) -> None:
        p = self.plan
        if p.count == 1:
            self.out[:] = tile_out
            self.added = 1
            return
        r, c = divmod(self.added, len(p.xs))
        y, x = p.ys[r], p.xs[c]
        need = y + p.tile_h - self.top
        if need > len(self.mean):
            self.mean = _grown(self.mean, need)
            self.weight = _grown(self.weight, need)
        rows = slice(y - self.top, y - self.top + p.tile_h)
        cols = slice(x, x + p.tile_w)
        w = np.outer(p.wy[r], p.wx[c]).astype(np.float32)
        total = self.weight[rows, cols]
        total += w
        step = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
        mean = self.mean[rows, cols]
        mean += step * (tile_out - mean)
        self.added += 1
        self._flush()

    @property
    def done(self) -> bool:
        return self.added == self.plan.count

    def _flush(self) -> None:
        """Move rows no later tile touches (tiles come row-major, so rows above the next tile row) to ``out``."""
        p = self.plan
        final = p.height if self.done else p.ys[self.added // len(p.xs)]
        k = final - self.top
        if k <= 0:
            return
        self.out[self.top : final] = self.mean[:k]
        self.mean, self.weight = self.mean[k:], self.weight[k:]
        self.top = final


def _grown(band: np.ndarray, rows: int) -> np.ndarray:
    grown = np.zeros((rows, band.shape[1]), band.dtype)
    grown[: len(band)] = band
    return grown


class Tiler:
    """Applies ``model_fn`` to whole frames through batched, blended tiles (see the module docstring).

    ``tile_size=0`` with ``max_pixels``: whole frames where a frame has at most ``max_pixels`` pixels (batched
    so that a model call holds at most that many), tiles of ``fallback_tile`` beyond; ``max_pixels=0``: whole
    frames always. A ``tile_size`` above 0 always tiles.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        tile_size: int = 256,
        overlap: int = 32,
        batch_size: int = 8,
        pin_memory: bool = False,
        *,
        max_pixels: int = 0,
        fallback_tile: int = DEFAULT_TILE,
    ):
        if tile_size < 0 or overlap < 0 or batch_size < 1 or max_pixels < 0:
            raise ValueError("tile_size, overlap and max_pixels must be >= 0 and batch_size >= 1")
        if tile_size and 2 * overlap > tile_size:
            raise ValueError(f"overlap ({overlap}) must be at most half the tile size ({tile_size})")
        self.model_fn = model_fn
        self.tile_size = tile_size
        self.overlap = overlap
        self.batch_size = batch_size
        self.pin_memory = pin_memory
        self.max_pixels = max_pixels
        self.fallback_tile = fallback_tile
        self._plans: dict[tuple[int, int], TilePlan] = {}
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}
        self.tiles_run = 0  # tiles sent through the model, for reporting

    def plan(self, height: int, width: int) -> TilePlan:
        key = (height, width)
        if key not in self._plans:
            tile = self.tile_size
            if not tile and self.max_pixels and height * width > self.max_pixels:
                tile = self.fallback_tile  # too large to go through whole: tiles, bounded memory
            overlap = min(self.overlap, tile // 2) if tile else self.overlap
            self._plans[key] = TilePlan.make(height, width, tile, overlap)
        return self._plans[key]

    def batch_for(self, th: int, tw: int) -> int:
        """Tiles of ``th`` x ``tw`` per model call: ``batch_size``, fewer where ``max_pixels`` says so."""
        if self.tile_size or not self.max_pixels:
            return self.batch_size
        return max(1, min(self.batch_size, self.max_pixels // (th * tw)))

    def _buffer(self, th: int, tw: int) -> torch.Tensor:
        key = (th, tw)
        if key not in self._buffers:
            self._buffers.clear()  # one tile shape at a time: do not keep buffers of earlier shapes alive
            self._buffers[key] = torch.empty(
                (self.batch_for(th, tw), 1, th, tw), dtype=torch.float32, pin_memory=self.pin_memory
            )
        return self._buffers[key]

    def denoise(self, frame: np.ndarray) -> np.ndarray:
        """One 2-D frame in, its float32 denoised version out."""
        return next(iter(self.stream([frame])))

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Denoise 2-D frames in order; tiles of consecutive frames share batches. Yields float32 frames."""
        in_flight: deque[_Stitcher] = deque()  # frames with tiles not yet all blended, oldest first
        owners: list[_Stitcher] = []  # owner frame of each tile in the pending batch
        shape: tuple[int, int] | None = None  # the tile shape of the pending batch
        tensor = torch.empty(0)  # its buffer (:meth:`_buffer`), and the same memory as numpy
        buf = tensor.numpy()

        def run_batch() -> Iterator[np.ndarray]:
            n = len(owners)
            batch = tensor[:n]
            with torch.inference_mode():
                result = self.model_fn(batch).detach().to("cpu", torch.float32).numpy()
            if result.shape != tuple(batch.shape):
                raise ValueError(f"model returned shape {tuple(result.shape)} for input {tuple(batch.shape)}")
            for i, owner in enumerate(owners):
                owner.add(result[i, 0])
            self.tiles_run += n
            owners.clear()
            while in_flight and in_flight[0].done:
                yield in_flight.popleft().out

        for frame in frames:
            if frame.ndim != 2:
                raise ValueError(f"expected a 2-D frame, got shape {frame.shape}")
            plan = self.plan(*frame.shape)
            stitcher = _Stitcher(plan)
            in_flight.append(stitcher)
            if (plan.tile_h, plan.tile_w) != shape:
                if owners:
                    yield from run_batch()
                shape = (plan.tile_h, plan.tile_w)
                tensor = self._buffer(*shape)
                buf = tensor.numpy()
            for y in plan.ys:
                for x in plan.xs:
                    buf[len(owners), 0] = frame[y : y + plan.tile_h, x : x + plan.tile_w]
                    owners.append(stitcher)
                    if len(owners) == len(tensor):
                        yield from run_batch()
            del frame  # tiles are copied: the input frame may go before its output is done
        if owners:
            yield from run_batch()
