"""Pixel-size awareness (emdenoise.inference.resample): frames at two and four times the model's sampling are
shown to the model at its own sampling and come back on the input's grid with the input's lattice period;
rescale: never refuses; unknown pixel sizes warn and say so in the provenance; the denoise task end to end."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tifffile
import torch
from support import one_error, run_here, save_model

from emdenoise.errors import EXIT_BAD_INPUT, InputError
from emdenoise.inference import resample
from emdenoise.inference.denoiser import denoise_file
from emdenoise.inference.tiling import Tiler
from emdenoise.io import micrographs

MODEL_PX = 0.2  # A/px of the (pretend) training data
PERIOD_A = 2.4  # the lattice period in Angstrom: 12 pixels at the model's sampling


def lattice(shape: tuple[int, int], pixel: float) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]] * pixel
    return (100 + 40 * np.cos(2 * np.pi * x / PERIOD_A) + 40 * np.cos(2 * np.pi * y / PERIOD_A)).astype(np.float32)


def period(frame: np.ndarray) -> float:
    """The lattice period along x in pixels: the strongest of the trial periods 4..80 px (0.25 % steps)."""
    row = frame.mean(axis=0) - frame.mean()
    x = np.arange(row.size)
    trials = 4 * 1.0025 ** np.arange(1200)
    trials = trials[trials < 80]
    power = [abs(np.sum(row * np.exp(-2j * np.pi * x / p))) for p in trials]
    return float(trials[int(np.argmax(power))])


class Recorder:
    """An identity 'model' that keeps what it was shown."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.extend(t[0].numpy().copy() for t in batch)
        return batch


@pytest.mark.parametrize("times", [2, 4])
def test_frame_at_finer_sampling_is_denoised_at_the_models_and_returned_on_its_grid(tmp_path, times):
    pixel = MODEL_PX / times
    shape = (96 * times, 80 * times)
    frame = lattice(shape, pixel)
    tifffile.imwrite(tmp_path / "f.tif", frame, resolution=(1e8 / pixel,) * 2, resolutionunit="CENTIMETER")
    model = Recorder()
    with micrographs.open_input(tmp_path / "f.tif") as src:
        (image,) = src.images
        assert image.pixel_size == pytest.approx(pixel)
        sampling = resample.plan(
            "f.tif", image.frame_shape, image.pixel_size, image.calibration, MODEL_PX, 0.0, "auto", 0.05
        )
        assert sampling.status == "resampled" and sampling.shape == (96, 80)
        denoise_file(src, tmp_path / "out/f.tif", Tiler(model, 0, 0, 1), {"model": {}}, samplings=[sampling])
    (seen,) = model.seen
    assert seen.shape == (96, 80)
    assert period(seen) == pytest.approx(PERIOD_A / MODEL_PX, rel=0.01)  # the model sees its own sampling
    with tifffile.TiffFile(tmp_path / "out/f.tif") as tif:
        out = tif.asarray()
        assert tif.pages[0].resolution == pytest.approx((1e8 / pixel,) * 2)  # calibration kept
    assert out.shape == shape
    assert period(out) == pytest.approx(period(frame), rel=0.01) == pytest.approx(PERIOD_A / pixel, rel=0.01)
    inner = (slice(8 * times, -8 * times),) * 2
    assert np.corrcoef(out[inner].ravel(), frame[inner].ravel())[0, 1] > 0.99


def test_matched_never_and_unknown(caplog):
    plan = lambda px, model, given=0.0, rescale="auto": resample.plan(  # noqa: E731
        "x.tif", (64, 64), px, "test", model, given, rescale, 0.05, logging.getLogger("t")
    )
    assert plan(0.205, MODEL_PX).status == "matched"  # within 5 %: as it is
    assert plan(0.05, MODEL_PX, given=0.2).status == "matched"  # denoise.pixel_size overrides the file
    with pytest.raises(InputError) as err:
        plan(0.1, MODEL_PX, rescale="never")
    assert "x.tif: denoise.rescale" in err.value.message and "0.1 A/px" in err.value.message
    with pytest.raises(InputError, match="at least 16x16"):
        plan(0.01, MODEL_PX)  # 64 px at 0.01 A/px are 3 px at the model's sampling
    for px, model in [(None, MODEL_PX), (0.1, None)]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = plan(px, model)
        assert got.status == "unknown" and got.shape == (64, 64) and "pixel size unknown" in got.record()["statement"]
        assert "x.tif" in caplog.text and "pixel size unknown" in caplog.text


def test_denoise_task_resamples_refuses_and_warns(tmp_path, capsys):
    inputs, models_dir = tmp_path / "in", tmp_path / "models"
    inputs.mkdir()
    save_model(models_dir, extra_meta={"pixel_size": MODEL_PX})
    pixel = MODEL_PX / 2
    frame = lattice((96, 80), pixel) / 200
    tifffile.imwrite(inputs / "fine.tif", frame, resolution=(1e8 / pixel,) * 2, resolutionunit="CENTIMETER")
    paths = {"input_dir": inputs, "model_dir": models_dir, "output_dir": tmp_path / "out"}
    code, err = run_here(capsys, "denoise", paths, "denoise.device=cpu", "denoise.precision=fp32")
    assert code == 0, err
    record = json.loads((tmp_path / "out/fine.tif.json").read_text())
    assert record["sampling"][0]["status"] == "resampled" and record["model"]["pixel_size"] == MODEL_PX
    assert record["sampling"][0]["model_frame_shape"] == [48, 40]
    with tifffile.TiffFile(tmp_path / "out/fine.tif") as tif:
        assert tif.asarray().shape == (96, 80) and tif.pages[0].resolution == pytest.approx((1e8 / pixel,) * 2)

    code, err = run_here(capsys, "denoise", paths, "denoise.device=cpu", "denoise.rescale=never")
    one_error(code, err, EXIT_BAD_INPUT, "fine.tif", "denoise.rescale")

    tifffile.imwrite(inputs / "fine.tif", frame)  # no calibration now
    code, err = run_here(capsys, "denoise", paths, "denoise.device=cpu", "denoise.precision=fp32")
    assert code == 0 and "fine.tif" in err and "pixel size unknown" in err
    record = json.loads((tmp_path / "out/fine.tif.json").read_text())
    assert record["sampling"][0]["status"] == "unknown"


def test_a_rescale_beyond_the_factor_bound_or_the_budget_is_refused_naming_both_sizes(monkeypatch):
    plan = lambda shape, px: resample.plan("x.tif", shape, px, "test", MODEL_PX, 0.0, "auto", 0.05)  # noqa: E731
    assert plan((64, 64), MODEL_PX * resample.MAX_FACTOR).shape == (512, 512)  # at the bound: resampled
    with pytest.raises(InputError) as err:
        plan((4096, 4096), 20.0)  # a calibration in nm read as A: 100x
    message = err.value.message
    assert message.startswith("x.tif: denoise.pixel_size: expected a rescale by at most 8x either way, got 100x")
    assert "20 A/px (test) to the model's 0.2 A/px turns 4096x4096 into 409600x409600" in message
    monkeypatch.setenv("EMDENOISE_MEMORY_LIMIT_GB", "0.5")
    with pytest.raises(InputError) as err:
        plan((2048, 2048), MODEL_PX * 4)  # 8192x8192 at the model's sampling: 1.07 GB to resample
    message = err.value.message
    assert "expected a resampled frame within the memory budget of 500.0 MB" in message
    assert "got 1.1 GB: 0.8 A/px (test) to the model's 0.2 A/px turns 2048x2048 into 8192x8192" in message
    assert "denoise.memory_limit_gb" in message
    monkeypatch.setenv("EMDENOISE_MEMORY_LIMIT_GB", "2")
    assert plan((2048, 2048), MODEL_PX * 4).shape == (8192, 8192)  # the budget raised: planned


def test_denoise_pixel_size_typo_is_refused_before_any_work(tmp_path, capsys):
    inputs, models_dir = tmp_path / "in", tmp_path / "models"
    inputs.mkdir()
    save_model(models_dir, extra_meta={"pixel_size": MODEL_PX})
    tifffile.imwrite(inputs / "a.tif", lattice((64, 64), MODEL_PX) / 200)
    paths = {"input_dir": inputs, "model_dir": models_dir, "output_dir": tmp_path / "out"}
    code, err = run_here(capsys, "denoise", paths, "denoise.device=cpu", "denoise.pixel_size=20")  # meant 0.20
    line = one_error(code, err, EXIT_BAD_INPUT, "a.tif", "denoise.pixel_size", "20 A/px", "64x64 into 6400x6400")
    assert "at most 8x" in line
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_a_model_trained_over_a_range_takes_frames_inside_it_as_they_are():
    """A model trained on 0.07-0.35 A/px denoises a 0.25 A/px frame at its own sampling; a frame outside the
    range is resampled to the nearer end of it (not to the training data's median)."""
    plan = lambda px: resample.plan(  # noqa: E731
        "x.tif", (100, 100), px, "test", 0.156, 0.0, "auto", 0.05, None, model_range=(0.07, 0.35)
    )
    inside = plan(0.25)
    assert inside.status == "matched" and inside.shape == (100, 100) and inside.factor == 1.0
    assert "trained range 0.07-0.35" in inside.statement
    assert plan(0.36).status == "matched"  # within the 5 % tolerance of the range's end
    finer, coarser = plan(0.035), plan(0.7)
    assert finer.status == coarser.status == "resampled"
    assert finer.model_pixel_size == 0.07 and finer.shape == (50, 50)
    assert coarser.model_pixel_size == 0.35 and coarser.shape == (200, 200)
    without = resample.plan("x.tif", (100, 100), 0.25, "test", 0.156, 0.0, "auto", 0.05)
    assert without.status == "resampled"  # older model files record no range: the median, as before
