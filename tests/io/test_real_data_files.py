"""The real micrographs of ``../shared/realdata`` (see its README; skipped where the folder is absent) through the
readers and back out of the denoise command: the HAADF TIFF with its ImageJ calibration, the ABF movie as
HyperSpy's ``.hspy`` (read by the HDF5 reader and by rosettasciio alike) and as a plain TIFF stack."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from support import run_here

from emdenoise.io import micrographs

HAADF = "srtio3_haadf_osiris/Tecnai_Osiris_SrTiO3.tif"
HSPY = "srtio3_abf_movie/stem_abf_data_imagestack.hspy"
STACK = "srtio3_abf_movie/abf_movie_5x512x512.tif"
HAADF_A_PER_PX = 0.1352  # ImageJ: 73.98 pixels per nm
ABF_A_PER_PX = 0.0920  # HyperSpy axes: 0.009202 nm


def read_all(path):
    with micrographs.open_input(path) as src:
        (image,) = src.images
        frames = np.stack([np.asarray(image.read(i)) for i in range(image.frames)])
        return image, frames.reshape(image.shape)


def test_the_haadf_tiff_reads_with_its_imagej_calibration(realdata):
    image, frame = read_all(realdata / HAADF)
    assert image.shape == (512, 512) and image.dtype == np.uint16
    assert image.pixel_size == pytest.approx(HAADF_A_PER_PX, abs=1e-4) and "ImageJ" in image.calibration
    assert (frame.min(), frame.max()) == (33147, 34200)  # detector values on an offset, as the README says


def test_the_hspy_movie_reads_with_its_axes_calibration_as_hdf5_and_through_rosettasciio(realdata):
    image, movie = read_all(realdata / HSPY)
    assert image.shape == (5, 512, 512) and image.dtype == np.uint16
    assert image.pixel_size == pytest.approx(ABF_A_PER_PX, abs=1e-4) and "HyperSpy axes" in image.calibration
    pytest.importorskip("rsciio", reason="needs the optional extra: pip install 'emdenoise[formats]'")
    from rsciio import hspy

    (signal,) = hspy.file_reader(str(realdata / HSPY))
    np.testing.assert_array_equal(signal["data"], movie)
    y, x = signal["axes"][-2:]
    assert (y["units"], x["units"]) == ("nm", "nm") and 10 * x["scale"] == pytest.approx(image.pixel_size)


def test_the_tiff_stack_holds_the_same_frames_without_a_calibration(realdata):
    image, stack = read_all(realdata / STACK)
    _, movie = read_all(realdata / HSPY)
    assert image.pixel_size is None and "not a calibration" in image.calibration
    np.testing.assert_array_equal(stack, movie)


@pytest.mark.parametrize("name", [HAADF, pytest.param(HSPY, marks=pytest.mark.slow)])  # 5 frames: ~4 s of CPU
def test_the_denoise_command_keeps_a_real_micrographs_calibration(realdata, tmp_path, capsys, name):
    inputs = tmp_path / "in"
    inputs.mkdir()
    source = realdata / name
    (inputs / source.name).symlink_to(source)  # read in place: never copied
    paths = {"input_dir": inputs, "output_dir": tmp_path / "out", "model_dir": tmp_path / "models"}
    code, err = run_here(capsys, "denoise", paths, "denoise.method=gaussian", "denoise.device=cpu")
    assert code == 0, err
    before, _ = read_all(source)
    after, frames = read_all(tmp_path / "out" / source.name)
    assert after.shape == before.shape and np.isfinite(frames).all()
    assert after.pixel_size == pytest.approx(before.pixel_size, rel=1e-6)
    if source.suffix == ".tif":  # the ImageJ calibration as the input had it
        with tifffile.TiffFile(tmp_path / "out" / source.name) as tif, tifffile.TiffFile(source) as orig:
            assert tif.imagej_metadata["unit"] == orig.imagej_metadata["unit"]
            assert tif.pages.first.resolution == pytest.approx(orig.pages.first.resolution)
    else:  # HyperSpy's layout kept: rosettasciio reads the output with its axes
        rsciio_hspy = pytest.importorskip("rsciio.hspy", reason="needs the optional extra 'formats'")
        (signal,) = rsciio_hspy.file_reader(str(tmp_path / "out" / source.name))
        assert signal["data"].shape == before.shape and 10 * signal["axes"][-1]["scale"] == pytest.approx(
            ABF_A_PER_PX, abs=1e-4
        )
