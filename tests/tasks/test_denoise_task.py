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
    advice = [line for line in res.stderr.splitlines() if "advice: " in line]  # flagged, 2 small frames
    assert len(advice) == 1 and "advice: classical: 2 of 2 frame(s) flagged" in advice[0], advice
    res = _cli(workspace, "--set", "denoise.max_deviation=0", "--set", "denoise.tile_overlap=8")
    assert res.returncode == 0 and "inconsistent" not in res.stderr and "advice: no advice" in res.stderr
    assert "consistency" not in json.loads((workspace / "out" / "lattice.tif.json").read_text())


# ------------------------------------------------------------------------------------ any method, from anywhere


def _anywhere(cwd: Path, *args, env: dict | None = None):
    """``python -m emdenoise ARGS`` run in ``cwd``, a folder with no workspace and no parameters file."""
    return subprocess.run(
        [sys.executable, "-m", "emdenoise", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "EMDENOISE_PROGRESS": "0",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        },
    )


def _movie(path: Path, frames: int = 2, nm_per_px: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(5)
    clean = atom_image(96, lattice_sites(96, 8.0), contrast=0.4)
    stack = rng.poisson(50 * clean, (frames, 96, 96)).astype(np.uint16)
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(1 / nm_per_px, 1 / nm_per_px), metadata={"unit": "nm", "axes": "TYX"}
    )
    return stack


@pytest.mark.slow
def test_a_classical_method_runs_from_any_folder_on_a_file_or_a_folder(tmp_path):
    from emdenoise.classical import methods as classical

    (tmp_path / "in").mkdir()
    stack = _movie(tmp_path / "in" / "movie.tif")
    np.save(tmp_path / "in" / "frame.npy", stack[0].astype(np.float32))
    res = _anywhere(tmp_path, "denoise", "--input", "in/movie.tif", "--method", "wiener")
    assert res.returncode == 0, res.stderr
    assert "built-in defaults" in res.stderr
    assert not (tmp_path / "workspace").exists()  # nothing written outside the given paths
    out = tifffile.imread(tmp_path / "in" / "movie_denoised.tif")
    expected = np.stack([classical.get("wiener").apply(f, 2.0).astype(np.float32) for f in stack])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    sidecar = json.loads((tmp_path / "in" / "movie_denoised.tif.json").read_text())
    assert sidecar["model"]["name"] == "wiener" and sidecar["model"]["kind"] == "classical"
    assert sidecar["model"]["settings"]["floor"] == 2.0

    # a folder: every input beside itself, earlier outputs are not inputs, the rerun keeps what is up to date
    res = _anywhere(tmp_path, "denoise", "--input", "in", "--method", "wiener")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "frame.npy",
        "frame_denoised.npy",
        "frame_denoised.npy.json",
        "movie.tif",
        "movie_denoised.tif",
        "movie_denoised.tif.json",
    ]
    assert "movie_denoised.tif: up to date" in res.stderr and "skipping" not in res.stderr
    np.testing.assert_allclose(np.load(tmp_path / "in" / "frame_denoised.npy"), expected[0], rtol=1e-5, atol=1e-4)

    # --output: a folder, the inputs' own names
    res = _anywhere(tmp_path, "denoise", "--input", "in", "--method", "gaussian", "--output", "out")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.*[!n]")) == ["frame.npy", "movie.tif"]
    res = _anywhere(tmp_path, "denoise", "--input", "in", "--method", "sharpen")
    assert res.returncode == EXIT_BAD_INPUT and "denoise.method" in res.stderr and "wiener" in res.stderr


def test_help_lists_the_flags_and_the_formats(tmp_path):
    res = _anywhere(tmp_path, "denoise", "--help")
    assert res.returncode == 0
    for flag in ("--input", "--output", "--model", "--method", "--pixel-size", "--tile-size", "--device", "--set"):
        assert flag in res.stdout
    assert "formats read" in res.stdout and "formats written" in res.stdout and "DM3/DM4" in res.stdout


@pytest.mark.slow
def test_a_model_by_its_file_its_folder_its_parent_or_from_the_zoo(tmp_path):
    from emdenoise.inference import methods

    path = _save_model(tmp_path / "models")
    assert methods.find_model(str(path), None) == ("sciml_ae", path)
    assert methods.find_model(str(path.parent), None) == ("sciml_ae", path)
    assert methods.find_model(str(tmp_path / "models"), None) == ("sciml_ae", path)
    assert methods.find_model("sciml_ae", tmp_path / "models") == ("sciml_ae", path)
    with pytest.raises(InputError, match="not found"):
        methods.find_model(str(tmp_path / "nowhere" / "m.h5"), None)

    (tmp_path / "in").mkdir()
    stack = _movie(tmp_path / "in" / "movie.tif", frames=1)
    zoo_dir = tmp_path / "zoo"
    _save_model(zoo_dir)  # zoo_dir/sciml_ae/em_denoise_model.h5, found as zoo:sciml_ae
    env = {"EMDENOISE_ZOO": str(zoo_dir)}
    common = ("--device", "cpu", "--set", "denoise.precision=fp32")
    res = _anywhere(tmp_path, "denoise", "--input", "in", "--model", "zoo:sciml_ae", "--output", "z", *common, env=env)
    assert res.returncode == 0, res.stderr
    res = _anywhere(tmp_path, "denoise", "--input", "in", "--model", str(path.parent), "--output", "f", *common)
    assert res.returncode == 0, res.stderr
    by_zoo, by_folder = tifffile.imread(tmp_path / "z" / "movie.tif"), tifffile.imread(tmp_path / "f" / "movie.tif")
    np.testing.assert_array_equal(by_zoo, by_folder)
    assert np.abs(by_zoo - stack[0]).mean() > 1  # the model did something
    res = _anywhere(tmp_path, "denoise", "--input", "in", "--model", "zoo:nothing", *common, env=env)
    assert res.returncode == EXIT_BAD_INPUT and "zoo:nothing" in res.stderr and "sciml_ae" in res.stderr
    res = _anywhere(tmp_path, "denoise", "--input", "in", *common)  # no model anywhere: say what to give
    assert res.returncode == EXIT_BAD_INPUT and "--model" in res.stderr and "--method" in res.stderr


def test_outputs_are_imagej_hyperstacks_with_the_inputs_calibration(tmp_path, monkeypatch, capsys):
    from emdenoise import cli

    (tmp_path / "in").mkdir()
    _movie(tmp_path / "in" / "movie.tif", frames=3, nm_per_px=0.025)
    monkeypatch.chdir(tmp_path)  # in process, from a folder with no workspace
    assert cli.main(["denoise", "--input", "in/movie.tif", "--method", "gaussian"]) == 0, capsys.readouterr().err
    out = tmp_path / "in" / "movie_denoised.tif"
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm" and tif.imagej_metadata["frames"] == 3
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == (3, 96, 96)
        assert tif.pages[0].resolution == pytest.approx((40.0, 40.0))  # pixels per nm: 0.025 nm/px
        assert not tif.pages[0].description.startswith("{")  # ImageJ's header, not a JSON description
    with micrographs.open_input(out) as back:
        assert back.images[0].pixel_size == pytest.approx(0.25)  # A/px, read back as any input is
    assert micrographs.read_provenance(out)["model"]["name"] == "gaussian"  # in a private tag
