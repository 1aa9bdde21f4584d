"""Real microscope files, as microscopes wrote them: the Gatan DM3 and Velox EMD files of the temul-toolkit
0.1.9 wheel (fetched into the cache by the ``example_files`` fixture, never committed) read with their shape,
dtype and calibration, and denoised by the command line and the API with the calibration kept."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from support import run_here

import emdenoise
from emdenoise.io import micrographs

# name -> (shape, dtype, A/px as the files' authors give it: 0.127 and 0.0750)
EXPECTED = {
    "example_Se_implanted_MoS2.dm3": ((1024, 1024), np.uint32, 0.127),
    "example_Au_nanoparticle.emd": ((2048, 2048), np.uint16, 0.0750),
}
OUTPUT_OF = {"example_Se_implanted_MoS2.dm3": "example_Se_implanted_MoS2.dm3.tif"}
A_PER_PX_TOLERANCE = 5e-4  # the stated pixel sizes are rounded to three decimals


@pytest.mark.extra("formats")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_a_real_microscope_file_reads_with_its_shape_dtype_and_calibration(example_files, name):
    shape, dtype, a_per_px = EXPECTED[name]
    with micrographs.open_input(example_files[name]) as src:
        (image,) = src.images
        assert image.shape == shape and image.dtype == dtype
        assert image.pixel_size == pytest.approx(a_per_px, abs=A_PER_PX_TOLERANCE)
        assert "nm" in image.calibration  # read from the file's own axes (nanometres in both)
        frame = np.asarray(image.read(0))
    assert frame.shape == shape and frame.min() > 0 and frame.std() > 0  # detector values, not a blank


@pytest.mark.extra("formats")
@pytest.mark.parametrize(  # the EMD file's 2048x2048 frame and its check: about 13 s of CPU
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n.endswith(".emd") else []) for n in EXPECTED]
)
def test_the_denoise_command_keeps_a_real_files_calibration(example_files, tmp_path, capsys, name):
    shape, _, a_per_px = EXPECTED[name]
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / name).symlink_to(example_files[name])  # the cached file, read in place
    paths = {"input_dir": inputs, "output_dir": tmp_path / "out", "model_dir": tmp_path / "models"}
    code, err = run_here(capsys, "denoise", paths, "denoise.method=median", "denoise.device=cpu")
    assert code == 0, err
    out = tmp_path / "out" / OUTPUT_OF.get(name, name)
    with micrographs.open_input(out) as back:
        (image,) = back.images
        assert image.shape == shape and image.dtype == np.float32
        assert image.pixel_size == pytest.approx(a_per_px, abs=A_PER_PX_TOLERANCE)
        assert np.isfinite(np.asarray(image.read(0))).all()
    if out.suffix == ".tif":  # what Fiji reads: ImageJ's unit and the resolution tags in pixels per nm
        with tifffile.TiffFile(out) as tif:
            assert tif.imagej_metadata["unit"] == "nm"
            per_nm = tif.pages.first.resolution[0]
            assert 10.0 / per_nm == pytest.approx(a_per_px, abs=A_PER_PX_TOLERANCE)


@pytest.mark.extra("formats")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_api_denoises_a_real_file_with_its_calibration(example_files, name):
    shape, _, a_per_px = EXPECTED[name]
    micrograph = emdenoise.load(example_files[name])
    crop = emdenoise.api.Micrograph(micrograph.image[:256, :256], micrograph.pixel_size, micrograph.calibration)
    result = emdenoise.denoise(crop, "gaussian")
    assert result.image.shape == (256, 256) and np.isfinite(result.image).all()
    assert result.pixel_size == micrograph.pixel_size == pytest.approx(a_per_px, abs=A_PER_PX_TOLERANCE)
    assert len(result.checks) == 1 and result.checks[0]["deviance_ratio"] is not None
