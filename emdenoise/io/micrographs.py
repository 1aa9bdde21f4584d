"""Reading micrographs frame by frame, and writing denoised ones in the same format, for the denoise task.

Formats (chosen by the file name's extension, see :data:`FORMATS`):

========  =====================================================  ==============================================
format    read                                                   written
========  =====================================================  ==============================================
TIFF      every series: 8/16/32-bit integer or float, 2-D or     float32, the same series shapes, resolution
          stacks (any leading axes); page by page, or memory-     tags kept; provenance in the ImageDescription
          mapped when the data are contiguous                    JSON (key ``emdenoise``)
PNG       8- or 16-bit grayscale                                 the same bit depth: values rounded and clipped
                                                                 to 0..255 or 0..65535 (PNG holds no floats);
                                                                 provenance in a tEXt chunk ``emdenoise``
NPY       2-D or 3-D numeric, memory-mapped                      float32 .npy, filled through a memory map
HDF5      every 2-D or 3-D numeric dataset with sides >= 16      the same tree: those datasets as float32
                                                                 (chunked by frame), other datasets copied
                                                                 unchanged, attributes kept; provenance JSON in
                                                                 the attribute ``emdenoise_provenance`` (root
                                                                 and each denoised dataset)
MRC       2-D images, image stacks and volumes (modes 0, 1, 2,   mode 2 (float32) via a memory map; voxel size,
          6, 12), memory-mapped with ``mrcfile`` (strict         origin, stack/volume flag and labels kept, a
          header checks)                                         provenance label added, header statistics set
DM3/DM4,  through rosettasciio (optional extra ``formats``), see      DM/SER: float32 TIFF ``<name>.dm4.tif`` with
EMD, SER  :mod:`emdenoise.io.microscope`                             resolution tags; EMD: Berkeley EMD
========  =====================================================  ==============================================

Every image carries its pixel size in A/px (:attr:`ImageArray.pixel_size`, None when the file has none) and
where it came from: TIFF OME ``PhysicalSizeX``, ImageJ ``unit`` with the resolution tags, or resolution tags in
cm/mm/um (inches are a print resolution, not a calibration); the MRC voxel size; an HDF5 ``pixel_size``
attribute (A/px, or in the unit of ``pixel_size_unit``) on the dataset or a group above it; the DM/EMD/SER axes.
:func:`output_path` names the output (``.tif`` appended where the output format differs from the input's).

Each readable array is an :class:`ImageArray` whose frames (the last two axes) are read one at a time, so a
long stack never sits in memory; a frame larger than :data:`emdenoise.layout.MAX_FRAME_PIXELS` is refused from
the header, before any pixel is read. Writers consume an iterator of float32 frames and write them straight into
the output (a temporary file the caller renames into place). An HDF5 input is probed in a child process before
it is opened (:func:`emdenoise.io.h5safe.open_foreign`): a file that would crash libhdf5 is one InputError.

Beside each output the denoise task writes its sidecar, ``<output name>.json`` (:func:`sidecar_of`): the
provenance and the fingerprint that decides whether a rerun may keep the output
(:class:`emdenoise.inference.denoiser.FileDenoiser`). :func:`find_inputs` selects the input files of a folder and
:func:`read_headers` opens each one's header, so that a bad file fails a run before any work.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np

from emdenoise.errors import InputError
from emdenoise.io import h5safe
from emdenoise.layout import check_frame_pixels

FORMATS: dict[str, str] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".npy": "npy",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".mrc": "mrc",
    ".mrcs": "mrc",
    ".dm3": "dm",
    ".dm4": "dm",
    ".emd": "emd",
    ".ser": "ser",
}
# files that only describe others: TIA's .emi holds the metadata of the .ser files beside it (not an input)
COMPANIONS = {".emi"}
MIN_SIDE = 16  # a frame must be at least this many pixels high and wide
PROVENANCE_KEY = "emdenoise"
SIDECAR_SUFFIX = ".json"


def format_of(path: Path) -> str | None:
    """The format name for ``path``'s extension, or None when it is not one we read."""
    return FORMATS.get(path.suffix.lower())


def sidecar_of(out: Path) -> Path:
    """The sidecar of the output ``out``: ``<out's name>.json`` beside it."""
    return out.with_name(out.name + SIDECAR_SUFFIX)


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


class _Closing:
    """Used in a ``with`` block, closed at its end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class InputFile(_Closing):
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
                raise InputError.at(where, what, f"cannot read the pixel data ({_reason(exc)})") from None
            if frame.dtype.kind == "f" and not np.isfinite(frame).all():
                raise InputError.at(where, what, "expected finite pixel values, found NaN or infinity")
            yield frame


def _reason(exc: BaseException) -> str:
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


def describe(src: InputFile) -> str:
    """``"3 frames of 96x80"``: the frames of ``src`` and their sizes, for the log."""
    shapes = {image.frame_shape for image in src.images}
    size = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
    return f"{src.frames} frame{'s' if src.frames != 1 else ''} of {size}"


# ---------------------------------------------------------------------------------------------------- inputs


def find_inputs(input_dir: Path, pattern: str, output_dir: Path, log: logging.Logger) -> list[Path]:
    """The supported files matching ``pattern`` in ``input_dir``, sorted; hidden files and ``output_dir``
    (when it lies inside ``input_dir``) left out; other extensions skipped with one warning. Errors name the
    denoise task's fields (``input_dir``, ``output_dir``, ``denoise.pattern``)."""
    if not input_dir.is_dir():
        raise InputError.at(input_dir, "input_dir", "expected a folder of images, not found")
    if input_dir.resolve() == output_dir.resolve():
        raise InputError.at(
            output_dir,
            "output_dir",
            "expected a folder other than input_dir (outputs keep the input names and would overwrite them)",
        )
    try:
        matched = sorted(p for p in input_dir.glob(pattern) if p.is_file())
    except (ValueError, NotImplementedError) as exc:  # e.g. an absolute or malformed pattern
        raise InputError.at(
            "parameters", "denoise.pattern", f"expected a glob relative to input_dir ({exc}), got {pattern!r}"
        ) from None
    out_resolved = output_dir.resolve()
    files: list[Path] = []
    skipped: list[Path] = []
    for path in matched:
        rel = path.relative_to(input_dir)
        if any(part.startswith(".") for part in rel.parts) or out_resolved in path.resolve().parents:
            continue
        if path.suffix.lower() in COMPANIONS:  # read with the files they describe
            continue
        (files if format_of(path) else skipped).append(path)
    supported = " ".join(sorted(FORMATS))
    if skipped:
        names = ", ".join(str(p.relative_to(input_dir)) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        log.warning(
            "skipping %d file(s) with unsupported extensions: %s%s (supported: %s)",
            len(skipped),
            names,
            more,
            supported,
        )
    if not files:
        raise InputError.at(
            input_dir,
            "denoise.pattern",
            f"expected image files matching {pattern!r} (extensions {supported}), found none",
        )
    return files


def read_headers(paths: Iterable[Path], log: logging.Logger) -> dict[Path, int]:
    """Open every file's header (no pixel data): ``{path: frames}``; the first bad file is an InputError.
    What a header reader only warns about (an MRC header's inconsistencies) goes to ``log``."""
    frames = {}
    for path in paths:
        with open_input(path) as src:
            frames[path] = src.frames
            for problem in src.info.get("warnings", []):
                log.warning("%s: header: %s", path, problem)
    return frames


# ---------------------------------------------------------------------------------------------------- readers


def open_input(path: Path) -> InputFile:
    """Open ``path`` for reading (headers only: pixel data are read frame by frame later)."""
    fmt = format_of(path)
    if fmt is None:
        raise InputError.at(
            path, None, f"unknown extension {path.suffix!r}; expected one of {', '.join(sorted(FORMATS))}"
        )
    # The reader opens what it keeps open on ``stack``; a reader that fails (a refused header, a damaged file)
    # leaves nothing open behind it, and the InputFile closes the rest when it is closed.
    with ExitStack() as stack:
        try:
            opened = _READERS[fmt](path, stack)
        except InputError:
            raise
        except Exception as exc:
            raise InputError.at(path, None, f"not a readable {fmt.upper()} file ({_reason(exc)})") from None
        opened.closers = stack.pop_all()
        return opened


def _read_tiff(path: Path, stack: ExitStack) -> InputFile:
    import tifffile

    tif = stack.enter_context(tifffile.TiffFile(path))
    images = []
    for k, series in enumerate(tif.series):
        name = f"series {k}" if len(tif.series) > 1 else ""
        shape, axes = tuple(series.shape), series.axes
        if "S" in axes and shape[axes.index("S")] > 1:
            raise InputError.at(
                path,
                name or None,
                f"expected grayscale images, got {shape[axes.index('S')]} samples per pixel (axes {axes})",
            )
        shape = tuple(n for n, a in zip(shape, axes) if a != "S")
        check_array(path, name, shape, np.dtype(series.dtype), tuple(range(2, 9)))
        frames = math.prod(shape[:-2])
        if len(series.pages) == frames:
            read = _page_reader(series.pages, shape[-2:])
        elif series.dataoffset is not None:  # e.g. ImageJ's one-header hyperstacks: contiguous raw data
            mm = tifffile.memmap(path, series=k, mode="r").reshape(frames, *shape[-2:])
            read = mm.__getitem__
        else:
            raise InputError.at(path, name or None, "unsupported TIFF layout (pages do not map to frames)")
        images.append(ImageArray(name, shape, np.dtype(series.dtype), read))
    if not images:
        raise InputError.at(path, None, "expected at least one image, found none")
    keyframe = tif.series[0].keyframe
    info: dict[str, Any] = {}
    if "XResolution" in keyframe.tags and "YResolution" in keyframe.tags:
        info["resolution"] = tuple(keyframe.resolution)
        info["resolutionunit"] = keyframe.resolutionunit
    pixel, source = _tiff_pixel_size(tif, keyframe)
    for image in images:
        image.pixel_size, image.calibration = pixel, source
    return InputFile(path, "tiff", images, info)


_TIFF_UNITS = {3: "cm", 4: "mm", 5: "um"}  # ResolutionUnit: 1 none, 2 inch (print dpi: no calibration), 3 cm ...


def _tiff_pixel_size(tif: Any, keyframe: Any) -> tuple[float | None, str]:
    """A/px from the OME-XML PhysicalSizeX, else ImageJ's unit with the resolution tags, else resolution tags in
    centimetres, millimetres or micrometres (inches are a print resolution, not a calibration)."""
    from emdenoise.io.microscope import angstrom

    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        for node in ET.fromstring(tif.ome_metadata).iter():
            if node.tag.endswith("Pixels") and "PhysicalSizeX" in node.attrib:
                ome_unit = node.attrib.get("PhysicalSizeXUnit", "µm")
                size = angstrom(node.attrib["PhysicalSizeX"], ome_unit)
                if size:
                    return size, f"OME PhysicalSizeX ({node.attrib['PhysicalSizeX']} {ome_unit})"
    if "XResolution" not in keyframe.tags:
        return None, "TIFF without resolution tags"
    xres = float(keyframe.resolution[0])
    if xres <= 0:
        return None, "TIFF resolution tag of zero"
    unit: str | None = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if unit:
        unit = unit.replace("\\u00B5", "µ")
        size = angstrom(1.0 / xres, unit)
        return (size, f"ImageJ resolution ({xres:g} pixels per {unit})") if size else (None, f"ImageJ unit {unit!r}")
    name = _TIFF_UNITS.get(int(keyframe.resolutionunit))
    if name is None:
        return (
            None,
            f"TIFF resolution in {keyframe.resolutionunit.name.lower()} (a print resolution, not a calibration)",
        )
    return angstrom(1.0 / xres, name), f"TIFF resolution tags ({xres:g} pixels per {name})"


def _page_reader(pages: Any, frame_shape: tuple[int, ...]) -> Callable[[int], np.ndarray]:
    """Frame ``i`` of a TIFF series whose pages are its frames."""
    return lambda i: pages[i].asarray().reshape(frame_shape)


PNG_MODES = {"L": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 16}


def _read_png(path: Path, stack: ExitStack) -> InputFile:
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "PNG":
            raise InputError.at(path, None, f"expected a PNG file, got {im.format}")
        if im.mode not in PNG_MODES:
            raise InputError.at(path, None, f"expected an 8- or 16-bit grayscale PNG, got mode {im.mode}")
        check_frame_pixels(path, None, im.height, im.width)  # from the header, before decoding
        pixels = np.asarray(im)
        info = {"bits": PNG_MODES[im.mode], "dpi": im.info.get("dpi")}
    if im.mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
        raise InputError.at(path, None, "expected 16-bit grayscale values, got 32-bit ones")
    check_array(path, "", pixels.shape, pixels.dtype, (2,))
    return InputFile(path, "png", [ImageArray("", pixels.shape, pixels.dtype, lambda i: pixels)], info)


def _read_npy(path: Path, stack: ExitStack) -> InputFile:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    check_array(path, "", array.shape, array.dtype, (2, 3))
    read = (lambda i: array) if array.ndim == 2 else array.__getitem__
    return InputFile(path, "npy", [ImageArray("", array.shape, array.dtype, read)])


def _is_image_dataset(obj: Any) -> bool:
    return (
        isinstance(obj, h5py.Dataset)
        and obj.ndim in (2, 3)
        and obj.dtype.kind in "uif"
        and min(obj.shape[-2:]) >= MIN_SIDE
        and obj.size > 0
    )


def _read_hdf5(path: Path, stack: ExitStack) -> InputFile:
    h5 = stack.enter_context(h5safe.open_foreign(path))  # the structure walked in a child process first
    images, others, groups = [], [], []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group):
            groups.append(name)
        elif _is_image_dataset(obj):
            read = (lambda d: (lambda i: d[()]) if d.ndim == 2 else d.__getitem__)(obj)
            images.append(ImageArray(name, tuple(obj.shape), obj.dtype, read))
        else:
            others.append(name)

    h5.visititems(visit)
    for image in images:
        check_frame_pixels(image.label(path), None, *image.frame_shape)
        image.pixel_size, image.calibration = _hdf5_pixel_size(h5, image.name)
    if not images:
        raise InputError.at(
            path,
            None,
            f"expected a 2-D or 3-D numeric dataset with frames of at least {MIN_SIDE}x{MIN_SIDE}, found none",
        )
    return InputFile(path, "hdf5", images, {"h5": h5, "groups": groups, "others": others})


def _hdf5_pixel_size(h5: h5py.File, name: str) -> tuple[float | None, str]:
    """The attribute ``pixel_size`` (A/px, or in the unit of a ``pixel_size_unit`` attribute beside it) of the
    dataset ``name``, else of the nearest group above it."""
    from emdenoise.io.microscope import angstrom

    parts = name.split("/")
    for depth in range(len(parts), -1, -1):
        where = "/".join(parts[:depth]) or "/"
        attrs = h5[where].attrs
        if "pixel_size" in attrs:
            unit = attrs.get("pixel_size_unit", "A")
            unit = unit.decode() if isinstance(unit, bytes) else str(unit)
            value = np.ravel(attrs["pixel_size"])
            size = angstrom(value[0], unit) if value.size and value.dtype.kind in "uif" else None
            label = f"HDF5 attribute {where}:pixel_size"
            return (size, f"{label} ({value[0]} {unit})") if size else (None, f"{label} unreadable")
    return None, "HDF5 without a pixel_size attribute"


def _read_mrc(path: Path, stack: ExitStack) -> InputFile:
    import mrcfile

    # strict mode: a broken header is an error at once (permissive mode would try to read whatever sizes a
    # corrupt header claims); problems mrcfile only warns about are passed on to the log
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mrc = stack.enter_context(mrcfile.mmap(path, mode="r", permissive=False))
    problems = [str(w.message) for w in caught]
    data = mrc.data
    check_array(path, "", data.shape, data.dtype, (2, 3))
    read = (lambda i: data) if data.ndim == 2 else data.__getitem__
    info = {
        "voxel_size": mrc.voxel_size.copy(),
        "origin": mrc.header.origin.copy(),
        "image_stack": data.ndim == 3 and mrc.is_image_stack(),
        "labels": [
            bytes(label).rstrip(b"\0 ").decode("ascii", "replace")
            for label in mrc.header.label[: int(mrc.header.nlabl)]
        ],
        "warnings": problems,
    }
    voxel = float(mrc.voxel_size.x)
    pixel = voxel if math.isfinite(voxel) and voxel > 0 else None
    source = f"MRC voxel size ({voxel:g} A)" if pixel else "MRC voxel size of zero (not calibrated)"
    return InputFile(path, "mrc", [ImageArray("", data.shape, data.dtype, read, pixel, source)], info)


_READERS: dict[str, Callable[[Path, ExitStack], InputFile]] = {
    "tiff": _read_tiff,
    "png": _read_png,
    "npy": _read_npy,
    "hdf5": _read_hdf5,
    "mrc": _read_mrc,
    "dm": lambda path, stack: _microscope().read(path, "dm", stack),
    "emd": lambda path, stack: _microscope().read(path, "emd", stack),
    "ser": lambda path, stack: _microscope().read(path, "ser", stack),
}


def _microscope() -> Any:
    from emdenoise.io import microscope  # imports this module: loaded when first needed

    return microscope


# ---------------------------------------------------------------------------------------------------- writers


class Writer(_Closing):
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


class TiffWriter(Writer):
    def open(self) -> None:
        import tifffile

        nbytes = 4 * sum(math.prod(image.shape) for image in self.source.images)
        self.tw = self._stack.enter_context(tifffile.TiffWriter(self.dest, bigtiff=nbytes > 2**32 - 2**26))

    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        extra = {}
        if "resolution" in self.source.info:
            extra = {"resolution": self.source.info["resolution"], "resolutionunit": self.source.info["resolutionunit"]}
        # an iterator of pages: tifffile writes each one as it comes
        self.tw.write(
            (np.ascontiguousarray(f, np.float32) for f in frames),
            shape=image.shape,
            dtype=np.float32,
            photometric="minisblack",
            metadata={PROVENANCE_KEY: self.provenance},
            **extra,
        )


class PngWriter(Writer):
    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        from PIL import Image, PngImagePlugin

        (frame,) = list(frames)
        bits = self.source.info["bits"]
        dtype = np.uint8 if bits == 8 else np.uint16
        pixels = np.clip(np.rint(frame), 0, np.iinfo(dtype).max).astype(dtype)
        text = PngImagePlugin.PngInfo()
        text.add_text(PROVENANCE_KEY, json.dumps(self.provenance))
        extra = {"dpi": self.source.info["dpi"]} if self.source.info.get("dpi") else {}
        Image.fromarray(pixels).save(self.dest, format="PNG", pnginfo=text, **extra)


class NpyWriter(Writer):
    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        out = np.lib.format.open_memmap(self.dest, mode="w+", dtype=np.float32, shape=image.shape)
        try:
            _reserve(self.dest)
            target = out.reshape(-1, *image.frame_shape)
            for i, frame in enumerate(frames):
                target[i] = frame
            out.flush()
        finally:
            del out


class Hdf5Writer(Writer):
    def open(self) -> None:
        src: h5py.File = self.source.info["h5"]
        self.h5 = self._stack.enter_context(h5py.File(self.dest, "w"))
        _copy_attrs(src.attrs, self.h5.attrs)
        self.h5.attrs["emdenoise_provenance"] = json.dumps(self.provenance)
        for name in self.source.info["groups"]:
            _copy_attrs(src[name].attrs, self.h5.require_group(name).attrs)
        for name in self.source.info["others"]:  # non-image datasets: copied as they are
            parent, _, base = name.rpartition("/")
            src.copy(src[name], self.h5.require_group(parent or "/"), name=base)

    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        src = self.source.info["h5"][image.name]
        h, w = image.frame_shape
        chunks = (1, h, w) if len(image.shape) == 3 and h * w * 4 < 2**31 else True
        dset = self.h5.create_dataset(image.name, shape=image.shape, dtype=np.float32, chunks=chunks)
        _copy_attrs(src.attrs, dset.attrs)
        dset.attrs["emdenoise_provenance"] = json.dumps(self.provenance)
        for i, frame in enumerate(frames):
            if len(image.shape) == 3:
                dset[i] = frame
            else:
                dset[...] = frame


def _reserve(path: Path) -> None:
    """Allocate the blocks of a memory-mapped output now. A new map is a sparse file: on a full disk the first
    write into it would kill the process with SIGBUS; reserved first, a full disk is an OSError (ENOSPC) here."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system that cannot: as before
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


def _copy_attrs(src: h5py.AttributeManager, dst: h5py.AttributeManager) -> None:
    for key, value in src.items():
        dst[key] = value


class MrcWriter(Writer):
    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        import mrcfile

        info = self.source.info
        mrc = self._stack.enter_context(mrcfile.new_mmap(self.dest, shape=image.shape, mrc_mode=2, overwrite=True))
        _reserve(self.dest)
        if info["image_stack"]:
            mrc.set_image_stack()
        mrc.voxel_size = info["voxel_size"]
        mrc.header.origin = info["origin"]
        mrc.header.nlabl = 0
        for label in info["labels"][:9]:
            mrc.add_label(label[:80])
        p = self.provenance
        mrc.add_label(
            f"emdenoise {p['emdenoise_version']} {p['model']['name']} "
            f"sha256:{p['model']['sha256'][:12]} {p['created']}"[:80]
        )
        # header statistics, accumulated frame by frame (float64) instead of re-reading the whole map
        lo, hi, total, squares, count = math.inf, -math.inf, 0.0, 0.0, 0
        target = mrc.data.reshape(-1, *image.frame_shape)
        for i, frame in enumerate(frames):
            target[i] = frame
            values = frame.astype(np.float64)
            lo, hi = min(lo, values.min()), max(hi, values.max())
            total += values.sum()
            squares += np.square(values).sum()
            count += values.size
        mean = total / count
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
        mrc.header.rms = math.sqrt(max(squares / count - mean * mean, 0.0))


_WRITERS: dict[str, Callable[[Path, InputFile, dict[str, Any]], Writer]] = {
    "tiff": TiffWriter,
    "png": PngWriter,
    "npy": NpyWriter,
    "hdf5": Hdf5Writer,
    "mrc": MrcWriter,
    "dm": TiffWriter,
    "ser": TiffWriter,
    "emd": lambda dest, source, provenance: _microscope().EmdWriter(dest, source, provenance),
}


def output_format(fmt: str) -> str:
    """The format the output of a ``fmt`` input is written in (DM3/DM4 and SER: TIFF; EMD: Berkeley EMD)."""
    return {"dm": "tiff", "ser": "tiff"}.get(fmt, fmt)


def output_path(output_dir: Path, relative: Path) -> Path:
    """Where the output of the input ``relative`` (to input_dir) goes: the same relative path, plus ``.tif``
    for the formats written as TIFF (``a.dm4`` -> ``a.dm4.tif``: the input's name stays visible and a.dm3 and
    a.dm4 do not collide)."""
    out = output_dir / relative
    fmt = format_of(relative)
    return out.with_name(out.name + ".tif") if fmt and output_format(fmt) != fmt else out


def open_output(dest: Path, source: InputFile, provenance: dict[str, Any]) -> Writer:
    """A writer for ``source``'s format into ``dest`` (normally a temporary path from
    :func:`emdenoise.outputs.atomic_path`)."""
    return _WRITERS[source.fmt](dest, source, provenance)


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance stored inside a file written by this module (None for NPY, which has no room)."""
    fmt = format_of(path)
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            meta = tif.shaped_metadata
            return meta[0].get(PROVENANCE_KEY) if meta else None
    if fmt == "png":
        from PIL import Image

        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(PROVENANCE_KEY)  # a PNG's tEXt chunks
            return json.loads(text) if text else None
    if fmt in ("hdf5", "emd"):
        with h5py.File(path, "r") as h5:
            text = h5.attrs.get("emdenoise_provenance")
            return json.loads(text) if text else None
    if fmt == "mrc":
        import mrcfile

        with mrcfile.open(path, mode="r", header_only=True) as mrc:
            labels = [bytes(x).decode("ascii", "replace").strip() for x in mrc.header.label[: int(mrc.header.nlabl)]]
            mine = [x for x in labels if x.startswith("emdenoise ")]
            return {"label": mine[-1]} if mine else None
    return None
