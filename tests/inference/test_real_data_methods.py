"""Every way ``denoise`` names (the zoo model and every classical filter) on crops of the real micrographs of
``../shared/realdata`` (skipped where absent): finite frames of the input's shape, the calibration kept, and the
consistency check's answer for each frame. The numbers themselves are on the docs page "Real data"
(``bash run/realdata.sh``)."""

from __future__ import annotations

import numpy as np
import pytest

import emdenoise
from emdenoise.classical import names
from emdenoise.evaluation.consistency import MAX_DEVIATION

ZOO = "zoo:hrtem-ffdnet"
CROP = 128
FILES = {
    "haadf": "srtio3_haadf_osiris/Tecnai_Osiris_SrTiO3.tif",
    "abf": "srtio3_abf_movie/stem_abf_data_imagestack.hspy",
}
METHODS = [ZOO] + [
    pytest.param(name, marks=pytest.mark.extra("bm3d")) if name in names.NEEDS_BM3D else name for name in names.ALL
]


@pytest.fixture(scope="module")
def crops(realdata) -> dict[str, emdenoise.Micrograph]:
    """A centre crop of the first frame of each real file, with the file's calibration."""
    out = {}
    for key, name in FILES.items():
        movie = emdenoise.load(realdata / name)
        frame = movie.image.reshape(-1, *movie.image.shape[-2:])[0]
        top, left = (side // 2 - CROP // 2 for side in frame.shape)
        crop = frame[top : top + CROP, left : left + CROP]
        out[key] = emdenoise.Micrograph(crop, movie.pixel_size, movie.calibration, key)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_every_method_denoises_the_real_crops_with_a_consistency_answer(crops, method):
    for key, micrograph in crops.items():
        result = emdenoise.denoise(micrograph, method, device="cpu")
        assert result.image.shape == (CROP, CROP) and result.image.dtype == np.float32, key
        assert np.isfinite(result.image).all(), key
        assert result.pixel_size == micrograph.pixel_size and result.pixel_size > 0.09, key
        (check,) = result.checks
        assert check["deviance_ratio"] is not None and check["max_deviation"] == MAX_DEVIATION, (key, check)
        assert result.flagged == ([0] if check["inconsistent"] else []), key


def test_the_check_flags_the_zoo_model_on_stem_detector_values_but_not_every_estimate(crops):
    """The zoo model (HRTEM graphene phase contrast, normalised counts) maps these detector values (offsets of
    tens of thousands) to something near zero: the check must flag it; a light smoothing that keeps the lattice
    must pass on each file, or the check flags everything and says nothing. (The classical filters at their
    default strength erase most of the ABF crop's finest lattice peak, period 4.1 px, and the check's lattice
    test flags them all there.)"""
    from scipy import ndimage

    from emdenoise.evaluation import consistency

    for key, micrograph in crops.items():
        assert emdenoise.denoise(micrograph, ZOO, device="cpu").flagged == [0], key
        frame = np.asarray(micrograph.image, dtype=np.float64)
        light, heavy = (consistency.check(frame, ndimage.gaussian_filter(frame, s)) for s in (0.5, 3.0))
        assert light.verdict == "consistent" and heavy.inconsistent, (key, light.summary(), heavy.summary())
