"""The denoise task: model selection, and the command line end to end (every format, the model in process,
provenance, reruns that keep what is up to date, one-line errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from noisy_images import atom_image, lattice_sites
from PIL import Image

from emdenoise import models
from emdenoise.errors import EXIT_BAD_INPUT, InputError
from emdenoise.inference.denoiser import Denoiser
from emdenoise.inference.tiling import Tiler
from emdenoise.io import micrographs, modelfile
from emdenoise.layout import MODEL_FILE
from emdenoise.outputs import sha256_file
from emdenoise.tasks import denoise as task

mrcfile = pytest.importorskip("mrcfile")
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ models


def _save_model(model_dir: Path, name: str = "sciml_ae", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = models.build(name).eval()
    path = model_dir / name / MODEL_FILE
    modelfile.save_model(
        path,
        net,
        {
            "model": name,
            "options": {},
            "normalisation": {"noisy": {"mean": 100.0, "std": 30.0}, "clean": {"mean": 90.0, "std": 20.0}},
        },
    )
    return path


def test_model_selection(tmp_path):
    with pytest.raises(InputError, match="not found"):
        task.select_model(tmp_path / "models", "auto")
    (tmp_path / "models").mkdir()
    with pytest.raises(InputError, match="found none"):
        task.select_model(tmp_path / "models", "auto")
    path = _save_model(tmp_path / "models")
    assert task.select_model(tmp_path / "models", "auto") == ("sciml_ae", path)
    (tmp_path / "models" / "dncnn").mkdir()
    (tmp_path / "models" / "dncnn" / MODEL_FILE).write_bytes(b"x")
    with pytest.raises(InputError) as err:
        task.select_model(tmp_path / "models", "auto")
    assert "dncnn, sciml_ae" in err.value.message and "denoise.model" in err.value.message
    assert task.select_model(tmp_path / "models", "sciml_ae") == ("sciml_ae", path)
    with pytest.raises(InputError, match="expected one of dncnn, sciml_ae, got 'unet'"):
        task.select_model(tmp_path / "models", "unet")


# ------------------------------------------------------------------------------------------------ CLI


def _cli(tmp_path, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "emdenoise",
            "denoise",
            f"--input_dir={tmp_path / 'in'}",
            f"--model_dir={tmp_path / 'models'}",
            f"--output_dir={tmp_path / 'out'}",
            f"--parameters_file={tmp_path / 'p.yaml'}",
            f"--log_dir={tmp_path / 'logs'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "EMDENOISE_PROGRESS": "0", "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture
def workspace(tmp_path):
    _save_model(tmp_path / "models")
    (tmp_path / "in").mkdir()
    (tmp_path / "p.yaml").write_text(
        "denoise:\n  tile_size: 64\n  tile_overlap: 16\n  batch_size: 4\n  device: cpu\n  precision: fp32\n"
    )
    return tmp_path


@pytest.mark.slow
def test_cli_denoises_each_format_like_the_model_in_process(workspace):
    rng = np.random.default_rng(3)
    stack = (rng.poisson(100, (3, 96, 80))).astype(np.uint16)
    tifffile.imwrite(workspace / "in" / "stack.tif", stack, photometric="minisblack")
    frame = (rng.poisson(100, (72, 100))).astype(np.float32)
    with mrcfile.new(workspace / "in" / "one.mrc") as mrc:
        mrc.set_data(frame)
    png = rng.poisson(100, (40, 50)).astype(np.uint8)
    Image.fromarray(png).save(workspace / "in" / "p.png")
    res = _cli(workspace)
    assert res.returncode == 0, res.stderr
    assert "frames/s" in res.stderr and "frames/s" in (workspace / "logs" / "denoise.log").read_text()

    den = Denoiser.from_file(workspace / "models/sciml_ae" / MODEL_FILE, "cpu", "fp32")
    tiler = Tiler(den.denoise, 64, 16, 4)
    expected_stack = np.stack([tiler.denoise(f) for f in stack])
    out_stack = tifffile.imread(workspace / "out" / "stack.tif")
    assert out_stack.dtype == np.float32 and out_stack.shape == stack.shape
    np.testing.assert_allclose(out_stack, expected_stack, rtol=1e-4, atol=1e-3)
    assert np.abs(out_stack - stack).mean() > 1  # the model did something
    with mrcfile.open(workspace / "out" / "one.mrc") as mrc:
        np.testing.assert_allclose(mrc.data, tiler.denoise(frame), rtol=1e-4, atol=1e-3)
    out_png = np.asarray(Image.open(workspace / "out" / "p.png"))
    assert out_png.dtype == np.uint8 and out_png.shape == png.shape

    sidecar = json.loads((workspace / "out" / "stack.tif.json").read_text())
    assert sidecar["model"]["name"] == "sciml_ae" and sidecar["frames"] == 3 and sidecar["frames_per_s"] > 0
    assert sidecar["model"]["sha256"] == sha256_file(workspace / "models/sciml_ae" / MODEL_FILE)
    assert sidecar["input"]["file"] == str(workspace / "in" / "stack.tif")
    assert micrographs.read_provenance(workspace / "out" / "stack.tif")["model"]["sha256"] == sidecar["model"]["sha256"]

    # a second run keeps what is up to date; a changed setting recomputes
    before = (workspace / "out" / "stack.tif").stat().st_mtime_ns
    res = _cli(workspace)
    assert res.returncode == 0 and "up to date" in res.stderr
    assert (workspace / "out" / "stack.tif").stat().st_mtime_ns == before
    res = _cli(workspace, "--set", "denoise.tile_overlap=8")
    assert res.returncode == 0 and (workspace / "out" / "stack.tif").stat().st_mtime_ns != before


def test_cli_corrupt_file_exits_2_with_one_line_naming_it(workspace):
    np.save(workspace / "in" / "good.npy", np.zeros((32, 32)))
    (workspace / "in" / "broken.tif").write_bytes(b"II*\x00garbage")
    res = _cli(workspace)
    assert res.returncode == EXIT_BAD_INPUT
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.tif" in errors[0] and "Traceback" not in res.stderr
    assert not (workspace / "out" / "good.npy").exists()  # headers are all checked before any work


@pytest.mark.slow
def test_cli_several_models_with_auto_exits_2_listing_them(workspace):
    np.save(workspace / "in" / "good.npy", np.zeros((32, 32)))
    _save_model(workspace / "models", "dncnn")
    (workspace / "p.yaml").write_text("denoise:\n  device: cpu\n")
    res = _cli(workspace)
    assert res.returncode == EXIT_BAD_INPUT
    assert "dncnn, sciml_ae" in res.stderr and "denoise.model" in res.stderr
    res = _cli(workspace, "--set", "denoise.model=dncnn", "--set", "denoise.tile_overlap=200")
    assert res.returncode == EXIT_BAD_INPUT and "denoise.tile_overlap" in res.stderr


@pytest.mark.slow
def test_each_output_is_checked_against_its_input_and_an_inconsistent_one_is_named(workspace):
    rng = np.random.default_rng(4)
    clean = atom_image(96, lattice_sites(96, 8.0), contrast=0.4)
    stack = rng.poisson(100 * clean, (2, 96, 96)).astype(np.uint16)
    tifffile.imwrite(workspace / "in" / "lattice.tif", stack, photometric="minisblack")
    res = _cli(workspace)  # an untrained model: its output has nothing to do with the counts
    assert res.returncode == 0, res.stderr
    check = json.loads((workspace / "out" / "lattice.tif.json").read_text())["consistency"]
    assert len(check["frames"]) == 2 and check["max_deviation"] == 0.07
    assert check["inconsistent"] and check["inconsistent_frames"] == [0, 1]
    warnings = [line for line in res.stderr.splitlines() if "inconsistent with its input" in line]
    assert len(warnings) == 1 and str(workspace / "in" / "lattice.tif") in warnings[0]
    res = _cli(workspace, "--set", "denoise.max_deviation=0", "--set", "denoise.tile_overlap=8")
    assert res.returncode == 0 and "inconsistent" not in res.stderr
    assert "consistency" not in json.loads((workspace / "out" / "lattice.tif.json").read_text())
