"""The Python API (emdenoise.api): ``import emdenoise`` stays light, denoise/load on arrays, paths and models,
and the docs page docs/guides/python.md, whose python blocks run here top to bottom."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from support import save_model

import emdenoise
from emdenoise.errors import InputError
from emdenoise.inference.denoiser import Denoiser
from emdenoise.inference.tiling import Tiler

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "python.md"


def test_import_emdenoise_loads_no_torch():
    code = "import sys, emdenoise; emdenoise.__version__; print('torch' in sys.modules, 'numpy' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_python_guide_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for k, block in enumerate(blocks):
        exec(compile(block, f"{GUIDE.name} block {k + 1}", "exec"), namespace)
    assert (tmp_path / "movie_denoised.tif").is_file()


def test_a_model_by_its_folder_is_the_model_through_the_tiler(tmp_path):
    path = save_model(tmp_path / "models", "dncnn", depth=3, channels=8)
    frames = np.random.default_rng(1).normal(0.5, 0.3, (2, 48, 40)).astype(np.float32)
    result = emdenoise.denoise(frames, method=str(path.parent), device="cpu", precision="fp32", max_deviation=0)
    expected = np.stack([Tiler(Denoiser.from_file(path, "cpu", "fp32").denoise, 0).denoise(f) for f in frames])
    np.testing.assert_allclose(result.image, expected, rtol=1e-5, atol=1e-6)  # batched: float rounding apart
    assert result.method == "dncnn" and result.flagged == [] and result.pixel_size is None
    by_name = emdenoise.denoise(frames, method="model", model_dir=tmp_path / "models", precision="fp32")
    np.testing.assert_array_equal(by_name.image, result.image)
    tiled = emdenoise.denoise(frames, method=str(path), precision="fp32", tile_size=32, tile_overlap=8)
    assert tiled.settings["tile_size"] == 32 and np.abs(tiled.image - expected).max() < 0.05


def test_a_path_is_loaded_with_its_calibration_and_a_flagged_frame_is_reported(tmp_path):
    path = save_model(tmp_path / "models", "dncnn", extra_meta={"pixel_size": 0.4}, depth=3, channels=8)
    rng = np.random.default_rng(2)
    movie = rng.poisson(40, (2, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", movie, imagej=True, resolution=(50, 50), metadata={"unit": "nm"})
    result = emdenoise.denoise(tmp_path / "m.tif", method=str(path), precision="fp32")
    assert result.image.shape == movie.shape and result.pixel_size == pytest.approx(0.2)
    assert result.flagged == [0, 1]  # an untrained model's output has nothing to do with the counts
    assert all(check["inconsistent"] for check in result.checks)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="at least 16x16"):
        emdenoise.denoise(np.zeros((8, 8)))
    with pytest.raises(InputError, match="expected a model file"):
        emdenoise.denoise(np.zeros((32, 32)), method=str(tmp_path / "none.h5"))
    with pytest.raises(InputError, match="zoo:nothing"):
        emdenoise.denoise(np.zeros((32, 32)), method="zoo:nothing")
    # the keywords are the denoise: parameters and are checked as they are
    with pytest.raises(InputError, match=r"denoise\.rescale: expected one of 'auto', 'never', got 'sometimes'"):
        emdenoise.denoise(np.zeros((32, 32)), rescale="sometimes")
    with pytest.raises(InputError, match=r"denoise\.frame_level"):
        emdenoise.denoise(np.zeros((32, 32)), frame_level="raw")
    with pytest.raises(InputError, match=r"denoise\.tile_overlap"):
        emdenoise.denoise(np.zeros((32, 32)), tile_overlap=-1)
