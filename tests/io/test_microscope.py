"""Microscope formats (emdenoise.io.microscope) through open_input and the writers: DM3/DM4, SER, Velox and
Berkeley EMD files read with their data and calibration, written back in a format those users open with the
calibration kept, damaged files refused in one line; the calibration of today's formats."""

from __future__ import annotations

import json
import sys

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import torch
from microscope_files import write_berkeley, write_dm, write_ser, write_velox
from support import one_error, run_here, save_model

from emdenoise.errors import EXIT_BAD_INPUT, InputError
from emdenoise.inference.denoiser import denoise_file
from emdenoise.inference.tiling import Tiler
from emdenoise.io import micrographs

PROVENANCE = {"emdenoise_version": "test", "model": {"name": "identity", "sha256": "0" * 64}, "settings": {}}
A_PER_PX = 0.25  # every file below: 0.25 A/px, each in its format's own unit

BUILDERS = {
    "a.dm3": lambda p, x: write_dm(p, x, 0.025, "nm", version=3),
    "b.dm4": lambda p, x: write_dm(p, x, 25.0, "pm", version=4),
    "c.ser": lambda p, x: write_ser(p, x, 2.5e-11),
    "d.emd": lambda p, x: write_velox(p, x, 2.5e-11),
    "e.emd": lambda p, x: write_berkeley(p, x, 0.025),
}


def identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _frames(path):
    with micrographs.open_input(path) as src:
        return src, np.stack([f for im in src.images for f in src.iter_frames(im)])


@pytest.mark.extra("formats")
@pytest.mark.parametrize("shape", [(40, 48), (3, 40, 48)])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_microscope_file_round_trips_with_its_calibration(tmp_path, name, shape):
    dtype = np.uint16 if name[-3:] in ("dm3", "dm4", "ser") else np.float32
    data = np.random.default_rng(1).integers(0, 4000, shape).astype(dtype)
    BUILDERS[name](tmp_path / name, data)
    src, frames = _frames(tmp_path / name)
    (image,) = src.images
    assert image.shape == shape and image.pixel_size == pytest.approx(A_PER_PX, rel=1e-6)
    np.testing.assert_array_equal(frames.reshape(shape), data)

    out = micrographs.output_path(tmp_path / "out", micrographs.Path(name))
    with micrographs.open_input(tmp_path / name) as src:
        denoise_file(src, out, Tiler(identity, 32, 8, 4), PROVENANCE)
    back, back_frames = _frames(out)  # the output is read by the same path, calibration included
    assert back.images[0].pixel_size == pytest.approx(A_PER_PX, rel=1e-6)
    np.testing.assert_array_equal(back_frames.reshape(shape), data.astype(np.float32))
    assert "identity" in json.dumps(micrographs.read_provenance(out))
    if name.endswith(".emd"):
        assert out.name == name and back.fmt == "emd"
        with h5py.File(out, "r") as fh:
            assert fh.attrs["version_major"] == 0 and "signals" in fh
    else:
        assert out.name == name + ".tif" and back.fmt == "tiff"
        with tifffile.TiffFile(out) as tif:
            # an ImageJ TIFF in nm (Fiji reads the spacing), never a print resolution in centimetres
            assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm"
            assert tif.pages[0].resolution[0] == pytest.approx(10 / A_PER_PX, rel=1e-6)


@pytest.mark.extra("formats")
@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_damaged_microscope_file_is_one_line_input_error(tmp_path, name, damage):
    path = tmp_path / name
    BUILDERS[name](path, np.ones((2, 40, 48), np.uint16 if not name.endswith(".emd") else np.float32))
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 3]
    else:
        for k in range(16, len(raw) // 2, 7):
            raw[k] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError) as err:
        _frames(path)
    assert str(path) in err.value.message and "not a readable" in err.value.message
    assert "\n" not in err.value.message


def test_emi_companions_are_not_inputs(tmp_path, caplog):
    write_ser(tmp_path / "s_1.ser", np.zeros((40, 40), np.uint16), 1e-10)
    (tmp_path / "s.emi").write_bytes(b"emi metadata")
    found = micrographs.find_inputs(tmp_path, "*", tmp_path / "out", micrographs.logging.getLogger("t"))
    assert found == [tmp_path / "s_1.ser"] and "skipping" not in caplog.text


def test_calibration_of_tiff_imagej_ome_mrc_hdf5_and_hyperspy(tmp_path):
    frame = np.zeros((32, 32), np.float32)
    tifffile.imwrite(tmp_path / "cm.tif", frame, resolution=(1e7, 1e7), resolutionunit="CENTIMETER")  # 10 A/px
    tifffile.imwrite(tmp_path / "ij.tif", frame, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "nm"})
    tifffile.imwrite(tmp_path / "ome.ome.tif", frame, metadata={"PhysicalSizeX": 0.125, "PhysicalSizeXUnit": "nm"})
    tifffile.imwrite(tmp_path / "dpi.tif", frame, resolution=(72.0, 72.0), resolutionunit="INCH")
    with mrcfile.new(tmp_path / "m.mrc") as mrc:
        mrc.set_data(frame)
        mrc.voxel_size = 0.19
    with h5py.File(tmp_path / "h.h5", "w") as fh:
        fh["g/image"] = frame
        fh["g"].attrs["pixel_size"], fh["g"].attrs["pixel_size_unit"] = 0.02, "nm"
    for name, (sy, sx) in {"hs.hspy": (0.03, 0.03), "skew.hspy": (0.03, 0.05)}.items():  # HyperSpy's layout
        with h5py.File(tmp_path / name, "w") as fh:
            fh["Experiments/s/data"] = np.zeros((2, 32, 32), np.uint16)
            for k, (scale, units) in enumerate([(1.0, ""), (sy, "nm"), (sx, "nm")]):
                fh.create_group(f"Experiments/s/axis-{k}").attrs.update({"scale": scale, "units": units})
    expected = {"cm.tif": 10.0, "ij.tif": 5.0, "ome.ome.tif": 1.25, "dpi.tif": None, "m.mrc": 0.19, "h.h5": 0.2}
    expected |= {"hs.hspy": 0.3, "skew.hspy": None}  # non-square pixels: no pixel size
    for name, size in expected.items():
        with micrographs.open_input(tmp_path / name) as src:
            got = src.images[0].pixel_size
            assert got == (pytest.approx(size, rel=1e-5) if size else None), (name, src.images[0].calibration)


@pytest.mark.extra("formats")
@pytest.mark.parametrize("name", ["a.dm3", "b.dm4", "c.ser", "d.emd", "e.emd"])
def test_denoise_task_exits_2_on_a_damaged_microscope_file(tmp_path, capsys, name):
    inputs = tmp_path / "in"
    inputs.mkdir()
    BUILDERS[name](inputs / name, np.ones((40, 48), np.uint16 if not name.endswith(".emd") else np.float32))
    raw = (inputs / name).read_bytes()
    (inputs / name).write_bytes(raw[: len(raw) // 4])
    save_model(tmp_path / "models")
    paths = {"input_dir": inputs, "model_dir": tmp_path / "models", "output_dir": tmp_path / "out"}
    code, err = run_here(capsys, "denoise", paths, "denoise.device=cpu")
    one_error(code, err, EXIT_BAD_INPUT, name)


def test_without_rosettasciio_a_microscope_file_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    write_dm(tmp_path / "a.dm3", np.zeros((32, 32), np.uint16), 0.02)
    for module in [m for m in sys.modules if m == "rsciio" or m.startswith("rsciio.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "rsciio", None)  # import rsciio now raises ImportError
    with pytest.raises(InputError) as err:
        micrographs.open_input(tmp_path / "a.dm3")
    assert (
        str(tmp_path / "a.dm3") in err.value.message
        and 'pip install -e ".[formats]" in the emdenoise clone' in err.value.message
    )
