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
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from emdenoise import __version__
from emdenoise.evaluation import consistency
from emdenoise.inference import resample
from emdenoise.inference.tiling import Tiler
from emdenoise.io import micrographs, modelfile
from emdenoise.outputs import atomic_path, sha256_file
from emdenoise.runtime import device as runtime


class Denoiser:
    """A trained model ready to use on raw images: normalise in, run the model, de-normalise out.

        den = Denoiser.from_file("workspace/models/unet/em_denoise_model.h5", device="cpu", precision="fp32")
        clean = den.denoise(noisy)        # (B, 1, H, W) raw units -> (B, 1, H, W) raw units, float32

    The output is float32 on the input's device. The model is put in eval mode and channels_last layout.
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


class Progress(Protocol):
    """What :func:`denoise_file` reports each finished frame to (a tqdm bar fits)."""

    def update(self, n: int = 1) -> Any: ...


def denoise_file(
    src: micrographs.InputFile,
    dest: Path,
    tiler: Tiler,
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
        "definition": "Poisson deviance of the input counts given the output (emdenoise.evaluation.consistency); "
        "count scale estimated from each input frame",
        "max_deviation": max_deviation,
        "inconsistent": bool(flagged),
        "inconsistent_frames": flagged,
        "worst_deviation": max((c["deviation"] for c in checks if c["deviation"] is not None), default=None),
        "frames": checks,
    }


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


class FileDenoiser:
    """One model file applied to whole micrograph files: each file's frames stream through a :class:`Tiler`
    (``tile_size`` tiles overlapping by ``overlap`` pixels, ``batch_size`` tiles per model call) straight into
    the output file. The first call warms the model up (one batch, outside the timing)."""

    def __init__(
        self,
        model_file: Path,
        device: torch.device,
        precision: str,
        tile_size: int,
        overlap: int,
        batch_size: int,
        *,
        pixel_size: float = 0.0,
        rescale: str = "auto",
        scale_tolerance: float = 0.05,
        log: logging.Logger | None = None,
    ):
        self.denoiser = Denoiser.from_file(model_file, device, precision)
        self.log = log
        self.scale = (pixel_size, rescale, scale_tolerance)  # see emdenoise.inference.resample.plan
        self.model_file = Path(model_file)
        self.model_sha256 = sha256_file(model_file)
        self.settings = {
            "tile_size": tile_size,
            "tile_overlap": overlap,
            "batch_size": batch_size,
            "device": str(device),
            "precision": precision,
            "pixel_size": pixel_size,
            "rescale": rescale,
            "scale_tolerance": scale_tolerance,
        }
        self.tiler = Tiler(self.denoiser.denoise, tile_size, overlap, batch_size, pin_memory=device.type == "cuda")
        meta = self.denoiser.meta
        self.model_info = {
            "name": self.denoiser.name,
            "file": str(model_file),
            "sha256": self.model_sha256,
            "options": meta.get("options"),
            "normalisation": meta.get("normalisation"),
            "trained_with": meta.get("emdenoise_version"),
            "pixel_size": self.model_pixel_size,
        }
        self._warm = False

    @property
    def model_pixel_size(self) -> float | None:
        """A/px of the model's training data (meta ``pixel_size``; None in older files or without calibration)."""
        value = self.denoiser.meta.get("pixel_size")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None

    def samplings(self, src: micrographs.InputFile) -> list[resample.Sampling]:
        """How each image of ``src`` is brought to the model's sampling (see :mod:`emdenoise.inference.resample`)."""
        given, rescale, tolerance = self.scale
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
            **{
                key: self.settings[key]
                for key in ("tile_size", "tile_overlap", "precision", "pixel_size", "rescale", "scale_tolerance")
            },
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
        if not self._warm:
            plan = self.tiler.plan(*frame_shape)
            self.denoiser.denoise(torch.zeros(1, 1, plan.tile_h, plan.tile_w))
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
            checks.append(consistency.check(frame, output, None, max_deviation).summary())

        with micrographs.open_input(path) as src:
            samplings = self.samplings(src)
            self._warm_up(samplings[0].shape)
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
                "model": self.model_info,
                "settings": self.settings,
            }
            start = time.perf_counter()
            frames = denoise_file(
                src,
                dest,
                self.tiler,
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
