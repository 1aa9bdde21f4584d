"""The training engine and the train task: data in memory, batches and crops, schedules, the train step, model
files and metrics, resume, refused checkpoints, worker processes, torch.compile's fallback.

The tiny processed data_dir (16 train, 4 val, 4 test pairs of 32x40 images, non-square so a swapped axis shows)
and the in-process train command come from tests/conftest.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from training_data import NORM, H, W

from emdenoise.config import params
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import h5safe, modelfile
from emdenoise.layout import CARD
from emdenoise.training import loop as training


def _sealed_hdf5(path: Path) -> bool:
    """HDF5 (its signature after the 512-byte user block) sealed by emdenoise (the sha256 header before it)."""
    data = path.read_bytes()
    start = h5safe.USER_BLOCK
    return data.startswith(b"emdenoise-sha256:") and data[start : start + 8] == h5safe.HDF5_SIGNATURE


def _weights(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return {k: fh["state"][k][()] for k in fh["state"]}


def test_lr_schedules():
    cosine = training.lr_factor("cosine", 100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    step = training.lr_factor("step", 100)
    assert [step(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


# ---------------------------------------------------------------------------------------------- the task


def test_data_keep_their_axes(data_dir):
    train = params.defaults().train.replace(max_train_images=5, patch_size=0)
    data = training.load_data(data_dir, train, NORM, "params")
    with h5py.File(data_dir / "train.h5", "r") as fh:
        raw = fh["noisy"][:5]
    assert data.noisy.shape == (5, 1, H, W)
    torch.testing.assert_close(data.noisy[:, 0], torch.from_numpy((raw - 0.4) / 0.3))
    data.patch = 16
    plan = training.epoch_plan(data, 2, seed=0, epoch=1)
    assert sorted(torch.cat([idx for idx, _, _ in plan]).tolist()) == list(range(5))
    noisy, clean, mask = training.gather(data, *plan[0])
    assert mask is None  # supervised: every pixel in the loss
    (_, j), (y, x) = plan[0][0][:2].tolist(), plan[0][1][1].tolist()
    assert noisy.shape == (2, 1, 16, 16)
    torch.testing.assert_close(noisy[1], data.noisy[j, :, y : y + 16, x : x + 16])


def test_train_writes_model_and_metrics(tmp_path, data_dir, train_cli):
    code, model_dir, out = train_cli(tmp_path, data_dir, epochs=2)
    assert code == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    for key in ("model", "device", "precision", "parameters", "epochs"):
        assert key in metrics and key in metrics["models"]["sciml_ae"]
    assert metrics["model"] == "sciml_ae" and metrics["parameters"] == 122_737 and metrics["precision"] == "fp32"
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    for row in metrics["epochs"]:
        assert set(row) >= {"epoch", "train_loss", "val_psnr", "val_ssim", "images_per_s", "seconds", "lr"}
        assert math.isfinite(row["val_psnr"]) and -1 <= row["val_ssim"] <= 1 and row["images_per_s"] > 0
    best = model_dir / "sciml_ae" / "em_denoise_model.h5"
    last = model_dir / "sciml_ae" / "em_denoise_model_last.h5"
    assert _sealed_hdf5(best) and _sealed_hdf5(last)
    denoiser = Denoiser.from_file(best)
    assert denoiser.name == "sciml_ae"
    assert denoiser.meta["normalisation"] == NORM
    assert denoiser.meta["metrics"]["epoch"] == metrics["best_epoch"]
    assert denoiser.meta["metrics"]["val_psnr"] == metrics["best_val_psnr"]
    assert denoiser.meta["train_config"]["epochs"] == 2 and denoiser.meta["emdenoise_version"]
    card = json.loads((data_dir / "dataset_card.json").read_text())
    assert denoiser.meta["pixel_size"] == training.training_pixel_size(card)  # the card's, None without one
    assert denoiser.meta["input_units"] is None  # no dose recorded: frames go in as they are
    with h5py.File(data_dir / "val.h5", "r") as fh:
        noisy, clean = fh["noisy"][:], fh["clean"][:]
    from emdenoise.evaluation.metrics import psnr_per_image

    pred = denoiser.denoise(torch.from_numpy(noisy)[:, None])
    psnr = psnr_per_image(pred, clean, denoiser.meta["data_range"]).mean().item()
    assert psnr == pytest.approx(metrics["best_val_psnr"], abs=1e-3)  # same number as validation reported


RECIPE = dict(warmup_steps=2, ema=0.9, select_by="band_psnr", augment="dihedral")


@pytest.mark.parametrize("recipe", [{}, RECIPE], ids=["plain", "recipe"])
def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, data_dir, train_cli, stop_after_epoch, recipe):
    settings = dict(epochs=3, patch_size=16, max_train_images=12, **recipe)
    code, full_dir, full_out = train_cli(tmp_path / "full", data_dir, **settings)
    assert code == 0

    stop_after_epoch(1)
    code, part_dir, part_out = train_cli(tmp_path / "part", data_dir, **settings)
    assert code == 130  # interrupted after epoch 1's checkpoint
    assert modelfile.checkpoint_info(part_dir / "sciml_ae" / "checkpoint_last.h5")["epoch"] == 1
    assert not (part_dir / "sciml_ae" / "em_denoise_model_last.h5").exists()
    stop_after_epoch(None)
    code, _, _ = train_cli(tmp_path / "part", data_dir, **settings)
    assert code == 0

    for name in ("em_denoise_model_last.h5", "em_denoise_model.h5"):
        a, b = _weights(full_dir / "sciml_ae" / name), _weights(part_dir / "sciml_ae" / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    full = json.loads((full_out / "train_metrics.json").read_text())["epochs"]
    part = json.loads((part_out / "train_metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in part] == [1, 2, 3]
    for r1, r2 in zip(full, part):
        for key in ("train_loss", "val_psnr", "val_ssim", "lr"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key

    # a finished run run again: nothing retrained, nothing rewritten
    files = sorted((part_dir / "sciml_ae").iterdir())
    stamps = [p.stat().st_mtime_ns for p in files]
    code, _, _ = train_cli(tmp_path / "part", data_dir, **settings)
    assert code == 0
    assert [p.stat().st_mtime_ns for p in sorted((part_dir / "sciml_ae").iterdir())] == stamps


def test_checkpoint_of_another_configuration_is_refused(tmp_path, data_dir, train_cli, capsys):
    code, model_dir, _ = train_cli(tmp_path, data_dir, epochs=1)
    assert code == 0
    before = _weights(model_dir / "sciml_ae" / "em_denoise_model.h5")
    code, _, _ = train_cli(tmp_path, data_dir, epochs=1, lr=1e-2)
    assert code == 2
    err = capsys.readouterr().err
    assert "checkpoint_last.h5" in err and "lr" in err and "resume: never" in err
    after = _weights(model_dir / "sciml_ae" / "em_denoise_model.h5")
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing mixed or overwritten
    code, _, _ = train_cli(tmp_path, data_dir, epochs=1, lr=1e-2, resume="never")
    assert code == 0
    info = modelfile.checkpoint_info(model_dir / "sciml_ae" / "checkpoint_last.h5")
    assert info["config"]["lr"] == 1e-2


def test_a_finished_run_is_extended_by_more_epochs(tmp_path, data_dir, train_cli, capsys):
    """epochs 1 -> 2 with everything else the same goes on from the checkpoint: with a constant learning
    rate the same weights as 2 epochs in one go; fewer epochs or another setting are still refused."""
    settings = {"lr_schedule": "constant", "patch_size": 16}
    code, full_dir, _ = train_cli(tmp_path / "full", data_dir, epochs=2, **settings)
    assert code == 0
    code, part_dir, _ = train_cli(tmp_path / "part", data_dir, epochs=1, **settings)
    assert code == 0
    code, _, out = train_cli(tmp_path / "part", data_dir, epochs=2, **settings)
    assert code == 0 and "extending the run from 1 to 2 epochs" in capsys.readouterr().err
    assert [r["epoch"] for r in json.loads((out / "train_metrics.json").read_text())["epochs"]] == [1, 2]
    a = _weights(full_dir / "sciml_ae" / "em_denoise_model_last.h5")
    b = _weights(part_dir / "sciml_ae" / "em_denoise_model_last.h5")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    code, _, _ = train_cli(tmp_path / "part", data_dir, epochs=1, **settings)  # fewer: another configuration
    assert code == 2 and "epochs: 2 -> 1" in capsys.readouterr().err
    code, _, _ = train_cli(tmp_path / "part", data_dir, epochs=3, lr=1e-2, **settings)
    assert code == 2 and "lr" in capsys.readouterr().err


def test_loss_decreases_on_learnable_data(tmp_path, data_dir, train_cli):
    code, _, out = train_cli(tmp_path, data_dir, epochs=6, batch_size=4, lr=3e-3, lr_schedule="constant")
    assert code == 0
    rows = json.loads((out / "train_metrics.json").read_text())["epochs"]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert rows[-1]["val_psnr"] > rows[0]["val_psnr"]


def test_bad_patch_size_is_input_error(tmp_path, data_dir, train_cli, capsys):
    code, _, _ = train_cli(tmp_path, data_dir, patch_size=64)
    assert code == 2
    assert "train.patch_size" in capsys.readouterr().err


def test_worker_processes_change_nothing(tmp_path, data_dir, train_cli):
    runs = {}
    for workers in (0, 1):
        code, model_dir, out = train_cli(
            tmp_path / f"w{workers}", data_dir, epochs=1, num_workers=workers, patch_size=16
        )
        assert code == 0
        runs[workers] = (
            _weights(model_dir / "sciml_ae" / "em_denoise_model.h5"),
            json.loads((out / "train_metrics.json").read_text())["epochs"][0]["train_loss"],
        )
    assert runs[1][1] == pytest.approx(runs[0][1], rel=1e-6)
    for key, value in runs[0][0].items():
        np.testing.assert_allclose(runs[1][0][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_data_fingerprint_follows_the_data_not_the_card_date(data_dir):
    card = json.loads((data_dir / CARD).read_text())
    base = training.data_fingerprint(card)
    assert training.data_fingerprint({**card, "created": "2030-01-01T00:00:00+00:00"}) == base
    other = json.loads(json.dumps(card))
    other["normalisation"]["noisy"]["mean"] += 1e-6
    assert training.data_fingerprint(other) != base


def test_vectorised_crops_are_the_per_image_slices(data_dir):
    data = training.load_data(data_dir, params.defaults().train.replace(patch_size=8), NORM, "params")
    index, corners, key = training.epoch_plan(data, 16, seed=5, epoch=2)[0]
    noisy, clean, _ = training.gather(data, index, corners, key)
    for k, (i, (y, x)) in enumerate(zip(index.tolist(), corners.tolist())):
        assert torch.equal(noisy[k], data.noisy[i, :, y : y + 8, x : x + 8])
        assert torch.equal(clean[k], data.clean[i, :, y : y + 8, x : x + 8])
    empty = training.gather(data, index[:0], corners[:0])
    assert empty[0].shape == (0, 1, 8, 8) and empty[1].shape == (0, 1, 8, 8)


@pytest.mark.parametrize("where", ["wrapping", "first step"])
def test_compile_failure_trains_eager(tmp_path, data_dir, train_cli, monkeypatch, where):
    """train.compile: true where torch.compile fails (at wrapping or when the compiled model first runs):
    one warning line, then the same result as an eager run."""

    def broken(*args, **kwargs):
        if where == "wrapping":
            raise RuntimeError("no compiler here")
        return lambda x: (_ for _ in ()).throw(RuntimeError("no compiler here"))

    code, eager_dir, _ = train_cli(tmp_path / "eager", data_dir, epochs=1)
    assert code == 0
    monkeypatch.setattr(torch, "compile", broken)
    code, model_dir, _ = train_cli(tmp_path / "compiled", data_dir, epochs=1, compile=True)
    assert code == 0
    log = (tmp_path / "compiled" / "logs" / "train.log").read_text()
    warnings = [line for line in log.splitlines() if "torch.compile failed" in line]
    assert len(warnings) == 1 and "no compiler here" in warnings[0]
    a, b = (
        _weights(eager_dir / "sciml_ae" / "em_denoise_model.h5"),
        _weights(model_dir / "sciml_ae" / "em_denoise_model.h5"),
    )
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_recipe_saves_the_averaged_weights_and_records_the_band(tmp_path, data_dir, train_cli):
    code, model_dir, out = train_cli(tmp_path, data_dir, epochs=2, patch_size=16, **RECIPE)
    assert code == 0
    record = json.loads((out / "train_metrics.json").read_text())["models"]["sciml_ae"]
    assert record["select_by"] == "band_psnr" and [row["steps"] for row in record["epochs"]] == [4, 8]
    best = max(record["epochs"], key=lambda row: row["val_band_psnr"])
    assert record["best_epoch"] == best["epoch"] and record["best_val_band_psnr"] == best["val_band_psnr"]
    assert all(math.isfinite(row["val_band_psnr"]) for row in record["epochs"])
    folder = model_dir / "sciml_ae"
    state = modelfile.load_checkpoint(folder / "checkpoint_last.h5", _sciml_ae())
    averaged, last = state["ema"]["weights"], _weights(folder / "em_denoise_model_last.h5")
    raw = _weights(folder / "checkpoint_last.h5")
    assert state["ema"]["updates"] == 8
    for key, value in averaged.items():
        np.testing.assert_allclose(last[key], value.numpy(), err_msg=key)  # the model file holds the average
    assert any(not np.allclose(raw[key], last[key]) for key in last)  # which is not the trained weights
    info = modelfile.load_model(folder / "em_denoise_model.h5")[1]
    assert {k: info["train_config"][k] for k in RECIPE} == RECIPE


def _sciml_ae() -> torch.nn.Module:
    from emdenoise import models

    return models.build("sciml_ae")
