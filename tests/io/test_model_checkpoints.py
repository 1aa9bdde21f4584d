"""HDF5 model files and checkpoints (emdenoise.io.modelfile) as the training engine writes them: round trips,
sealing, pickles refused, malformed files as one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from emdenoise import models
from emdenoise.errors import InputError
from emdenoise.inference.denoiser import Denoiser
from emdenoise.io import h5safe, modelfile
from emdenoise.runtime import device as runtime
from emdenoise.training import loop as training

H, W = 32, 40
NORM = {"noisy": {"mean": 0.4, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.25}}


def _sealed_hdf5(path: Path) -> bool:
    """HDF5 (its signature after the 512-byte user block) sealed by emdenoise (the sha256 header before it)."""
    data = path.read_bytes()
    start = h5safe.USER_BLOCK
    return data.startswith(b"emdenoise-sha256:") and data[start : start + 8] == h5safe.HDF5_SIGNATURE


def _meta() -> dict:
    return {
        "model": "sciml_ae",
        "options": {},
        "normalisation": NORM,
        "data_range": 0.8,
        "metrics": {"val_psnr": 21.5},
        "train_config": {"epochs": 2},
    }


@pytest.fixture
def saved_model(tmp_path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1)
    model = models.build("sciml_ae")
    with torch.no_grad():  # non-trivial batch-norm statistics, so they must round-trip too
        model.train()(torch.randn(4, 1, H, W))
    path = tmp_path / "em_denoise_model.h5"
    modelfile.save_model(path, model, _meta())
    return model.eval(), path


def test_model_file_round_trip(saved_model):
    model, path = saved_model
    assert _sealed_hdf5(path)
    with h5py.File(path, "r") as fh:  # plain h5py can read it: weights as datasets, metadata as attributes
        assert fh.attrs["format"] == modelfile.MODEL_FORMAT
        assert fh.attrs["model"] == "sciml_ae"
        assert json.loads(fh.attrs["normalisation"]) == NORM
        assert set(fh["state"]) == set(model.state_dict())
        counters = [k for k in fh["state"] if k.endswith("num_batches_tracked")]
        assert counters and all(fh["state"][k].dtype == np.int64 for k in counters)
    loaded, meta = modelfile.load_model(path)
    assert meta["metrics"] == {"val_psnr": 21.5} and meta["data_range"] == 0.8
    assert meta["parameters"] == models.count_parameters(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.rand(3, 1, 30, 44)
    a = Denoiser(model, _meta()).denoise(x)
    b = Denoiser.from_file(path).denoise(x)
    assert a.shape == x.shape and torch.equal(a, b)
    with torch.no_grad():  # the denoiser normalises the input and de-normalises the output
        expected = model((x - 0.4) / 0.3) * 0.25 + 0.5
    torch.testing.assert_close(a, expected)


class _Boom:
    """Unpickling this creates ``marker``: proof that a loader executed a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("as_opaque", [True, False])
def test_pickle_payload_in_a_dataset_is_refused(saved_model, tmp_path, as_opaque):
    _, path = saved_model
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Boom(marker))
    with h5py.File(path, "r+") as fh:
        del fh["state"]["head.weight"]
        fh["state"]["head.weight"] = np.void(payload) if as_opaque else np.array([payload], dtype=f"S{len(payload)}")
    h5safe.seal(path)  # sealed again, so the loader's own checks are what refuses it
    with pytest.raises(InputError, match="head.weight"):
        modelfile.load_model(path)
    assert not marker.exists()


def test_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "em_denoise_model.h5"  # what the original benchmark wrote: a pickle named .h5
    path.write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(InputError, match="not HDF5"):
        modelfile.load_model(path)
    assert not marker.exists()


def _edit(path: Path, fn) -> Path:
    """Change a sealed file with h5py and seal it again: the loader's checks after the seal's are tested."""
    with h5py.File(path, "r+") as fh:
        fn(fh)
    h5safe.seal(path)
    return path


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda fh: fh["state"].__delitem__("head.bias"), "state/head.bias"),
        (lambda fh: fh["state"].create_dataset("extra.weight", data=np.zeros(3, np.float32)), "state/extra.weight"),
        (
            lambda fh: (
                fh["state"].__delitem__("head.weight"),
                fh["state"].create_dataset("head.weight", data=np.zeros((1, 8, 5, 5), np.float32)),
            ),
            "state/head.weight",
        ),
        (lambda fh: fh.attrs.__setitem__("model", "resnet9000"), "model"),
        (lambda fh: fh.attrs.__setitem__("format", "emdenoise-model/2"), "format"),
        (lambda fh: fh.attrs.__setitem__("options", json.dumps({"width": 3})), "options"),
        (
            lambda fh: fh.attrs.__setitem__("normalisation", json.dumps({"noisy": {"mean": 0, "std": 0}})),
            "normalisation",
        ),
        (lambda fh: fh.attrs.__setitem__("pixel_size", -0.2), "pixel_size"),
        (lambda fh: fh.attrs.__setitem__("pixel_size", "0.2 A"), "pixel_size"),
        (lambda fh: fh.attrs.__setitem__("pixel_size_range", [0.3, 0.1]), "pixel_size_range"),
        (lambda fh: fh.attrs.__setitem__("pixel_size_range", [0.1, 0.2, 0.3]), "pixel_size_range"),
    ],
)
def test_malformed_model_file_is_one_line_input_error(saved_model, edit, field):
    _, path = saved_model
    _edit(path, edit)
    with pytest.raises(InputError) as info:
        modelfile.load_model(path)
    assert str(path) in info.value.message and field in info.value.message
    assert "\n" not in info.value.message


def test_pixel_size_of_the_training_data_round_trips(saved_model, tmp_path):
    model, path = saved_model
    assert modelfile.load_model(path)[1]["pixel_size"] is None  # unknown: absent in the file, None when read
    modelfile.save_model(tmp_path / "px.h5", model, {**_meta(), "pixel_size": 0.19})
    assert modelfile.load_model(tmp_path / "px.h5")[1]["pixel_size"] == pytest.approx(0.19)
    # the training engine takes it from the dataset card (helper contract 4), None when the card has none
    assert training.training_pixel_size({"pixel_size_angstrom": 0.19}) == 0.19
    for card in ({}, {"pixel_size_angstrom": None}, {"pixel_size_angstrom": 0}, {"pixel_size_angstrom": "x"}):
        assert training.training_pixel_size(card) is None
    # and the range of the training data's pixel sizes, [min, max]
    assert modelfile.load_model(path)[1]["pixel_size_range"] is None
    modelfile.save_model(tmp_path / "rg.h5", model, {**_meta(), "pixel_size_range": [0.07, 0.35]})
    assert modelfile.load_model(tmp_path / "rg.h5")[1]["pixel_size_range"] == pytest.approx([0.07, 0.35])
    assert training.training_pixel_range({"pixel_size_range_angstrom": [0.07, 0.35]}) == [0.07, 0.35]
    for card in ({}, {"pixel_size_range_angstrom": [0.3, 0.1]}, {"pixel_size_range_angstrom": 0.2}):
        assert training.training_pixel_range(card) is None


def test_other_architecture_is_refused(saved_model):
    _, path = saved_model
    others = [n for n in models.names() if n != "sciml_ae"]
    if not others:
        pytest.skip("no second model registered yet")
    _edit(path, lambda fh: fh.attrs.__setitem__("model", others[0]))
    with pytest.raises(InputError, match="state/"):
        modelfile.load_model(path)


def test_missing_and_truncated_files(saved_model, tmp_path):
    _, path = saved_model
    with pytest.raises(InputError, match="not found"):
        modelfile.load_model(tmp_path / "nothing.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match=str(truncated)):
        modelfile.load_model(truncated)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.build("sciml_ae")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, training.lr_factor("cosine", 10))
    for _ in range(2):
        model(torch.randn(2, 1, 16, 16)).pow(2).mean().backward()
        opt.step()
        sched.step()
    rng = runtime.rng_state()
    path = tmp_path / "ckpt.h5"
    modelfile.save_checkpoint(
        path,
        model,
        opt,
        sched,
        {
            "model": "sciml_ae",
            "options": {},
            "fingerprint": "f" * 64,
            "epoch": 2,
            "rng": rng,
            "history": [{"loss": 0.5}],
        },
    )
    assert _sealed_hdf5(path)
    assert modelfile.checkpoint_info(path)["epoch"] == 2
    expected_next = torch.rand(5)

    torch.manual_seed(123)  # scramble, then restore
    model2 = models.build("sciml_ae")
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, training.lr_factor("cosine", 10))
    state = modelfile.load_checkpoint(path, model2, opt2, sched2)
    assert state["history"] == [{"loss": 0.5}] and state["epoch"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][k][name], b["state"][k][name])
    assert sched2.state_dict() == sched.state_dict()
    runtime.set_rng_state(state["rng"])
    assert torch.equal(torch.rand(5), expected_next)
