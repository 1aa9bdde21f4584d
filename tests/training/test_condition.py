"""train.condition end to end: the parameter and its checks, a conditioned run's model file (the choice recorded,
the same output from the file as in training's validation), the checkpoint fingerprint (a run without it
keeps the old configuration keys, so old checkpoints resume), and model files without the choice (none)."""

from __future__ import annotations

import json

import h5py
import pytest
import torch
from support import save_model

from emdenoise.config import params
from emdenoise.errors import InputError
from emdenoise.evaluation.metrics import psnr_per_image
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import h5safe, modelfile
from emdenoise.models.conditioning import Conditioned


def test_condition_parameter_and_its_checks():
    train = params.defaults().train
    assert train.condition == "none"
    assert train.replace(condition="flatfield+noise_level").condition == "flatfield+noise_level"
    with pytest.raises(InputError, match=r"train\.condition.*one of"):
        train.replace(condition="gamma")
    with pytest.raises(InputError, match=r"train\.condition.*supervision noise2void"):
        train.replace(supervision="noise2void", condition="flatfield")
    assert train.replace(supervision="noise2void", condition="anscombe").condition == "anscombe"
    with pytest.raises(InputError, match=r"train\.condition.*second input channel \(unet\).*got dncnn, ffdnet"):
        train.replace(model=["dncnn", "unet", "ffdnet"], condition="wiener_prior")
    with pytest.raises(InputError, match=r"train\.condition.*supervision poisson_split"):
        train.replace(model=["unet"], supervision="poisson_split", condition="wiener_prior")
    assert train.replace(model=["unet"], condition="wiener_prior").condition == "wiener_prior"


def test_a_wiener_prior_run_writes_a_two_channel_unet_the_file_loads(tmp_path, data_dir, train_cli):
    code, model_dir, _ = train_cli(tmp_path, data_dir, epochs=1, model="unet", unet_base=4, condition="wiener_prior")
    assert code == 0
    den = Denoiser.from_file(model_dir / "unet" / "em_denoise_model.h5")
    assert den.meta["condition"] == "wiener_prior" and isinstance(den.model, Conditioned)
    assert den.model.net.down[0][0][0].in_channels == 2


def test_a_conditioned_run_writes_it_and_denoises_from_the_file_as_in_training(tmp_path, data_dir, train_cli):
    code, model_dir, out = train_cli(tmp_path, data_dir, epochs=1, condition="noise_level")
    assert code == 0
    best = model_dir / "sciml_ae" / "em_denoise_model.h5"
    with h5safe.open_sealed(best) as fh:
        assert fh.attrs["condition"] == "noise_level" and "mix.0.weight" in fh["state"]
    den = Denoiser.from_file(best)
    assert den.meta["condition"] == "noise_level" and isinstance(den.model, Conditioned)
    assert den.model.condition == "noise_level"
    metrics = json.loads((out / "train_metrics.json").read_text())
    with h5py.File(data_dir / "val.h5", "r") as fh:
        noisy, clean = fh["noisy"][:], fh["clean"][:]
    psnr = psnr_per_image(den.denoise(torch.from_numpy(noisy)[:, None]), clean, den.meta["data_range"]).mean()
    assert psnr.item() == pytest.approx(metrics["best_val_psnr"], abs=1e-3)  # the file computes what training did
    info = modelfile.checkpoint_info(model_dir / "sciml_ae" / "checkpoint_last.h5")
    assert info["config"]["condition"] == "noise_level"


def test_an_unconditioned_run_keeps_the_old_fingerprint_keys(tmp_path, data_dir, train_cli):
    code, model_dir, _ = train_cli(tmp_path, data_dir, epochs=1)
    assert code == 0
    assert "condition" not in modelfile.checkpoint_info(model_dir / "sciml_ae" / "checkpoint_last.h5")["config"]
    with h5safe.open_sealed(model_dir / "sciml_ae" / "em_denoise_model.h5") as fh:
        assert "condition" not in fh.attrs  # as files written before the option
    code, _, _ = train_cli(tmp_path, data_dir, epochs=1, condition="anscombe")
    assert code == 2  # another configuration: its checkpoint is refused, not mixed


def test_model_files_without_the_choice_load_as_none_and_bad_ones_are_refused(tmp_path):
    model, meta = modelfile.load_model(save_model(tmp_path / "old", "dncnn", depth=3))
    assert meta["condition"] == "none" and not isinstance(model, Conditioned)
    unknown = save_model(tmp_path / "unknown", "dncnn", extra_meta={"condition": "gamma"}, depth=3)
    with pytest.raises(InputError, match="condition: expected one of none, flatfield"):
        modelfile.load_model(unknown)
    # the bare model's tensors in a file that says anscombe: not the wrapper's, refused in one line
    mismatched = save_model(tmp_path / "mismatched", "dncnn", extra_meta={"condition": "anscombe"}, depth=3)
    with pytest.raises(InputError, match="state/"):
        modelfile.load_model(mismatched)
