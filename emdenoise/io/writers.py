"""The writers: the denoised images of one input file, in the input's format (see
:mod:`emdenoise.io.micrographs`), written frame by frame into a temporary file the caller renames into place."""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emdenoise.io.images import ImageArray, InputFile, Writer

PROVENANCE_KEY = "emdenoise"


PROVENANCE_TAG = 65321  # a private TIFF tag (ASCII JSON): the provenance, beside ImageJ's own description
_IMAGEJ_UNITS = {"CENTIMETER": "cm", "MILLIMETER": "mm", "MICROMETER": "micron"}
_IMAGEJ_AXES = {2: "YX", 3: "TYX", 4: "TZYX", 5: "TZCYX"}


def imagej_calibration(source: InputFile, image: ImageArray) -> dict[str, Any]:
    """The ImageJ calibration of ``image``'s output: ``{"resolution", "unit"}`` in the input's own unit where it
    had one (ImageJ's unit, or resolution tags in cm/mm/um), else from the pixel size in nm (DM/SER/OME inputs);
    ``{"resolution", "resolutionunit"}`` for uncalibrated tags (a print resolution in inches, kept as it was);
    ``{}`` when there is nothing."""
    info = source.info
    if "resolution" in info and info.get("unit"):
        return {"resolution": info["resolution"], "unit": info["unit"]}
    unit = _IMAGEJ_UNITS.get(getattr(info.get("resolutionunit"), "name", str(info.get("resolutionunit"))))
    if "resolution" in info and unit and source.fmt == "tiff":
        return {"resolution": info["resolution"], "unit": unit}
    if image.pixel_size:
        per_nm = 10.0 / image.pixel_size
        return {"resolution": (per_nm, per_nm), "unit": "nm"}
    if "resolution" in info:
        return {"resolution": info["resolution"], "resolutionunit": info["resolutionunit"]}
    return {}


class TiffWriter(Writer):
    """Float32 TIFF as ImageJ/Fiji write it, for an input of one image of up to 5 axes: the calibration
    (:func:`imagej_calibration`: unit and spacing in ImageJ's description, resolution tags), a movie as a ``TYX``
    hyperstack. Other inputs (several series, or beyond 4 GB): one plain series each with the resolution tags.
    The provenance goes into the private tag :data:`PROVENANCE_TAG`, never in place of ImageJ's description."""

    def open(self) -> None:
        import tifffile

        nbytes = 4 * sum(math.prod(image.shape) for image in self.source.images)
        big = nbytes > 2**32 - 2**26
        self.imagej = len(self.source.images) == 1 and len(self.source.images[0].shape) in _IMAGEJ_AXES and not big
        self.tw = self._stack.enter_context(tifffile.TiffWriter(self.dest, bigtiff=big, imagej=self.imagej))

    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        info = self.source.info
        metadata: dict[str, Any] = {}  # a plain series: tifffile's shape description
        extra: dict[str, Any] = {}
        if self.imagej:
            calibration = imagej_calibration(self.source, image)
            metadata = {"axes": _IMAGEJ_AXES[len(image.shape)]}
            if "unit" in calibration:
                metadata["unit"] = calibration.pop("unit")
            extra = calibration
        elif "resolution" in info:
            extra = {"resolution": info["resolution"], "resolutionunit": info["resolutionunit"]}
        text = json.dumps({PROVENANCE_KEY: self.provenance})
        # an iterator of pages: tifffile writes each one as it comes
        self.tw.write(
            (np.ascontiguousarray(f, np.float32) for f in frames),
            shape=image.shape,
            dtype=np.float32,
            photometric="minisblack",
            metadata=metadata,
            extratags=[(PROVENANCE_TAG, "s", 0, text, True)],
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


WRITERS: dict[str, Callable[[Path, InputFile, dict[str, Any]], Writer]] = {
    "tiff": TiffWriter,
    "png": PngWriter,
    "npy": NpyWriter,
    "hdf5": Hdf5Writer,
    "mrc": MrcWriter,
    "dm": TiffWriter,
    "ser": TiffWriter,
    "emd": lambda dest, source, provenance: _emd_writer(dest, source, provenance),
}


def _emd_writer(dest: Path, source: InputFile, provenance: dict[str, Any]) -> Writer:
    from emdenoise.io.microscope import EmdWriter  # with the microscope formats: loaded when first needed

    return EmdWriter(dest, source, provenance)
