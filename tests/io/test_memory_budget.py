"""The memory budget (emdenoise.io.budget): headers that claim more than the budget, or more bytes than the file
holds, are refused in one line naming the file, the field and the claimed size, before anything is allocated.
Every file here is real and built in the test; a few KB each."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile

from emdenoise.errors import InputError
from emdenoise.io import budget, micrographs

GB = 10**9


@pytest.fixture
def limit_gb(monkeypatch):
    """Set the budget through the environment variable (as a user without a parameters file would)."""

    def set_limit(value: float) -> None:
        monkeypatch.setenv(budget.ENV, str(value))

    return set_limit


def refused(path: Path) -> str:
    with pytest.raises(InputError) as err:
        with micrographs.open_input(path) as src:
            for image in src.images:
                for _ in src.iter_frames(image):
                    pass
    message = err.value.message
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def _zeros_chunk(nbytes: int) -> bytes:
    """zlib (HDF5 gzip filter) compressed zeros, streamed: a chunk of ``nbytes`` in a few hundred bytes."""
    packer, block = zlib.compressobj(1), bytes(1 << 20)
    out = [packer.compress(block) for _ in range(nbytes // len(block))]
    return b"".join(out) + packer.flush()


def test_hdf5_dataset_claiming_tens_of_gb_in_one_compressed_chunk_is_refused(tmp_path, limit_gb):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as h5:
        dset = h5.create_dataset(
            "stack", shape=(10_000, 1024, 1024), dtype="f4", chunks=(8, 1024, 1024), compression="gzip"
        )
        dset.id.write_direct_chunk((0, 0, 0), _zeros_chunk(8 * 1024 * 1024 * 4))
    assert path.stat().st_size < 200_000  # about 150 KB on disk (mostly the chunk index), 41.9 GB claimed
    limit_gb(0.01)
    message = refused(path)
    assert f"{path}:stack: chunks: the header claims chunks of (8, 1024, 1024) float32" in message
    assert "33.6 MB in memory at once" in message and "budget of 10.0 MB" in message and budget.ENV in message


def test_hdf5_stack_chunked_by_frame_is_read_frame_by_frame(tmp_path):
    """Tens of GB claimed, one frame per chunk: accepted, and reading a frame allocates one frame, not the stack."""
    path = tmp_path / "long.h5"
    with h5py.File(path, "w") as h5:
        dset = h5.create_dataset(
            "stack", shape=(10_000, 1024, 1024), dtype="f4", chunks=(1, 1024, 1024), compression="gzip"
        )
        dset.id.write_direct_chunk((3, 0, 0), _zeros_chunk(1024 * 1024 * 4))
    with micrographs.open_input(path) as src:
        (image,) = src.images
        assert image.frames == 10_000
        tracemalloc.start()
        frame = image.read(3)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert frame.shape == (1024, 1024) and not frame.any()
    assert peak < 3 * 1024 * 1024 * 4, f"reading one 4 MB frame allocated {peak} bytes"


def test_emd_claiming_tens_of_gb_is_refused_before_rosettasciio_reads_it(tmp_path, limit_gb):
    pytest.importorskip("rsciio")
    path = tmp_path / "bomb.emd"
    with h5py.File(path, "w") as h5:
        h5.attrs["version_major"], h5.attrs["version_minor"] = 0, 2
        group = h5.create_group("signals/bomb")
        group.attrs["emd_group_type"] = 1
        data = group.create_dataset(
            "data", shape=(1024, 1024, 10_000), dtype="f4", chunks=(1024, 1024, 1), compression="gzip"
        )
        for k, (name, size) in enumerate((("x", 1024), ("y", 1024), ("frame", 10_000)), start=1):
            dim = group.create_dataset(f"dim{k}", data=np.arange(size, dtype="f4"))
            dim.attrs["name"], dim.attrs["units"] = name, "[n_m]" if k < 3 else ""
        data.id.write_direct_chunk((0, 0, 0), _zeros_chunk(1024 * 1024 * 4))
    limit_gb(8)
    message = refused(path)
    assert f"{path}:signals/bomb/data: shape: the header claims shape (1024, 1024, 10000) float32 = 41.9 GB" in message
    assert "8.0 GB (environment variable EMDENOISE_MEMORY_LIMIT_GB)" in message


def _patch_tiff_size(path: Path, height: int, width: int) -> None:
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        offsets = {name: tags[name].valueoffset for name in ("ImageLength", "ImageWidth")}
        kinds = {name: tags[name].dtype for name in offsets}
    raw = bytearray(path.read_bytes())
    for name, value in (("ImageLength", height), ("ImageWidth", width)):
        struct.pack_into("<I" if kinds[name] == 4 else "<H", raw, offsets[name], value)
    path.write_bytes(bytes(raw))


def test_tiff_header_claiming_a_huge_frame_is_refused_by_the_budget(tmp_path, limit_gb):
    path = tmp_path / "liar.tif"
    tifffile.imwrite(path, np.ones((32, 32), np.uint16))
    _patch_tiff_size(path, 16_000, 16_000)  # 256 M pixels: within the frame limit, 1 GB as float32
    limit_gb(0.5)
    message = refused(path)
    assert "shape: the header claims frames of 16000x16000 uint16" in message and "1.0 GB" in message


def test_mrc_header_claiming_more_than_the_file_is_refused(tmp_path):
    path = tmp_path / "liar.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 32, 32), np.float32))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<3i", raw, 0, 8000, 8000, 4)  # nx, ny, nz
    path.write_bytes(bytes(raw))
    message = refused(path)
    assert f"{path}: header nx, ny, nz: the header claims shape (4, 8000, 8000) float32 = 1.0 GB" in message
    assert f"the file holds {path.stat().st_size} bytes" in message


def test_npy_header_claiming_more_than_the_file_is_refused(tmp_path):
    path = tmp_path / "liar.npy"
    np.save(path, np.zeros((2, 32, 32), np.float32))
    raw = path.read_bytes()
    header = raw[: raw.index(b"\n") + 1].replace(b"(2, 32, 32)", b"(9, 4096, 4096)")
    path.write_bytes(header)  # the header, padded as numpy pads it, and no data
    message = refused(path)
    assert f"{path}: header: the header claims shape (9, 4096, 4096) float32 = 604.0 MB" in message


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_png_header_over_the_budget_is_refused_before_decoding(tmp_path, limit_gb):
    path = tmp_path / "liar.png"
    path.write_bytes(_png(12_000, 12_000))
    limit_gb(0.2)
    message = refused(path)
    assert "IHDR: the header claims frames of 12000x12000 uint8" in message and "576.0 MB" in message


def test_the_parameter_overrides_the_environment_and_is_named(tmp_path, limit_gb):
    limit_gb(1000)
    budget.configure(0.001, "denoise.memory_limit_gb")
    try:
        path = tmp_path / "frame.npy"
        np.save(path, np.zeros((1024, 1024), np.float32))
        message = refused(path)
        assert "memory budget of 1.0 MB (denoise.memory_limit_gb)" in message
        assert "raise it with denoise.memory_limit_gb or EMDENOISE_MEMORY_LIMIT_GB" in message
    finally:
        budget.reset()
    with micrographs.open_input(path) as src:  # reset: the environment's 1000 GB again
        assert src.frames == 1


def test_default_budget_is_half_the_available_memory(monkeypatch):
    monkeypatch.delenv(budget.ENV, raising=False)
    nbytes, source = budget.limit()
    assert 0 < nbytes <= budget.available_bytes() and source.startswith("50% of the")
    monkeypatch.setenv(budget.ENV, "lots")
    with pytest.raises(InputError, match="EMDENOISE_MEMORY_LIMIT_GB: expected a number of GB > 0, got 'lots'"):
        budget.limit()
