"""The image arrays every reader returns (:class:`ImageArray`, in an open :class:`InputFile`) and the checks of
their shape and type (:func:`check_array`), and the base of every writer (:class:`Writer`), shared by
:mod:`emdenoise.io.readers`, :mod:`emdenoise.io.microscope` and the writers (:mod:`emdenoise.io.writers`). See
:mod:`emdenoise.io.micrographs` for the formats."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from emdenoise.errors import InputError
from emdenoise.io import budget
from emdenoise.layout import check_frame_pixels

MIN_SIDE = 16  # a frame must be at least this many pixels high and wide


@dataclass
class ImageArray:
    """One image or stack in an input file. Frames are the last two axes; leading axes are flattened."""

    name: str  # "" for a file's only image, else the dataset/series name
    shape: tuple[int, ...]  # (H, W), (N, H, W), or more leading axes for TIFF
    dtype: np.dtype
    read: Callable[[int], np.ndarray] = field(repr=False)  # frame index -> 2-D array
    pixel_size: float | None = None  # Angstrom per pixel from the file's calibration; None: unknown
    calibration: str = "none found"  # where pixel_size came from, for the log and the provenance

    @property
    def frames(self) -> int:
        return math.prod(self.shape[:-2])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def label(self, path: Path) -> str:
        return f"{path}:{self.name}" if self.name else str(path)


class Closing:
    """Used in a ``with`` block, closed at its end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class InputFile(Closing):
    """An open input file: its images, plus what the writer needs to keep (resolution, labels ...)."""

    path: Path
    fmt: str
    images: list[ImageArray]
    info: dict[str, Any] = field(default_factory=dict)
    closers: ExitStack = field(default_factory=ExitStack, repr=False)

    @property
    def frames(self) -> int:
        return sum(image.frames for image in self.images)

    def close(self) -> None:
        self.closers.close()

    def iter_frames(self, image: ImageArray) -> Iterator[np.ndarray]:
        """The frames of ``image`` in order; a frame that cannot be read or is not finite is an InputError."""
        for i in range(image.frames):
            where = image.label(self.path)
            what = f"frame {i}" if image.frames > 1 else None
            try:
                frame = np.asarray(image.read(i))
            except Exception as exc:  # truncated or corrupt data: name the file and the frame
                raise InputError.at(where, what, f"cannot read the pixel data ({reason(exc)})") from None
            if frame.dtype.kind == "f" and not np.isfinite(frame).all():
                raise InputError.at(where, what, "expected finite pixel values, found NaN or infinity")
            yield frame


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


def check_array(path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype, ndims: tuple[int, ...]) -> None:
    """Raise InputError unless ``shape``/``dtype`` describe real-valued frames we can denoise."""
    where = f"{path}:{name}" if name else path
    if len(shape) not in ndims:
        dims = " or ".join(f"{n}-D" for n in ndims)
        raise InputError.at(where, None, f"expected a {dims} image array, got shape {tuple(shape)}")
    if dtype.kind not in "uif":
        raise InputError.at(where, None, f"expected integer or real pixel values, got dtype {dtype}")
    if min(shape[-2:]) < MIN_SIDE:
        raise InputError.at(
            where, None, f"expected frames of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {shape[-2]}x{shape[-1]}"
        )
    if 0 in shape:
        raise InputError.at(where, None, f"expected at least one frame, got shape {tuple(shape)}")
    check_frame_pixels(where, None, *shape[-2:])
    check_frame_budget(where, "shape", shape, dtype)


def frame_bytes(height: int, width: int, dtype: np.dtype) -> int:
    """The memory one frame takes while it is read and denoised: its pixels at least as float32."""
    return height * width * max(np.dtype(dtype).itemsize, 4)


def check_frame_budget(where: str | Path, field: str | None, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse frames of ``shape`` (the last two axes) larger than the memory budget (:mod:`emdenoise.io.budget`)."""
    h, w = shape[-2:]
    budget.check(where, field, frame_bytes(h, w, dtype), f"frames of {h}x{w} {np.dtype(dtype)} (shape {tuple(shape)})")


def describe(src: InputFile) -> str:
    """``"3 frames of 96x80"``: the frames of ``src`` and their sizes, for the log."""
    shapes = {image.frame_shape for image in src.images}
    size = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
    return f"{src.frames} frame{'s' if src.frames != 1 else ''} of {size}"


class Writer(Closing):
    """Writes the denoised images of one input file into ``dest`` (a temporary path), in the input's format.

    Use as a context manager; call :meth:`write` once per image of ``source.images``, in order.
    ``provenance`` is a JSON-able dict stored inside the file where the format has room for it.
    """

    def __init__(self, dest: Path, source: InputFile, provenance: dict[str, Any]):
        self.dest = dest
        self.source = source
        self.provenance = provenance
        self._stack = ExitStack()
        self.open()

    def open(self) -> None:
        """Create the output file (formats that write everything in :meth:`write` need nothing here)."""

    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stack.close()
