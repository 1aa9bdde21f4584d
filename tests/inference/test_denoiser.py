"""Inference (emdenoise.inference.denoiser): the Denoiser's normalisation, and the file engine of the denoise
task: what it writes, the record it returns, the fingerprint that decides reuse, the warm-up kept out of
the count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emdenoise import models
from emdenoise.inference.denoiser import Denoiser, FileDenoiser
from emdenoise.inference.tiling import TilePlan, Tiler
from emdenoise.io import micrographs, modelfile
from emdenoise.outputs import sha256_file

NORM = {"noisy": {"mean": 100.0, "std": 30.0}, "clean": {"mean": 90.0, "std": 20.0}}


def test_denoiser_normalises_in_and_out_as_in_training():
    den = Denoiser(torch.nn.Identity(), {"model": "identity", "normalisation": NORM}, "cpu", "fp32")
    noisy = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    out = den.denoise(noisy)
    assert out.dtype == torch.float32 and out.shape == noisy.shape
    torch.testing.assert_close(out, (noisy - 100.0) / 30.0 * 20.0 + 90.0)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        den.denoise(noisy[:, 0])
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        Denoiser(torch.nn.Identity(), {"model": "identity", "normalisation": NORM}, "cpu", "auto")


@pytest.fixture
def model_file(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "models" / "dncnn" / "em_denoise_model.h5"
    modelfile.save_model(
        path,
        models.build("dncnn", depth=3, channels=8).eval(),
        {"model": "dncnn", "options": {"depth": 3, "channels": 8}, "normalisation": NORM},
    )
    return path


def _engine(model_file: Path, overlap: int = 16) -> FileDenoiser:
    return FileDenoiser(model_file, torch.device("cpu"), "fp32", tile_size=64, overlap=overlap, batch_size=4)


def test_file_denoiser_writes_the_tiled_model_output_and_returns_its_record(tmp_path, model_file):
    stack = np.random.default_rng(0).normal(100, 30, (3, 80, 96)).astype(np.float32)
    np.save(tmp_path / "in.npy", stack)
    engine = _engine(model_file)
    result = engine.denoise(tmp_path / "in.npy", tmp_path / "staged.npy", tmp_path / "final.npy")

    tiler = Tiler(Denoiser.from_file(model_file, "cpu", "fp32").denoise, 64, 16, 4)
    expected = np.stack([tiler.denoise(frame) for frame in stack])
    np.testing.assert_array_equal(np.load(tmp_path / "staged.npy"), expected)
    assert not (tmp_path / "final.npy").exists()  # written where asked, named as it will be
    record = result.record
    assert result.frames == 3 and result.seconds > 0 and record["frames_per_s"] > 0
    assert result.shapes == "3 frames of 80x96"
    assert record["output"] == {"file": str(tmp_path / "final.npy"), "format": "npy", "dtype": "float32"}
    assert record["model"]["sha256"] == sha256_file(model_file) == engine.model_sha256
    assert record["model"]["name"] == "dncnn" and record["model"]["normalisation"] == NORM
    assert record["input"]["images"] == [{"name": "", "shape": [3, 80, 96], "dtype": "float32", "pixel_size": None}]
    assert record["sampling"][0]["status"] == "unknown"  # an NPY file and a model without a pixel size
    assert record["detector"][0]["refused"]  # Gaussian noise of one level: no detector response to fit
    assert record["settings"] == {
        "tile_size": 64,
        "tile_overlap": 16,
        "batch_size": 4,
        "frame_level": "auto",
        "device": "cpu",
        "precision": "fp32",
        "pixel_size": 0.0,
        "rescale": "auto",
        "scale_tolerance": 0.05,
    }
    assert record["fingerprint"] == engine.fingerprint(tmp_path / "in.npy")
    # the warm-up batch goes to the model directly: only the file's own tiles are counted
    assert engine.tiler.tiles_run == 3 * TilePlan.make(80, 96, 64, 16).count


def test_up_to_date_needs_the_output_its_sidecar_and_the_same_fingerprint(tmp_path, model_file):
    src, out = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, np.ones((32, 32), np.float32))
    engine = _engine(model_file)
    fingerprint = engine.fingerprint(src)
    assert not engine.up_to_date(out, fingerprint)
    record = engine.denoise(src, out).record
    assert not engine.up_to_date(out, fingerprint)  # no sidecar yet
    micrographs.sidecar_of(out).write_text(json.dumps(record))
    assert micrographs.sidecar_of(out) == tmp_path / "out.npy.json"
    assert engine.up_to_date(out, fingerprint)
    assert not engine.up_to_date(out, _engine(model_file, overlap=8).fingerprint(src))  # another setting
    stat = src.stat()
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert not engine.up_to_date(out, engine.fingerprint(src))  # a touched input
    micrographs.sidecar_of(out).write_text("{not json")
    assert not engine.up_to_date(out, fingerprint)  # a damaged sidecar: computed again


def test_the_sidecar_records_the_detector_model_of_each_image(tmp_path):
    from noisy_images import atom_image, beam, lattice_sites

    from emdenoise.classical import methods as classical
    from emdenoise.method import Context

    scene = (2.0 - atom_image(256, lattice_sites(256, 12.0), contrast=0.5, width=2.5)) * (0.3 + beam(256))
    frame = np.round(1000.0 + 7.5 * np.random.default_rng(2).poisson(40.0 * scene)).astype(np.uint16)
    np.save(tmp_path / "in.npy", frame)
    engine = FileDenoiser(classical.build("gaussian", Context(), 1.0), torch.device("cpu"), "fp32")
    record = engine.denoise(tmp_path / "in.npy", tmp_path / "out.npy").record
    (found,) = record["detector"]
    assert found["frame"] == 0 and found["image"] == "" and found["read_noise"] is None
    assert found["region"] == [0, 0, 256, 256]  # the whole frame (larger ones: the central 1024 px)
    assert abs(found["gain"] - 7.5) < 3.5 * found["gain_error"] and found["gain_error"] < 1.0
    assert abs(found["offset"] - 1000.0) < 3.5 * found["offset_error"]
    json.dumps(record, allow_nan=False)  # plain JSON numbers
