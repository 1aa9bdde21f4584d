"""The readers of the formats emdenoise reads itself: TIFF, PNG, NPY, HDF5 and MRC (DM3/DM4, EMD and SER:
:mod:`emdenoise.io.microscope`). Each opens a file's headers and returns an :class:`InputFile` whose frames are
read one at a time; what a header claims is checked against the memory budget (:mod:`emdenoise.io.budget`)
before anything is allocated. See :mod:`emdenoise.io.micrographs` for the formats and the calibration."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from emdenoise.errors import InputError
from emdenoise.io import budget, h5safe
from emdenoise.io.calibration import angstrom
from emdenoise.io.images import MIN_SIDE, ImageArray, InputFile, check_array, check_frame_budget
from emdenoise.layout import check_frame_pixels


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
        if tif.is_imagej and (tif.imagej_metadata or {}).get("unit"):
            info["unit"] = (tif.imagej_metadata or {})["unit"]
    pixel, source = _tiff_pixel_size(tif, keyframe)
    for image in images:
        image.pixel_size, image.calibration = pixel, source
    return InputFile(path, "tiff", images, info)


_TIFF_UNITS = {3: "cm", 4: "mm", 5: "um"}  # ResolutionUnit: 1 none, 2 inch (print dpi: no calibration), 3 cm ...


def _tiff_pixel_size(tif: Any, keyframe: Any) -> tuple[float | None, str]:
    """A/px from the OME-XML PhysicalSizeX, else ImageJ's unit with the resolution tags, else resolution tags in
    centimetres, millimetres or micrometres (inches are a print resolution, not a calibration)."""
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
        check_frame_budget(
            path, "IHDR", (im.height, im.width), np.dtype(np.uint16 if PNG_MODES[im.mode] == 16 else np.uint8)
        )
        pixels = np.asarray(im)
        info = {"bits": PNG_MODES[im.mode], "dpi": im.info.get("dpi")}
    if im.mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
        raise InputError.at(path, None, "expected 16-bit grayscale values, got 32-bit ones")
    check_array(path, "", pixels.shape, pixels.dtype, (2,))
    return InputFile(path, "png", [ImageArray("", pixels.shape, pixels.dtype, lambda i: pixels)], info)


def _read_npy(path: Path, stack: ExitStack) -> InputFile:
    shape, dtype, offset = _npy_header(path)
    check_array(path, "", shape, dtype, (2, 3))
    nbytes = math.prod(shape) * dtype.itemsize
    budget.check_file_size(path, "header", path, offset, nbytes, f"shape {shape} {dtype}")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    read = (lambda i: array) if array.ndim == 2 else array.__getitem__
    return InputFile(path, "npy", [ImageArray("", array.shape, array.dtype, read)])


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and data offset an NPY header claims (nothing else read)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        if np.dtype(dtype).hasobject:
            raise InputError.at(path, "header", "not a readable NPY file (Python objects: pickles are never loaded)")
        return tuple(int(n) for n in shape), np.dtype(dtype), fh.tell()


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
        check_dataset(path, h5[image.name])
        image.pixel_size, image.calibration = _hdf5_pixel_size(h5, image.name)
    if not images:
        raise InputError.at(
            path,
            None,
            f"expected a 2-D or 3-D numeric dataset with frames of at least {MIN_SIDE}x{MIN_SIDE}, found none",
        )
    return InputFile(path, "hdf5", images, {"h5": h5, "groups": groups, "others": others})


def check_dataset(path: Path, dset: h5py.Dataset) -> None:
    """What reading one frame of ``dset`` allocates, within the memory budget: the frame, or the whole chunk it
    lies in (libhdf5 inflates whole chunks), and, for uncompressed contiguous data, no more bytes than the file
    holds."""
    where = f"{path}:{dset.name.lstrip('/')}"
    check_frame_budget(where, "shape", dset.shape, dset.dtype)
    claim = f"shape {tuple(dset.shape)} {dset.dtype}"
    if dset.chunks is not None:
        chunk = math.prod(dset.chunks) * dset.dtype.itemsize
        budget.check(where, "chunks", chunk, f"chunks of {tuple(dset.chunks)} {dset.dtype} ({claim})")
    elif dset.id.get_offset() is not None:  # contiguous and allocated
        budget.check_file_size(where, "shape", path, dset.id.get_offset(), dset.id.get_storage_size(), claim)


def _hdf5_pixel_size(h5: h5py.File, name: str) -> tuple[float | None, str]:
    """The attribute ``pixel_size`` (A/px, or in the unit of a ``pixel_size_unit`` attribute beside it) of the
    dataset ``name``, else of the nearest group above it."""
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
    return _hyperspy_pixel_size(h5, name) or (None, "HDF5 without a pixel_size attribute")


def _hyperspy_pixel_size(h5: h5py.File, name: str) -> tuple[float | None, str] | None:
    """A/px from HyperSpy's own HDF5 layout (``.hspy``): the groups ``axis-0`` .. ``axis-<n-1>`` beside the
    dataset ``<signal>/data`` hold each axis's ``scale`` and ``units``; the last two are the image's. None when
    the dataset is not laid out so."""
    parent, _, base = name.rpartition("/")
    ndim = h5[name].ndim
    axes = [h5.get(f"{parent}/axis-{k}") for k in (ndim - 2, ndim - 1)] if parent and base == "data" else []
    if len(axes) != 2 or not all(isinstance(a, h5py.Group) and "scale" in a.attrs for a in axes):
        return None
    y, x = ({key: _text(a.attrs.get(key)) for key in ("scale", "units")} for a in axes)
    py, px = angstrom(y["scale"], y["units"]), angstrom(x["scale"], x["units"])
    label = f"HyperSpy axes {parent}/axis-{ndim - 1} ({x['scale']:g} {x['units']})"
    if px is None or py is None or not math.isclose(px, py, rel_tol=1e-3):
        return None, f"{label}: no square pixels of a length unit"
    return px, label


def _text(value: Any) -> Any:
    """An HDF5 attribute as Python: bytes decoded, NumPy scalars as numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value.item() if isinstance(value, np.generic) else value


def _read_mrc(path: Path, stack: ExitStack) -> InputFile:
    import mrcfile

    # strict mode: a broken header is an error at once (permissive mode would try to read whatever sizes a
    # corrupt header claims); problems mrcfile only warns about are passed on to the log
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mrcfile.open(path, mode="r", header_only=True, permissive=False) as head:
            _check_mrc_header(path, head.header)
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


def _check_mrc_header(path: Path, header: Any) -> None:
    """The shape and mode the header claims, within the frame limits and the memory budget, and no more bytes
    than the file holds (before the data are mapped)."""
    from mrcfile.utils import data_dtype_from_header, data_shape_from_header

    dtype = np.dtype(data_dtype_from_header(header))
    shape = tuple(int(n) for n in data_shape_from_header(header))
    shape = shape[1:] if len(shape) == 3 and shape[0] == 1 and not int(header.ispg) else shape
    check_array(path, "", shape, dtype, (2, 3))
    offset = header.nbytes + int(header.nsymbt)
    nbytes = math.prod(shape) * dtype.itemsize
    budget.check_file_size(path, "header nx, ny, nz", path, offset, nbytes, f"shape {shape} {dtype}")


READERS: dict[str, Callable[[Path, ExitStack], InputFile]] = {
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
    from emdenoise.io import microscope  # loaded when first needed (rosettasciio is an optional extra)

    return microscope
