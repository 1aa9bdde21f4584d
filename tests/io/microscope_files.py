"""Small, real microscope files built byte by byte (rosettasciio writes none of DM3/DM4, SER or Velox EMD), and
Berkeley EMD files written with rosettasciio's own writer. Each builder's layout is written down here.

**DM3 / DM4** (Gatan DigitalMicrograph). Header, big-endian: version (int32: 3 or 4), file size (int32 in DM3,
int64 in DM4), byte order of the tag data (int32: 1 = little-endian). Then the root tag group: sorted (uint8),
open (uint8), number of tags (int32 / int64). Each tag: kind (uint8: 20 group, 21 data), name length (int16 BE),
name; in DM4 then the tag's size in bytes (int64 BE). A group tag continues with sorted, open, count and its
tags. A data tag continues with ``%%%%``, the length of its type description and the description (int32 / int64
BE each): ``[etype]`` for a single value, ``[20, etype, n]`` for an array of n values; then the value(s) in
the file's byte order. Type codes used: 2 int16, 3 int32, 4 uint16 (strings: one UTF-16 unit each), 5 uint32,
6 float32, 7 float64, 10 uint8 (the other codes are not needed here). The tree DigitalMicrograph writes and
readers look for: ``ImageList`` -> one unnamed group per image -> ``ImageData`` {``Calibrations`` {
``Brightness`` {Origin, Scale, Units}, ``Dimension`` {one unnamed group per axis, x first: Origin, Scale,
Units}}, ``Data`` (the pixels, x fastest), ``DataType`` (int32: 2 float32, 10 uint16, 1 int16, 7 int32, 6
uint8), ``Dimensions`` (unnamed int32 sizes, x first), ``PixelDepth``}, ``Name``.

**SER** (FEI TIA), little-endian. Header: ByteOrder uint16 0x4949, SeriesID uint16 0x0197, SeriesVersion
uint16 (0x0210: offsets are uint32, 0x0220: uint64), DataTypeID uint32 (0x4122: 2-D images), TagTypeID uint32
(0x4152: time only), TotalNumberElements, ValidNumberElements (uint32), OffsetArrayOffset (uint32 / uint64),
NumberDimensions (uint32); per dimension: size uint32, calibration offset and delta float64, calibration
element uint32, description (uint32 length + chars), units (uint32 length + chars). At OffsetArrayOffset: the
data offsets then the tag offsets (one per element). Each image element: CalibrationOffsetX float64,
CalibrationDeltaX float64 (metres per pixel), CalibrationElementX uint32, the same three for Y, DataType uint16
(1 uint8, 2 uint16, 3 uint32, 4 int8, 5 int16, 6 int32, 7 float32, 8 float64), ArraySizeX, ArraySizeY
(uint32), the pixels (x fastest, the bottom row first). Each tag: TagTypeID uint16 0x4152, 2 bytes zero, Time uint32.

**Velox EMD** (Thermo Fisher), HDF5: dataset ``Version`` holding one JSON byte string ``{"format": "Velox",
...}``; ``Data/Image/<uuid>/Data`` (H, W, frames) and ``Data/Image/<uuid>/Metadata`` (uint8, one column of
zero-padded JSON per frame, with ``BinaryResult.PixelSize.width/height`` in metres and
``BinaryResult.PixelUnitX/Y``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import numpy as np

DM_TYPES = {np.dtype(np.float32): (2, 6), np.dtype(np.uint16): (10, 4), np.dtype(np.int16): (1, 2)}


class _Dm:
    def __init__(self, version: int):
        self.v = version
        self.n = ">q" if version == 4 else ">l"  # lengths, counts and type descriptions

    def _num(self, value: int) -> bytes:
        return struct.pack(self.n, value)

    def _tag(self, kind: int, name: str, body: bytes) -> bytes:
        raw = name.encode("latin-1")
        head = bytes([kind]) + struct.pack(">h", len(raw)) + raw
        return head + (struct.pack(">q", len(body)) if self.v == 4 else b"") + body

    def group(self, name: str, tags: list[bytes]) -> bytes:
        return self._tag(20, name, b"\0\0" + self._num(len(tags)) + b"".join(tags))

    def value(self, name: str, etype: int, fmt: str, value: float) -> bytes:
        return self._tag(21, name, b"%%%%" + self._num(1) + self._num(etype) + struct.pack("<" + fmt, value))

    def array(self, name: str, etype: int, values: np.ndarray) -> bytes:
        desc = self._num(3) + self._num(20) + self._num(etype) + self._num(values.size)
        return self._tag(21, name, b"%%%%" + desc + values.astype(values.dtype.newbyteorder("<")).tobytes())

    def text(self, name: str, text: str) -> bytes:
        return self.array(name, 4, np.frombuffer(text.encode("utf-16-le"), "<u2"))

    def file(self, root: list[bytes]) -> bytes:
        body = b"\0\0" + self._num(len(root)) + b"".join(root)
        size = struct.pack(">q" if self.v == 4 else ">l", len(body) + 8 + (8 if self.v == 4 else 4))
        return struct.pack(">l", self.v) + size + struct.pack(">l", 1) + body + b"\0" * 8


def write_dm(path: Path, data: np.ndarray, scale: float, units: str = "nm", version: int = 3) -> None:
    """A DM3/DM4 file with one image or stack ``data`` ((H, W) or (N, H, W)), square pixels of ``scale``
    ``units``."""
    dm = _Dm(version)
    dtype_code, etype = DM_TYPES[data.dtype]
    sizes = list(data.shape[::-1])  # x first
    dims = [
        dm.group("", [dm.value("Origin", 6, "f", 0.0), dm.value("Scale", 6, "f", s), dm.text("Units", u)])
        for s, u in [(scale, units), (scale, units)] + [(1.0, "")] * (data.ndim - 2)
    ]
    calibrations = dm.group(
        "Calibrations",
        [
            dm.group(
                "Brightness",
                [dm.value("Origin", 6, "f", 0.0), dm.value("Scale", 6, "f", 1.0), dm.text("Units", "counts")],
            ),
            dm.group("Dimension", dims),
        ],
    )
    image_data = dm.group(
        "ImageData",
        [
            calibrations,
            dm.array("Data", etype, np.ascontiguousarray(data).ravel()),
            dm.value("DataType", 3, "l", dtype_code),
            dm.group("Dimensions", [dm.value("", 5, "L", n) for n in sizes]),
            dm.value("PixelDepth", 5, "L", data.dtype.itemsize),
        ],
    )
    image = dm.group("", [image_data, dm.text("Name", "frame"), dm.group("ImageTags", [])])
    path.write_bytes(dm.file([dm.group("ImageList", [image])]))


SER_TYPES = {np.dtype(np.uint16): 2, np.dtype(np.float32): 7, np.dtype(np.int16): 5}


def write_ser(path: Path, data: np.ndarray, metres_per_pixel: float, version: int = 0x0220) -> None:
    """A SER file of ``data`` ((H, W) or (N, H, W)) with square pixels of ``metres_per_pixel``."""
    frames = data.reshape(-1, *data.shape[-2:])
    n, (h, w) = frames.shape[0], frames.shape[1:]
    off = "<Q" if version > 0x0210 else "<L"
    dim = struct.pack("<LddL", n, 0.0, 1.0, 0) + struct.pack("<L", 0) + struct.pack("<L", 0)
    head = struct.pack("<HHHLLLL", 0x4949, 0x0197, version, 0x4122, 0x4152, n, n)
    start = len(head) + struct.calcsize(off) + 4 + len(dim)
    elements, tags = [], []
    for frame in frames:
        cal = struct.pack("<ddL", 0.0, metres_per_pixel, 0)
        pixels = frame[::-1].astype(data.dtype.newbyteorder("<")).tobytes()  # TIA stores the bottom row first
        elements.append(cal + cal + struct.pack("<HLL", SER_TYPES[data.dtype], w, h) + pixels)
        tags.append(struct.pack("<HHL", 0x4152, 0, 0))
    offsets, pos = [], start
    for element in elements:
        offsets.append(pos)
        pos += len(element)
    tag_offsets = []
    for tag in tags:
        tag_offsets.append(pos)
        pos += len(tag)
    table = pos
    body = head + struct.pack(off, table) + struct.pack("<L", 1) + dim + b"".join(elements) + b"".join(tags)
    path.write_bytes(body + b"".join(struct.pack(off, o) for o in offsets + tag_offsets))


def write_velox(path: Path, data: np.ndarray, metres_per_pixel: float) -> None:
    """A Velox EMD file with one image or stack ``data`` ((H, W) or (N, H, W)) of square pixels."""
    frames = data.reshape(-1, *data.shape[-2:])
    meta = {
        "BinaryResult": {
            "PixelSize": {"width": str(metres_per_pixel), "height": str(metres_per_pixel)},
            "PixelUnitX": "m",
            "PixelUnitY": "m",
            "Offset": {"x": "0", "y": "0"},
            "ImageSize": {"width": str(frames.shape[2]), "height": str(frames.shape[1])},
        },
        "Core": {"MetadataDefinitionVersion": "7.9", "MetadataSchemaVersion": "v1/2013/07"},
        "Optics": {"AccelerationVoltage": "300000"},
        "Instrument": {"InstrumentModel": "Test TEM"},
        "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1700000000"}},
        "Detectors": {},
        "Scan": {"FrameTime": "1.0"},
    }
    text = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    column = np.zeros(len(text) + 16, np.uint8)
    column[: len(text)] = text
    with h5py.File(path, "w") as fh:
        fh["Version"] = np.array([json.dumps({"format": "Velox", "version": "2"}).encode()])
        group = fh.create_group("Data/Image/0a1b2c3d4e5f")
        group.create_dataset("Data", data=np.moveaxis(frames, 0, -1), chunks=(*frames.shape[1:], 1))  # (H, W, frames)
        group["Metadata"] = np.repeat(column[:, None], frames.shape[0], axis=1)


def write_berkeley(path: Path, data: np.ndarray, nm_per_pixel: float) -> None:
    """A Berkeley (NCEM) EMD file written by rosettasciio's own EMD writer."""
    from rsciio.emd import file_writer

    names = ["frame", "y", "x"][-data.ndim :]
    axes = [
        {
            "name": name,
            "size": size,
            "scale": nm_per_pixel if name != "frame" else 1.0,
            "offset": 0.0,
            "units": "nm" if name != "frame" else None,
            "navigate": name == "frame",
        }
        for name, size in zip(names, data.shape)
    ]
    signal = {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": "image"}, "Signal": {}},
        "original_metadata": {},
    }
    file_writer(str(path), signal)
