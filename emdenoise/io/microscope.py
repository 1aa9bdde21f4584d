"""Microscope file formats and calibration: Gatan DM3/DM4, EMD (Thermo Fisher Velox and Berkeley/NCEM), FEI TIA
SER, read through rosettasciio (``rsciio``, the HyperSpy IO library); the Berkeley EMD writer; pixel sizes in
Angstrom per pixel from every format's own units.

rosettasciio is GPL-3.0-or-later, so it is an optional extra (``pip install -e ".[formats]"`` in the emdenoise
clone), imported only when such a file is opened; without it, opening one is a one-line error naming the file
and that command.

Each reader returns the images of a file as :class:`emdenoise.io.micrographs.ImageArray` with the pixel size
(A/px) and where it came from, frames read one at a time (rsciio's lazy arrays). Signals that are not images
(spectra, spectrum images) are skipped; the last two axes of the others are the image, any before them frames
(diffraction patterns in reciprocal units are read, without a pixel size).
What is written for these inputs (:data:`OUTPUT_FORMATS`): DM3/DM4 and SER become float32 TIFF files with
resolution tags in centimetres (``<name>.dm4.tif``: no open library writes DM or SER), EMD inputs (either
flavour) become Berkeley EMD files (:class:`EmdWriter`), the layout rsciio, HyperSpy and py4DSTEM read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emdenoise.errors import InputError
from emdenoise.io import budget, h5safe
from emdenoise.io.calibration import angstrom
from emdenoise.io.images import ImageArray, InputFile, Writer, check_array

INSTALL_HINT = 'pip install -e ".[formats]" in the emdenoise clone (the formats extra: rosettasciio)'
OUTPUT_FORMATS = {"dm": "tiff", "ser": "tiff", "emd": "emd"}  # formats we read but do not write
OUTPUT_SUFFIX = {"tiff": ".tif", "emd": ".emd"}


def _rsciio(path: Path, fmt: str) -> Any:
    try:
        if fmt == "dm":
            from rsciio import digitalmicrograph as module
        elif fmt == "ser":
            from rsciio import tia as module
        else:
            from rsciio import emd as module
    except ImportError:
        raise InputError.at(
            path, None, f"reading {fmt.upper()} files needs the optional rosettasciio package: {INSTALL_HINT}"
        ) from None
    return module


def read(path: Path, fmt: str, stack: ExitStack) -> InputFile:
    """Open a DM3/DM4, EMD or SER file (headers and lazy arrays: pixel data are read frame by frame)."""
    module = _rsciio(path, fmt)
    if fmt == "emd":
        with h5safe.open_foreign(path) as h5:  # the child-process probe, before libhdf5 parses the file here
            _check_emd_sizes(path, h5)
    # lazy arrays: DM and SER frames are read one at a time; rsciio's lazy EMD arrays keep an HDF5 handle
    # open that nothing closes, so an EMD file is read whole (and closed) here, once _check_emd_sizes has found
    # every array within the memory budget
    signals = module.file_reader(str(path), lazy=fmt != "emd")
    images, skipped, metadata = [], [], []
    for k, signal in enumerate(signals):
        axes, data = signal["axes"], signal["data"]
        title = str(signal.get("metadata", {}).get("General", {}).get("title", "") or "")
        name = f"{k}: {title}" if len(signals) > 1 and title else (f"signal {k}" if len(signals) > 1 else "")
        signal_axes = sum(not axis.get("navigate", False) for axis in axes)
        if data.ndim < 2 or signal_axes < 2 or data.ndim != len(axes):  # spectra and spectrum images
            skipped.append(name or f"signal {k}")
            continue
        check_array(path, name, tuple(data.shape), np.dtype(data.dtype), tuple(range(2, 9)))
        pixel, source = _axes_pixel_size(axes[-2], axes[-1], fmt)
        images.append(ImageArray(name, tuple(data.shape), np.dtype(data.dtype), _frames_of(data), pixel, source))
        metadata.append(summary(signal.get("metadata", {})))
    if not images:
        raise InputError.at(path, None, f"expected at least one 2-D image, found none (skipped: {skipped or 'none'})")
    info: dict[str, Any] = {"metadata": metadata[0] if len(metadata) == 1 else metadata, "skipped": skipped}
    # the TIFF output's resolution tags, pixels per centimetre (a TIFF rational holds up to 2**32 - 1: pixels
    # below 0.024 A have none, their pixel size stays in the provenance)
    per_cm = 1e8 / images[0].pixel_size if images[0].pixel_size else 0.0
    if fmt != "emd" and 0 < per_cm < 2**32 - 1:
        info["resolution"], info["resolutionunit"] = (per_cm, per_cm), "CENTIMETER"
    return InputFile(path, fmt, images, info)


def _check_emd_sizes(path: Path, h5: h5py.File) -> None:
    """rosettasciio reads an EMD file's arrays whole: every numeric dataset of two or more axes must fit the
    memory budget, checked from the header before any of it is read."""

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and obj.dtype.kind in "uifc":
            claim = f"shape {tuple(obj.shape)} {obj.dtype}"
            budget.check(f"{path}:{name}", "shape", obj.size * obj.dtype.itemsize, claim)

    h5.visititems(visit)


def _frames_of(data: Any) -> Any:
    frames = data.reshape(-1, *data.shape[-2:])
    return lambda i: np.asarray(frames[i])


def _axes_pixel_size(y: dict[str, Any], x: dict[str, Any], fmt: str) -> tuple[float | None, str]:
    py, px = angstrom(y.get("scale", 1.0), y.get("units")), angstrom(x.get("scale", 1.0), x.get("units"))
    if px is None or py is None:
        return None, f"{fmt.upper()} axes without a length unit ({x.get('units')!r})"
    if not math.isclose(px, py, rel_tol=1e-3):
        return None, f"{fmt.upper()} axes with non-square pixels ({py:g} x {px:g} A)"
    return px, f"{fmt.upper()} axes ({x.get('scale'):g} {x.get('units')})"


_SUMMARY_KEYS = 40


def summary(metadata: Any, prefix: str = "") -> dict[str, Any]:
    """The original metadata in a few lines for the provenance: the scalar leaves (at most 40, strings cut to
    80 characters), keyed by their dotted path (``Acquisition_instrument.TEM.beam_energy``)."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if len(out) >= _SUMMARY_KEYS:
            return
        if isinstance(node, dict) or hasattr(node, "items") and not isinstance(node, (str, bytes)):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, (bool, int, float, np.integer, np.floating)):
            value = node.item() if isinstance(node, np.generic) else node
            if not isinstance(value, float) or math.isfinite(value):
                out[path] = value
        elif isinstance(node, (str, bytes)):
            text = node.decode("utf-8", "replace") if isinstance(node, bytes) else node
            out[path] = text[:80]

    walk(metadata, prefix)
    return out


class EmdWriter(Writer):
    """Writes Berkeley EMD (v0.2): root attributes ``version_major``/``version_minor``; ``signals/<name>`` with
    ``emd_group_type = 1`` holding ``data`` and one ``dimN`` vector per axis (``name``, ``units`` attributes).
    The frames are stored as rsciio stores them, the array transposed (``data[x, y, frame]``, ``dim1`` the x
    axis), so HyperSpy and rsciio read back the input's image shape; frames stream in one at a time.
    The provenance JSON is the root attribute ``emdenoise_provenance``."""

    def open(self) -> None:
        provenance = self.provenance
        self.h5 = self._stack.enter_context(h5py.File(self.dest, "w"))
        self.h5.attrs["version_major"], self.h5.attrs["version_minor"] = 0, 2
        self.h5.attrs["emdenoise_provenance"] = json.dumps(provenance)
        self.signals = self.h5.require_group("signals")
        self.signals.attrs["emd_group_type"] = 1
        self._count = 0

    def write(self, image: ImageArray, frames: Iterable[np.ndarray]) -> None:
        self._count += 1
        group = self.signals.require_group(_group_name(image.name, self._count))
        group.attrs["emd_group_type"] = 1
        h, w = image.frame_shape
        stack = image.frames > 1 or len(image.shape) > 2
        shape = (w, h, image.frames) if stack else (w, h)
        dset = group.create_dataset("data", shape=shape, dtype=np.float32, chunks=(w, h, 1) if stack else None)
        step = (image.pixel_size or 1.0) / 10.0  # nm, as the microscopes' own EMD files
        units = "[n_m]" if image.pixel_size else ""
        dims = [("x", w, step, units), ("y", h, step, units)] + ([("frame", image.frames, 1.0, "")] if stack else [])
        for k, (name, size, scale, unit) in enumerate(dims, start=1):
            dim = group.create_dataset(f"dim{k}", data=np.arange(size) * scale)
            dim.attrs["name"], dim.attrs["units"] = name, unit
        for i, frame in enumerate(frames):
            if stack:
                dset[:, :, i] = np.asarray(frame, np.float32).T
            else:
                dset[...] = np.asarray(frame, np.float32).T


def _group_name(name: str, count: int) -> str:
    clean = "".join(c if c.isalnum() or c in "-_ " else "_" for c in name).strip()
    return clean or f"image{count}"


def read_provenance(path: Path) -> dict[str, Any] | None:
    with h5py.File(path, "r") as h5:
        text = h5.attrs.get("emdenoise_provenance")
        return json.loads(text) if text else None
