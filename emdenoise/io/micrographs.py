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
attribute (A/px, or in the unit of ``pixel_size_unit``) on the dataset or a group above it, or HyperSpy's axes
(``.hspy``: the ``axis-N`` groups' ``scale`` and ``units``); the DM/EMD/SER axes.
:func:`output_path` names the output (``.tif`` appended where the output format differs from the input's).

Each readable array is an :class:`ImageArray` whose frames (the last two axes) are read one at a time, so a
long stack never sits in memory; a frame larger than :data:`emdenoise.layout.MAX_FRAME_PIXELS`, or anything a
header claims beyond the memory budget (:mod:`emdenoise.io.budget`: a frame, an HDF5 chunk, an image read whole)
or beyond the file's own size, is refused from the header, before any pixel is read. The readers live in
:mod:`emdenoise.io.readers` (DM/EMD/SER: :mod:`emdenoise.io.microscope`), the writers in
:mod:`emdenoise.io.writers`, the image types in :mod:`emdenoise.io.images`.

Writers consume an iterator of float32 frames and write them straight into
the output (a temporary file the caller renames into place). An HDF5 input is probed in a child process before
it is opened (:func:`emdenoise.io.h5safe.open_foreign`): a file that would crash libhdf5 is one InputError.

Beside each output the denoise task writes its sidecar, ``<output name>.json`` (:func:`sidecar_of`): the
provenance and the fingerprint that decides whether a rerun may keep the output
(:class:`emdenoise.inference.denoiser.FileDenoiser`). :func:`find_inputs` selects the input files of a folder and
:func:`read_headers` opens each one's header, so that a bad file fails a run before any work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py

from emdenoise.errors import InputError
from emdenoise.io.images import MIN_SIDE, ImageArray, InputFile, check_array, describe, reason
from emdenoise.io.readers import READERS
from emdenoise.io.writers import PROVENANCE_KEY, PROVENANCE_TAG, WRITERS, Writer

# the names other modules know this module by (the readers and writers live in their own modules)
__all__ = ["MIN_SIDE", "ImageArray", "InputFile", "Writer", "check_array", "describe"]

FORMATS: dict[str, str] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".npy": "npy",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".hspy": "hdf5",  # HyperSpy's HDF5 files: read (and written) as HDF5, the axes' calibration kept
    ".mrc": "mrc",
    ".mrcs": "mrc",
    ".dm3": "dm",
    ".dm4": "dm",
    ".emd": "emd",
    ".ser": "ser",
}
# files that only describe others: TIA's .emi holds the metadata of the .ser files beside it (not an input)
COMPANIONS = {".emi"}
SIDECAR_SUFFIX = ".json"


def format_of(path: Path) -> str | None:
    """The format name for ``path``'s extension, or None when it is not one we read."""
    return FORMATS.get(path.suffix.lower())


def sidecar_of(out: Path) -> Path:
    """The sidecar of the output ``out``: ``<out's name>.json`` beside it."""
    return out.with_name(out.name + SIDECAR_SUFFIX)


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
        if path.suffix == SIDECAR_SUFFIX and format_of(path.with_suffix("")):  # an earlier output's sidecar
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
            opened = READERS[fmt](path, stack)
        except InputError:
            raise
        except Exception as exc:
            raise InputError.at(path, None, f"not a readable {fmt.upper()} file ({reason(exc)})") from None
        opened.closers = stack.pop_all()
        return opened


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
    return WRITERS[source.fmt](dest, source, provenance)


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance stored inside a file written by this module (None for NPY, which has no room)."""
    fmt = format_of(path)
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(PROVENANCE_TAG)
            if tag is not None:
                return json.loads(tag.value).get(PROVENANCE_KEY)
            meta = tif.shaped_metadata  # written by emdenoise 0.1 before the ImageJ layout
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
