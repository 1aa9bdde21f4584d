"""Inference: :class:`Denoiser`, a trained model ready to use on raw images, and :class:`FileDenoiser`, the
frame-streaming engine of the denoise task (open a micrograph file, cut its frames into tiles, batch them
through the model, write the output in the input's format with its provenance).

The test, denoise and study tasks and the training engine's validation use :class:`Denoiser`; the tiling of
large frames is :mod:`emdenoise.inference.tiling`, the formats :mod:`emdenoise.io.micrographs`.

    engine = FileDenoiser(model_file, device, "fp32", tile_size=256, overlap=32, batch_size=8)
    if not engine.up_to_date(out, engine.fingerprint(path)):
        result = engine.denoise(path, out)       # out written atomically; result.record is its sidecar
        write_json_atomic(sidecar_of(out), result.record)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from emdenoise import __version__
from emdenoise.classical.filters import NotCounts
from emdenoise.data.card import pixel_size_or_none
from emdenoise.errors import InputError
from emdenoise.evaluation import consistency
from emdenoise.inference import levels, resample
from emdenoise.inference.tiling import Tiler
from emdenoise.io import micrographs, modelfile
from emdenoise.method import Context, Kind, Method
from emdenoise.outputs import atomic_path, sha256_file
from emdenoise.runtime import device as runtime


class Denoiser:
    """A trained model ready to use on raw images: normalise in, run the model, de-normalise out.

        den = Denoiser.from_file("workspace/models/unet/em_denoise_model.h5", device="cpu", precision="fp32")
        clean = den.denoise(noisy)        # (B, 1, H, W) raw units -> (B, 1, H, W) raw units, float32

    The output is float32 on the input's device. The model is put in eval mode and channels_last layout. A model
    trained with ``train.condition`` comes from its file wrapped (:mod:`emdenoise.models.conditioning`): the
    conditioning runs inside the model, as in training.
    """

    def __init__(
        self, model: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu", precision: str = "fp32"
    ):
        if precision not in runtime.PRECISIONS:
            raise ValueError(f"precision must be one of {runtime.PRECISIONS} (resolve 'auto' first)")
        self.device = torch.device(device)
        self.precision = precision
        self.meta = meta
        # Module.to takes memory_format (torch's stubs do not say so)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        norm = meta["normalisation"]
        self._in = (float(norm["noisy"]["mean"]), float(norm["noisy"]["std"]))
        self._out = (float(norm["clean"]["mean"]), float(norm["clean"]["std"]))

    @property
    def name(self) -> str:
        return str(self.meta["model"])

    def max_pixels(self, budget_bytes: int) -> int:
        """How many input pixels one model call may hold within ``budget_bytes``: about four float32 maps of the
        model's widest convolution live at once under inference mode (an estimate, on the safe side)."""
        widest = max(
            (m.out_channels for m in self.model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))),
            default=64,
        )
        return max(1, budget_bytes // (4 * 4 * widest))

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> Denoiser:
        model, meta = modelfile.load_model(path, device)
        return cls(model, meta, device, precision)

    def denoise(self, noisy: torch.Tensor) -> torch.Tensor:
        if noisy.dim() != 4 or noisy.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, H, W) tensor, got shape {tuple(noisy.shape)}")
        with torch.inference_mode():
            x = noisy.to(self.device, torch.float32)
            x = ((x - self._in[0]) / self._in[1]).contiguous(memory_format=torch.channels_last)
            with runtime.autocast(self.device, self.precision):
                y = self.model(x)
            y = y.float() * self._out[1] + self._out[0]
            return y.contiguous().to(noisy.device)


DEFAULT_MEMORY_MB = 2048  # denoise.memory_mb's default: frames whose model activations fit go through whole


class DeepMethod:
    """A trained model as a :class:`emdenoise.method.Method`: frames through the :class:`Tiler` (whole frames
    where ``memory_mb`` allows with ``tile_size=0``), the model's own normalisation. ``stream`` is the same for an
    iterable of frames, batched across frames (what :class:`FileDenoiser` uses)."""

    kind: Kind = "deep"

    def __init__(self, denoiser: Denoiser, tiling: Tiling, file: Path | None = None):
        self.denoiser = denoiser
        self.name = denoiser.name
        self.file = file
        self.sha256 = sha256_file(file) if file is not None else ""
        budget = denoiser.max_pixels(tiling.memory_mb * 2**20) if not tiling.tile_size and tiling.memory_mb else 0
        self.tiler = Tiler(
            denoiser.denoise,
            tiling.tile_size,
            tiling.overlap,
            tiling.batch_size,
            pin_memory=denoiser.device.type == "cuda",
            max_pixels=budget,
        )
        self.settings: Mapping[str, Any] = {"file": str(file) if file else None, **tiling.record()}
        # a model trained on counts / dose (or / mean) sees each frame at that level, its output brought back
        self.levels = levels.wanted(denoiser.meta, tiling.frame_level)

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device, precision: str, tiling: Tiling) -> DeepMethod:
        return cls(Denoiser.from_file(path, device, precision), tiling, Path(path))

    @property
    def pixel_size(self) -> float | None:
        """A/px of the model's training data (meta ``pixel_size``; None in older files or without calibration)."""
        value = self.denoiser.meta.get("pixel_size")
        return pixel_size_or_none(value)

    @property
    def pixel_range(self) -> list[float] | None:
        """[min, max] A/px of the model's training data (meta ``pixel_size_range``; None in older files)."""
        return self.denoiser.meta.get("pixel_size_range")

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return levels.stream(frames, self.tiler.stream, self.levels) if self.levels else self.tiler.stream(frames)

    def __call__(self, frames: np.ndarray, context: Context) -> np.ndarray:
        frames = np.asarray(frames, np.float32)
        return np.stack(list(self.stream(frames))) if len(frames) else frames.copy()

    def info(self) -> dict[str, Any]:
        """The provenance's ``model``."""
        meta = self.denoiser.meta
        return {
            "name": self.name,
            "kind": self.kind,
            "file": str(self.file),
            "sha256": self.sha256,
            "options": meta.get("options"),
            "normalisation": meta.get("normalisation"),
            "condition": meta.get("condition", "none"),
            "trained_with": meta.get("emdenoise_version"),
            "pixel_size": self.pixel_size,
            "input_units": meta.get("input_units"),
        }

    def warm_up(self, frame_shape: tuple[int, int]) -> None:
        plan = self.tiler.plan(*frame_shape)
        self.denoiser.denoise(torch.zeros(1, 1, plan.tile_h, plan.tile_w))


@dataclass(frozen=True)
class Tiling:
    """How a trained model is applied to frames (the ``denoise`` section's tile_size, tile_overlap, batch_size,
    memory_mb and frame_level)."""

    tile_size: int = 0
    overlap: int = 32
    batch_size: int = 8
    memory_mb: int = DEFAULT_MEMORY_MB
    frame_level: str = "auto"  # denoise.frame_level (emdenoise.inference.levels)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tile_size": self.tile_size, "tile_overlap": self.overlap, "batch_size": self.batch_size}
        if not self.tile_size:
            out["memory_mb"] = self.memory_mb  # decides whole frames or tiles only when tile_size is 0
        out["frame_level"] = self.frame_level
        return out


class Streams(Protocol):
    """What :func:`denoise_file` sends frames through (a :class:`Tiler`, a :class:`DeepMethod`, a
    :class:`PerFrame`)."""

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]: ...


class Progress(Protocol):
    """What :func:`denoise_file` reports each finished frame to (a tqdm bar fits)."""

    def update(self, n: int = 1) -> Any: ...


def denoise_file(
    src: micrographs.InputFile,
    dest: Path,
    tiler: Streams,
    provenance: dict[str, Any],
    bar: Progress | None = None,
    samplings: list[resample.Sampling] | None = None,
    on_frame: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> int:
    """Denoise every image of ``src`` into ``dest`` (same format, written atomically), frame by frame.
    Returns the number of frames; ``bar`` advances once per frame. ``samplings`` (one per image, see
    :mod:`emdenoise.inference.resample`) bring the frames to the model's sampling and back; ``on_frame(input,
    output)`` is called for every frame on the input's grid (the consistency check)."""
    count = 0
    pending: deque[np.ndarray] = deque()

    def tapped(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            if on_frame is not None:
                pending.append(frame)
            yield frame

    def paired(outputs: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for output in outputs:
            if on_frame is not None:
                on_frame(pending.popleft(), output)
            yield output

    def counted(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal count
        for frame in frames:
            count += 1
            if bar is not None:
                bar.update(1)
            yield frame

    with atomic_path(dest) as tmp, micrographs.open_output(tmp, src, provenance) as writer:
        for k, image in enumerate(src.images):
            frames = tapped(src.iter_frames(image))
            if samplings is None:
                outputs = tiler.stream(frames)
            else:
                outputs = samplings[k].up(tiler.stream(samplings[k].down(frames)))
            writer.write(image, counted(paired(outputs)))
    return count


def consistency_record(checks: list[dict[str, Any]], max_deviation: float) -> dict[str, Any]:
    """The sidecar's ``consistency``: each frame's deviance check and the frames flagged."""
    flagged = [i for i, c in enumerate(checks) if c["inconsistent"]]
    return {
        "definition": "the input counts given the output (emdenoise.evaluation.consistency, summary version "
        f"{consistency.SUMMARY_VERSION}: deviance, structure and lattice tests); count scale from each input frame",
        "max_deviation": max_deviation,
        "inconsistent": bool(flagged),
        "inconsistent_frames": flagged,
        "worst_deviation": max((c["deviation"] for c in checks if c["deviation"] is not None), default=None),
        "frames": checks,
    }


DETECTOR_SIDE = 1024  # the detector model of a larger frame is fitted to its central square of this side


def detector_records(src: micrographs.InputFile) -> list[dict[str, Any]]:
    """The provenance's ``detector``: for each image of ``src``, the photon-transfer model of its first frame
    (offset, gain ... in the input's units: :func:`emdenoise.classical.detector.describe`; the central
    :data:`DETECTOR_SIDE` px square of larger frames, a quarter of a second), or why none fits. It says how the
    input's values relate to electron counts; the denoising itself does not use it."""
    from emdenoise.classical.detector import describe

    records = []
    for image in src.images:
        first = next(iter(src.iter_frames(image)), None)
        if first is None:
            records.append({"image": image.name, "frame": 0, "refused": "no frame"})
            continue
        top, left = (max((n - DETECTOR_SIDE) // 2, 0) for n in first.shape[-2:])
        region = first[..., top : top + DETECTOR_SIDE, left : left + DETECTOR_SIDE]
        where = {"region": [top, left, *region.shape[-2:]]}
        records.append({"image": image.name, "frame": 0, **where, **describe(region)})
    return records


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Denoised:
    """What :meth:`FileDenoiser.denoise` did to one file. ``record`` is what the output's sidecar holds: the
    provenance, the output, frames, seconds, frames_per_s and the fingerprint."""

    record: dict[str, Any]
    shapes: str  # "3 frames of 96x80", for the log

    @property
    def frames(self) -> int:
        return int(self.record["frames"])

    @property
    def seconds(self) -> float:
        return float(self.record["seconds"])


class PerFrame:
    """Any :class:`Method` as a frame stream: each frame through ``method(frame[None], context)``."""

    def __init__(self, method: Method):
        self.method = method
        self.context = Context()
        self.where: str | Path = "frames"  # the file being denoised, for messages
        self.tiles_run = 0

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            try:
                out = self.method(np.asarray(frame, np.float32)[None], self.context)[0]
            except NotCounts as exc:  # a beam-aware filter given values that cannot be counts
                raise InputError.at(
                    self.where,
                    "denoise.method",
                    f"{self.method.name} needs frames of counts: {exc}; use a filter that takes any values "
                    "(gaussian, median, tv, nlm) or a trained model",
                ) from None
            self.tiles_run += 1
            yield np.asarray(out, np.float32)


class FileDenoiser:
    """One :class:`Method` applied to whole micrograph files: each file's frames stream through it straight into
    the output file. A model file (or a :class:`DeepMethod`) goes through a :class:`Tiler` (whole frames within
    ``memory_mb`` when ``tile_size`` is 0, else ``tile_size`` tiles overlapping by ``overlap`` pixels;
    ``batch_size`` tiles per model call), resampled to the model's pixel size; any other method (a classical
    filter) takes each frame whole, at its own sampling. The first call warms a model up (outside the timing)."""

    def __init__(
        self,
        method: str | Path | Method,
        device: torch.device,
        precision: str,
        tile_size: int = 0,
        overlap: int = 32,
        batch_size: int = 8,
        *,
        pixel_size: float = 0.0,
        rescale: str = "auto",
        scale_tolerance: float = 0.05,
        log: logging.Logger | None = None,
        memory_mb: int = DEFAULT_MEMORY_MB,
        frame_level: str = "auto",
    ):
        if isinstance(method, (str, Path)):
            tiling = Tiling(tile_size, overlap, batch_size, memory_mb, frame_level)
            method = DeepMethod.from_file(method, device, precision, tiling)
        assert isinstance(method, Method)
        self.method = method
        self.log = log
        self.scale = (pixel_size, rescale, scale_tolerance)  # see emdenoise.inference.resample.plan
        scale = {"pixel_size": pixel_size, "rescale": rescale, "scale_tolerance": scale_tolerance}
        if isinstance(method, DeepMethod):
            self.engine: DeepMethod | PerFrame = method
            self.model_info = method.info()
            run = {k: v for k, v in method.settings.items() if k != "file"}
            self.settings = {**run, "device": str(device), "precision": precision, **scale}
        else:
            self.engine = PerFrame(method)
            settings = dict(method.settings)
            digest = hashlib.sha256(json.dumps([method.name, settings], sort_keys=True, default=str).encode())
            self.model_info = {"name": method.name, "kind": method.kind, "settings": settings}
            self.model_info["sha256"] = digest.hexdigest()
            self.settings = {"pixel_size": pixel_size}
        self.model_sha256 = str(self.model_info["sha256"])
        self._warm = False

    @property
    def denoiser(self) -> Denoiser | None:
        return self.method.denoiser if isinstance(self.method, DeepMethod) else None

    @property
    def tiler(self) -> Tiler | None:
        return self.method.tiler if isinstance(self.method, DeepMethod) else None

    @property
    def tiles_run(self) -> int:
        """Tiles (or whole frames) sent through the method so far."""
        return self.engine.tiler.tiles_run if isinstance(self.engine, DeepMethod) else self.engine.tiles_run

    @property
    def model_pixel_size(self) -> float | None:
        """A/px of the model's training data (None: unknown, or not a trained model)."""
        return self.method.pixel_size if isinstance(self.method, DeepMethod) else None

    def samplings(self, src: micrographs.InputFile) -> list[resample.Sampling]:
        """How each image of ``src`` is brought to the model's sampling (see :mod:`emdenoise.inference.resample`);
        a classical filter takes every frame at its own sampling."""
        given, rescale, tolerance = self.scale
        if not isinstance(self.method, DeepMethod):
            return [
                resample.Sampling(
                    "native",
                    given or image.pixel_size,
                    "denoise.pixel_size" if given else image.calibration,
                    None,
                    image.frame_shape,
                    image.frame_shape,
                    "a classical filter: frames at their own sampling",
                )
                for image in src.images
            ]
        return [
            resample.plan(
                image.label(src.path),
                image.frame_shape,
                image.pixel_size,
                image.calibration,
                self.model_pixel_size,
                given,
                rescale,
                tolerance,
                self.log,
                self.method.pixel_range,
            )
            for image in src.images
        ]

    def fingerprint(self, path: Path) -> dict[str, Any]:
        """What decides the output of input ``path``: an output is reused only when all of it matches."""
        stat = path.stat()
        return {
            "input_bytes": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns,
            "model_sha256": self.model_sha256,
            **{key: value for key, value in self.settings.items() if key not in ("batch_size", "device")},
        }

    @staticmethod
    def up_to_date(out: Path, fingerprint: dict[str, Any]) -> bool:
        """Whether ``out`` and its sidecar are there and the sidecar records ``fingerprint``."""
        sidecar = micrographs.sidecar_of(out)
        if not out.is_file() or not sidecar.is_file():
            return False
        try:
            return bool(json.loads(sidecar.read_text(encoding="utf-8")).get("fingerprint") == fingerprint)
        except (OSError, ValueError, AttributeError):
            return False

    def _warm_up(self, frame_shape: tuple[int, int]) -> None:
        """One-off costs (allocations, kernel choice) stay out of the timing."""
        if not self._warm and isinstance(self.method, DeepMethod):
            self.method.warm_up(frame_shape)
        self._warm = True

    def denoise(
        self,
        path: Path,
        dest: Path,
        final: Path | None = None,
        bar: Progress | None = None,
        max_deviation: float | None = None,
    ) -> Denoised:
        """Denoise the file ``path`` into ``dest`` (written atomically); ``final`` is the name the output will
        have in the end (``dest`` by default; the task writes into a staging folder), as the record names it.
        With ``max_deviation``, every output frame is checked against its input
        (:func:`emdenoise.evaluation.consistency.check`, the count scale estimated from the frame) and the record
        gains ``consistency``."""
        fingerprint = self.fingerprint(path)
        checks: list[dict[str, Any]] = []

        def check_frame(frame: np.ndarray, output: np.ndarray) -> None:
            assert max_deviation is not None
            summary = consistency.check(frame, output, None, max_deviation).summary()
            # an empty frame (no counts) has no measurable deviation: null in the JSON, not NaN
            checks.append({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()})

        with micrographs.open_input(path) as src:
            samplings = self.samplings(src)
            self._warm_up(samplings[0].shape)
            if isinstance(self.engine, PerFrame):
                self.engine.context = Context(pixel_size=samplings[0].input_pixel_size)
                self.engine.where = path
            provenance = {
                "emdenoise_version": __version__,
                "created": _now(),
                "input": {
                    "file": str(path),
                    "format": src.fmt,
                    "images": [
                        {"name": im.name, "shape": list(im.shape), "dtype": str(im.dtype), "pixel_size": im.pixel_size}
                        for im in src.images
                    ],
                    "metadata": src.info.get("metadata"),
                },
                "sampling": [sampling.record() for sampling in samplings],
                "detector": detector_records(src),
                "model": self.model_info,
                "settings": self.settings,
            }
            start = time.perf_counter()
            frames = denoise_file(
                src,
                dest,
                self.engine,
                provenance,
                bar,
                samplings,
                check_frame if max_deviation is not None else None,
            )
            seconds = time.perf_counter() - start
            shapes = micrographs.describe(src)
        record = {
            **provenance,
            "output": {
                "file": str(final or dest),
                "format": micrographs.output_format(src.fmt),
                "dtype": "float32" if src.fmt != "png" else f"uint{src.info['bits']}",
            },
            "frames": frames,
            "seconds": round(seconds, 4),
            "frames_per_s": round(frames / max(seconds, 1e-9), 3),
            "fingerprint": fingerprint,
        }
        if max_deviation is not None:
            record["consistency"] = consistency_record(checks, max_deviation)
        return Denoised(record, shapes)
