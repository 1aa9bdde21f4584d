"""The train task, HDF5 model files and checkpoints, and the runtime helpers.

A tiny processed data_dir (16 train, 4 val, 4 test pairs of 32x40 images, non-square so a swapped axis shows)
is written with h5py directly in the layout of emdenoise.layout.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from support import write_data_dir

from emdenoise import cli, models
from emdenoise.io import h5safe, modelfile
from emdenoise.engine import runtime
from emdenoise.errors import InputError
from emdenoise.layout import CARD
from emdenoise.engine import training
from emdenoise.engine.inference import Denoiser

H, W = 32, 40
NORM = {"noisy": {"mean": 0.4, "std": 0.3}, "clean": {"mean": 0.5, "std": 0.25}}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("EMDENOISE_PROGRESS", "0")
    torch.set_num_threads(1)


def _pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable pairs: smooth stripes (clean) under a beam-like gain plus Gaussian noise (noisy)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    clean = np.empty((n, H, W), np.float32)
    noisy = np.empty((n, H, W), np.float32)
    for i in range(n):
        fy, fx, phase = rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
        clean[i] = 0.5 + 0.4 * np.sin(fy * y + fx * x + phase)
        gain = 0.7 + 0.3 * np.exp(-((y - H / 2) ** 2 + (x - W / 3) ** 2) / 400.0)
        noisy[i] = clean[i] * gain + rng.normal(0, 0.15, (H, W))
    return noisy, clean


def make_data_dir(root: Path, n_train: int = 16, n_val: int = 4, n_test: int = 4) -> Path:
    rng = np.random.default_rng(0)
    return write_data_dir(root, {split: _pairs(rng, n) for split, n in
                                 (("train", n_train), ("val", n_val), ("test", n_test))}, NORM)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


def train_cli(tmp: Path, data_dir: Path, model_dir: Path | None = None, **train) -> tuple[int, Path, Path]:
    """Run ``emdenoise train`` with a train: section (defaults for a quick CPU run); return (code, models, out)."""
    section = {"model": "sciml_ae", "epochs": 2, "batch_size": 4, "lr": 3e-3, "device": "cpu",
               "precision": "fp32", "lr_schedule": "cosine", **train}
    tmp.mkdir(parents=True, exist_ok=True)
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"train": section}))
    model_dir = model_dir or tmp / "models"
    out = tmp / "output"
    code = cli.main(["train", f"--data_dir={data_dir}", f"--parameters_file={params}", f"--model_dir={model_dir}",
                     f"--output_dir={out}", f"--log_dir={tmp / 'logs'}"])
    return code, model_dir, out


def _sealed_hdf5(path: Path) -> bool:
    """HDF5 (its signature after the 512-byte user block) sealed by emdenoise (the sha256 header before it)."""
    data = path.read_bytes()
    start = h5safe.USER_BLOCK
    return data.startswith(b"emdenoise-sha256:") and data[start:start + 8] == h5safe.HDF5_SIGNATURE


def _weights(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return {k: fh["state"][k][()] for k in fh["state"]}


# ---------------------------------------------------------------------------------------------- model files

def _meta() -> dict:
    return {"model": "sciml_ae", "options": {}, "normalisation": NORM, "data_range": 0.8,
            "metrics": {"val_psnr": 21.5}, "train_config": {"epochs": 2}}


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
        fh["state"]["head.weight"] = np.void(payload) if as_opaque else \
            np.array([payload], dtype=f"S{len(payload)}")
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


@pytest.mark.parametrize("edit, field", [
    (lambda fh: fh["state"].__delitem__("head.bias"), "state/head.bias"),
    (lambda fh: fh["state"].create_dataset("extra.weight", data=np.zeros(3, np.float32)), "state/extra.weight"),
    (lambda fh: (fh["state"].__delitem__("head.weight"),
                 fh["state"].create_dataset("head.weight", data=np.zeros((1, 8, 5, 5), np.float32))),
     "state/head.weight"),
    (lambda fh: fh.attrs.__setitem__("model", "resnet9000"), "model"),
    (lambda fh: fh.attrs.__setitem__("format", "emdenoise-model/2"), "format"),
    (lambda fh: fh.attrs.__setitem__("options", json.dumps({"width": 3})), "options"),
    (lambda fh: fh.attrs.__setitem__("normalisation", json.dumps({"noisy": {"mean": 0, "std": 0}})),
     "normalisation"),
])
def test_malformed_model_file_is_one_line_input_error(saved_model, edit, field):
    _, path = saved_model
    _edit(path, edit)
    with pytest.raises(InputError) as info:
        modelfile.load_model(path)
    assert str(path) in info.value.message and field in info.value.message
    assert "\n" not in info.value.message


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
    modelfile.save_checkpoint(path, model, opt, sched, {"model": "sciml_ae", "options": {}, "fingerprint": "f" * 64,
                                                      "epoch": 2, "rng": rng, "history": [{"loss": 0.5}]})
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


# ---------------------------------------------------------------------------------------------- runtime

def test_runtime_choices():
    cpu = torch.device("cpu")
    assert runtime.resolve_device("cpu") == cpu
    assert runtime.resolve_precision("fp32", cpu) == "fp32"
    assert runtime.resolve_precision("auto", cpu) == ("bf16" if runtime.cpu_has_native_bf16() else "fp32")
    with pytest.raises(InputError, match="^my.yaml: test.precision: expected fp32, bf16 or auto on the CPU"):
        runtime.resolve_precision("fp16", cpu, "test.precision", "my.yaml")
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto") == cpu
        with pytest.raises(InputError, match="^my.yaml: train.device: expected auto or cpu"):
            runtime.resolve_device("cuda:0", "train.device", "my.yaml")


def test_lr_schedules():
    cosine = training.lr_factor("cosine", 100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    step = training.lr_factor("step", 100)
    assert [step(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


# ---------------------------------------------------------------------------------------------- the task

def test_data_keep_their_axes(data_dir):
    params = {"max_train_images": 5, "patch_size": 0}
    data = training.load_data(data_dir, params, NORM, "params")
    with h5py.File(data_dir / "train.h5", "r") as fh:
        raw = fh["noisy"][:5]
    assert data.noisy.shape == (5, 1, H, W)
    torch.testing.assert_close(data.noisy[:, 0], torch.from_numpy((raw - 0.4) / 0.3))
    data.patch = 16
    plan = training.epoch_plan(data, 2, seed=0, epoch=1)
    assert sorted(torch.cat([idx for idx, _ in plan]).tolist()) == list(range(5))
    noisy, clean = training.gather(data, *plan[0])
    (_, j), (y, x) = plan[0][0][:2].tolist(), plan[0][1][1].tolist()
    assert noisy.shape == (2, 1, 16, 16)
    torch.testing.assert_close(noisy[1], data.noisy[j, :, y:y + 16, x:x + 16])


def test_train_writes_model_and_metrics(tmp_path, data_dir):
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
    with h5py.File(data_dir / "val.h5", "r") as fh:
        noisy, clean = fh["noisy"][:], fh["clean"][:]
    from emdenoise.engine.metrics import psnr_per_image
    pred = denoiser.denoise(torch.from_numpy(noisy)[:, None])
    psnr = psnr_per_image(pred, clean, denoiser.meta["data_range"]).mean().item()
    assert psnr == pytest.approx(metrics["best_val_psnr"], abs=1e-3)  # same number as validation reported


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, data_dir, monkeypatch):
    settings = dict(epochs=3, patch_size=16, max_train_images=12)
    code, full_dir, full_out = train_cli(tmp_path / "full", data_dir, **settings)
    assert code == 0

    monkeypatch.setattr(training, "_STOP_AFTER_EPOCH", 1)
    code, part_dir, part_out = train_cli(tmp_path / "part", data_dir, **settings)
    assert code == 130  # interrupted after epoch 1's checkpoint
    assert modelfile.checkpoint_info(part_dir / "sciml_ae" / "checkpoint_last.h5")["epoch"] == 1
    assert not (part_dir / "sciml_ae" / "em_denoise_model_last.h5").exists()
    monkeypatch.setattr(training, "_STOP_AFTER_EPOCH", None)
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


def test_checkpoint_of_another_configuration_is_refused(tmp_path, data_dir, capsys):
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


def test_loss_decreases_on_learnable_data(tmp_path, data_dir):
    code, _, out = train_cli(tmp_path, data_dir, epochs=6, batch_size=4, lr=3e-3, lr_schedule="constant")
    assert code == 0
    rows = json.loads((out / "train_metrics.json").read_text())["epochs"]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert rows[-1]["val_psnr"] > rows[0]["val_psnr"]


def test_bad_patch_size_is_input_error(tmp_path, data_dir, capsys):
    code, _, _ = train_cli(tmp_path, data_dir, patch_size=64)
    assert code == 2
    assert "train.patch_size" in capsys.readouterr().err


def test_worker_processes_change_nothing(tmp_path, data_dir):
    runs = {}
    for workers in (0, 1):
        code, model_dir, out = train_cli(tmp_path / f"w{workers}", data_dir, epochs=1, num_workers=workers,
                                         patch_size=16)
        assert code == 0
        runs[workers] = (_weights(model_dir / "sciml_ae" / "em_denoise_model.h5"),
                         json.loads((out / "train_metrics.json").read_text())["epochs"][0]["train_loss"])
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
