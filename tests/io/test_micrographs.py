"""Micrograph files (emdenoise.io.micrographs): per-format reading and writing through the inference path,
streaming with bounded memory, bad inputs, the selection of input files."""

from __future__ import annotations

import json
import logging
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from emdenoise.errors import InputError
from emdenoise.inference.denoiser import denoise_file
from emdenoise.inference.tiling import Tiler
from emdenoise.io import micrographs

mrcfile = pytest.importorskip("mrcfile")
PROVENANCE = {
    "emdenoise_version": "test",
    "created": "2026-01-01T00:00:00Z",
    "model": {"name": "identity", "sha256": "0" * 64},
    "settings": {},
}


def identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


# ------------------------------------------------------------------------------------------------ formats


def _write_tiff8(path, rng):
    data = rng.integers(0, 256, (70, 90), dtype=np.uint8)
    tifffile.imwrite(path, data, resolution=(10.0, 20.0), resolutionunit="CENTIMETER")
    return data


def _write_tiff16(path, rng):
    data = rng.integers(0, 65536, (64, 48), dtype=np.uint16)
    tifffile.imwrite(path, data)
    return data


def _write_tiff_float(path, rng):
    data = (rng.random((50, 60)) * 300 - 20).astype(np.float32)
    tifffile.imwrite(path, data)
    return data


def _write_tiff_stack(path, rng):
    data = rng.integers(0, 4096, (6, 40, 50), dtype=np.uint16)
    tifffile.imwrite(path, data)
    return data


def _write_png8(path, rng):
    data = rng.integers(0, 256, (45, 70), dtype=np.uint8)
    Image.fromarray(data).save(path)
    return data


def _write_png16(path, rng):
    data = rng.integers(0, 65536, (45, 70)).astype(np.uint16)
    Image.fromarray(data).save(path)
    return data


def _write_npy(path, rng):
    data = rng.random((4, 33, 47))  # float64 in, float32 out
    np.save(path, data)
    return data


def _write_hdf5(path, rng):
    data = rng.integers(-500, 500, (3, 40, 36), dtype=np.int16)
    with h5py.File(path, "w") as fh:
        fh["entry/data"] = data
        fh["entry/data"].attrs["units"] = "counts"
        fh["entry/exposure"] = np.arange(3.0)  # 1-D: not an image, copied as is
        fh.attrs["instrument"] = "test"
    return data


def _write_mrc(path, rng):
    data = rng.integers(-100, 100, (3, 48, 40), dtype=np.int16)
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = 1.25
    return data


FORMAT_CASES = {
    "a8.tif": _write_tiff8,
    "a16.tiff": _write_tiff16,
    "float.tif": _write_tiff_float,
    "stack.tif": _write_tiff_stack,
    "p8.png": _write_png8,
    "p16.png": _write_png16,
    "n.npy": _write_npy,
    "h.h5": _write_hdf5,
    "m.mrcs": _write_mrc,
}


def _read_back(path: Path) -> np.ndarray:
    fmt = micrographs.format_of(path)
    if fmt == "tiff":
        return tifffile.imread(path)
    if fmt == "png":
        return np.asarray(Image.open(path))
    if fmt == "npy":
        return np.load(path, allow_pickle=False)
    if fmt == "hdf5":
        with h5py.File(path, "r") as fh:
            return fh["entry/data"][()]
    with mrcfile.open(path) as mrc:
        return mrc.data.copy()


@pytest.mark.parametrize("name", list(FORMAT_CASES))
def test_round_trip_keeps_format_shape_values_and_provenance(tmp_path, name):
    src_path, out = tmp_path / name, tmp_path / "out" / name
    data = FORMAT_CASES[name](src_path, np.random.default_rng(0))
    with micrographs.open_input(src_path) as src:
        assert src.frames == (data.shape[0] if data.ndim == 3 else 1)
        frames = denoise_file(src, out, Tiler(identity, 32, 8, 4), PROVENANCE)
    assert frames == src.frames
    back = _read_back(out)
    assert back.shape == data.shape
    assert micrographs.format_of(out) == micrographs.format_of(src_path)
    if name.endswith(".png"):
        assert back.dtype == data.dtype  # PNG keeps its bit depth (rounded, clipped)
    else:
        assert back.dtype == np.float32
    np.testing.assert_array_equal(back, data.astype(back.dtype))
    if not name.endswith(".npy"):  # NPY has no room for metadata: the task's sidecar carries it
        stored = micrographs.read_provenance(out)
        assert stored is not None
        assert "identity" in json.dumps(stored)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_tiff_keeps_resolution_and_the_hdf5_tree_and_mrc_header(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a8.tif", "h.h5", "m.mrcs"):
        FORMAT_CASES[name](tmp_path / name, rng)
        with micrographs.open_input(tmp_path / name) as src:
            denoise_file(src, tmp_path / "out" / name, Tiler(identity, 32, 8, 4), PROVENANCE)
    with tifffile.TiffFile(tmp_path / "out/a8.tif") as tif:
        assert tif.pages[0].resolution == (10.0, 20.0)
    with h5py.File(tmp_path / "out/h.h5", "r") as fh:
        assert fh.attrs["instrument"] == "test" and fh["entry/data"].attrs["units"] == "counts"
        np.testing.assert_array_equal(fh["entry/exposure"][()], np.arange(3.0))
        assert fh["entry/data"].chunks == (1, 40, 36)
    with mrcfile.open(tmp_path / "out/m.mrcs") as mrc:
        assert mrc.is_image_stack() and mrc.header.mode == 2
        assert float(mrc.voxel_size.x) == pytest.approx(1.25)
        assert mrc.header.dmax == pytest.approx(mrc.data.max()) and mrc.header.dmean == pytest.approx(mrc.data.mean())
        assert mrc.header.rms == pytest.approx(mrc.data.std(), rel=1e-5)


def test_png_output_is_rounded_and_clipped_to_its_bit_depth(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "p.png")
    with micrographs.open_input(tmp_path / "p.png") as src:
        denoise_file(src, tmp_path / "o.png", Tiler(lambda b: b * 1.5 - 40.3, 32, 8, 4), PROVENANCE)
    expected = np.clip(np.rint(data.astype(np.float32) * 1.5 - 40.3), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), expected)


@pytest.mark.parametrize("name", ["stack.tif", "n.npy", "h.h5", "m.mrcs"])
def test_long_stack_streams_with_bounded_memory(tmp_path, name):
    """200 frames of 128x128 float (12.5 MiB as float32) pass through while Python-side allocations peak at a
    few frames: the reader, the tiler and the writer each hold at most a frame or two."""
    frames, side = 200, 128
    data = np.random.default_rng(0).random((frames, side, side), dtype=np.float32)
    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, data)
    elif name.endswith(".npy"):
        np.save(path, data)
    elif name.endswith(".h5"):
        with h5py.File(path, "w") as fh:
            fh.create_dataset("entry/data", data=data, chunks=(1, side, side))
    else:
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
            mrc.set_image_stack()
    del data
    frame_bytes = side * side * 4
    with micrographs.open_input(path) as src:
        tracemalloc.start()
        try:
            denoise_file(src, tmp_path / "out" / name, Tiler(identity, 64, 16, 8), PROVENANCE)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 12 * frame_bytes, f"peak {peak / 2**20:.1f} MiB for a {frames * frame_bytes / 2**20:.1f} MiB stack"
    np.testing.assert_array_equal(
        _read_back(tmp_path / "out" / name)[-1],
        np.random.default_rng(0).random((frames, side, side), dtype=np.float32)[-1],
    )


def test_a_4096x4096_frame_needs_about_two_frames_of_memory(tmp_path):
    """Tiles come from a memory-mapped input; only the float32 output frame and a float64 band of the rows
    still being blended are allocated."""
    side = 4096
    array = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(side, side))
    array[:] = 1.0
    array[::7, ::5] = 3.0
    array.flush()
    del array
    with micrographs.open_input(tmp_path / "big.npy") as src:
        tracemalloc.start()
        try:
            denoise_file(src, tmp_path / "out.npy", Tiler(identity, 256, 32, 8), PROVENANCE)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2 * side * side * 4
    out = np.load(tmp_path / "out.npy", mmap_mode="r")
    assert out.shape == (side, side) and np.array_equal(out, np.load(tmp_path / "big.npy", mmap_mode="r"))


# ------------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("bad.tif", b"this is not a tiff" * 10, "not a readable TIFF"),
        ("bad.npy", b"\x93NUMPY garbage", "not a readable NPY"),
        ("bad.h5", b"not hdf5" * 100, "not a readable HDF5"),
        ("bad.mrc", b"garbage" * 200, "not a readable MRC"),
        ("bad.png", b"\x89PNG\r\n\x1a\n" + b"x" * 50, "not a readable PNG"),
    ],
)
def test_corrupt_file_is_a_one_line_input_error_naming_it(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as err:
        micrographs.open_input(tmp_path / name)
    assert str(tmp_path / name) in err.value.message and expected in err.value.message
    assert "\n" not in err.value.message


def test_truncated_pixel_data_names_the_file_and_frame(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint16), photometric="minisblack")
    whole = path.read_bytes()
    offset = tifffile.TiffFile(path).pages[2].dataoffsets[0]
    path.write_bytes(whole[: offset + 100])
    with pytest.raises(InputError) as err:
        with micrographs.open_input(path) as src:
            denoise_file(src, tmp_path / "out.tif", Tiler(identity, 32, 8, 4), PROVENANCE)
    assert str(path) in err.value.message
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p / "rgb.png"), "grayscale"),
        (lambda p: tifffile.imwrite(p / "rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb"), "grayscale"),
        (lambda p: np.save(p / "tiny.npy", np.zeros((100, 3))), "at least 16x16"),
        (lambda p: np.save(p / "c.npy", np.zeros((32, 32), np.complex64)), "real pixel values"),
        (lambda p: np.save(p / "obj.npy", np.array([{"a": 1}] * 4, dtype=object)), "NPY"),
        (lambda p: h5py.File(p / "none.h5", "w").close(), "found none"),
    ],
)
def test_unusable_images_are_input_errors(tmp_path, make, expected):
    make(tmp_path)
    (path,) = list(tmp_path.iterdir())
    with pytest.raises(InputError, match=expected):
        micrographs.open_input(path)


def test_nan_in_a_frame_is_an_input_error(tmp_path):
    data = np.ones((2, 32, 32), np.float32)
    data[1, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", data)
    with pytest.raises(InputError, match=r"frame 1: expected finite"):
        with micrographs.open_input(tmp_path / "nan.npy") as src:
            denoise_file(src, tmp_path / "o.npy", Tiler(identity, 32, 8, 4), PROVENANCE)


def test_inputs_skip_other_extensions_and_need_one_image(tmp_path, caplog):
    log = logging.getLogger("test_denoise")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="found none"):
        micrographs.find_inputs(tmp_path / "in", "*", tmp_path / "out", log)
    np.save(tmp_path / "in" / "a.npy", np.zeros((32, 32)))
    (tmp_path / "in" / ".hidden.npy").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="test_denoise"):
        assert micrographs.find_inputs(tmp_path / "in", "*", tmp_path / "out", log) == [tmp_path / "in" / "a.npy"]
    assert "notes.txt" in caplog.text
    with pytest.raises(InputError, match="other than input_dir"):
        micrographs.find_inputs(tmp_path / "in", "*", tmp_path / "in", log)
